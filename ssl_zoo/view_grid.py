"""A picture of what a method trains on: a few training images, each beside the views its
configured augmentation makes of it, at the training size. The first thing to check when an
augmentation is changed (a crop floor, jitter strength, multi-crop sizes).

    python -m ssl_zoo.view_grid --config configs/methods/simclr.yaml --dataset imagefolder \
                                --data_dir ../shared/data/cifar10-12k --out views.png
    python -m ssl_zoo.view_grid --method dino --images 6

It takes train.py's options (the same --config files) and builds the views exactly as a run
would, batched or PIL (`--augment`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as L
import torch
from torchvision.transforms.functional import to_pil_image

from ssl_zoo.components import build_components
from ssl_zoo.config import TrainConfig, make_output_dir, parse_config
from ssl_zoo.data import uint8_images
from ssl_zoo.errors import UserError, run_main


@dataclass
class ViewGridConfig(TrainConfig):
    """train.py's options, and:

    Args:
        images: How many training images to show (rows).
        out: Where to write the picture (PNG).
    """

    images: int = 8
    out: str = "views.png"

    def checks(self) -> list[tuple[bool, str]]:
        return [
            *super().checks(),
            (1 <= self.images <= 64, f"images must be in [1, 64] (got {self.images})"),
        ]


def make_views(cfg: ViewGridConfig) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
    """(the chosen images as uint8, each view as a float batch in [0, 1], the run's components)."""
    L.seed_everything(cfg.seed, verbose=False)
    parts = build_components(cfg)
    train = parts.splits.train
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    images = uint8_images(train, parts.splits.image_size)[chosen[: cfg.images]]
    if getattr(parts.views, "batched", False):
        views = parts.views(images)
    else:  # lightly's PIL transforms, one image at a time
        per_image = [parts.views(to_pil_image(image)) for image in images]
        views = [torch.stack(view) for view in zip(*per_image, strict=True)]
    mean = torch.tensor(parts.normalize["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(parts.normalize["std"]).view(1, -1, 1, 1)
    return images, [(v.float().cpu() * std + mean).clamp(0, 1) for v in views], parts


def plot_grid(images: torch.Tensor, views: list[torch.Tensor], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + len(views)
    fig, axes = plt.subplots(len(images), columns, figsize=(1.3 * columns, 1.3 * len(images)),
                             dpi=100, squeeze=False)  # fmt: skip
    for row, image in enumerate(images):
        cells = [image.permute(1, 2, 0).numpy()] + [v[row].permute(1, 2, 0).numpy() for v in views]
        for col, cell in enumerate(cells):
            ax = axes[row][col]
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                size = "x".join(str(s) for s in cell.shape[:2])
                ax.set_title("image" if col == 0 else f"view {col} ({size})", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def check_out(path: Path) -> None:
    """Before any work: a picture that could not be written would waste the views made for it."""
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; name a .png file")
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path}: the picture is a PNG; name a .png file")
    make_output_dir(path.parent, flag=f"the folder of --out {path}:")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"--out {path}: {path.parent} is not writable")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(ViewGridConfig, argv, prog="python -m ssl_zoo.view_grid")
    check_out(Path(cfg.out))
    images, views, parts = make_views(cfg)
    title = f"{cfg.method} views of {cfg.dataset} ({parts.model.views} pipeline, {cfg.augment})"
    path = plot_grid(images, views, Path(cfg.out), title)
    summary = {"method": cfg.method, "dataset": cfg.dataset, "images": len(images),
               "views": [list(v.shape[1:]) for v in views], "out": str(path)}  # fmt: skip
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    run_main(main)
