"""Evaluate a trained (or randomly initialised) encoder: kNN on frozen features."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from ssl_zoo.backbones import BackboneSpec, build_backbone, default_cifar_stem, load_backbone
from ssl_zoo.config import parse_config
from ssl_zoo.data import DATASETS, Transformed, load_splits
from ssl_zoo.errors import UserError, run_main, unknown_choice
from ssl_zoo.evaluation.knn import knn_accuracy
from ssl_zoo.views import eval_transform

PROTOCOLS = ("knn",)


@dataclass
class EvalConfig:
    """Evaluate an encoder on a labeled dataset.

    Args:
        checkpoint: backbone.pt of a run, or 'random' for the same backbone at initialisation.
        protocol: knn.
        dataset: synthetic, cifar10, cifar100, stl10 or imagefolder.
        data_dir: Dataset root.
        backbone: Backbone name, for --checkpoint random.
        image_size: Input size; default: the checkpoint's, else the dataset's.
        train_samples: Use at most this many training images.
        test_samples: Use at most this many test images.
        knn_k: Neighbours.
        knn_t: Temperature of the weighted vote.
        batch_size: Images per forward pass.
        num_workers: DataLoader worker processes.
        seed: Seed for random initialisation and subsets.
        output_dir: Where results.json goes; default: beside the checkpoint (or runs/eval-random).
    """

    checkpoint: str
    protocol: str = "knn"
    dataset: str = "synthetic"
    data_dir: str | None = None
    backbone: str = "resnet18"
    image_size: int | None = None
    train_samples: int | None = None
    test_samples: int | None = None
    knn_k: int = 200
    knn_t: float = 0.1
    batch_size: int = 256
    num_workers: int = 2
    seed: int = 0
    output_dir: str | None = None

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise unknown_choice("protocol", self.protocol, PROTOCOLS)
        if self.dataset not in DATASETS:
            raise unknown_choice("dataset", self.dataset, DATASETS)


@torch.no_grad()
def extract_features(model: nn.Module, dataset, batch_size: int, num_workers: int):
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    features, labels = [], []
    for images, targets in loader:
        features.append(model(images).float())
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def evaluate(cfg: EvalConfig) -> dict:
    start = time.time()
    L.seed_everything(cfg.seed, verbose=False)
    meta: dict = {}
    if cfg.checkpoint == "random":
        size = cfg.image_size or DATASETS[cfg.dataset].image_size or 32
        spec = BackboneSpec(cfg.backbone, default_cifar_stem(cfg.backbone, size))
        model, _ = build_backbone(spec)
    else:
        model, _, meta = load_backbone(cfg.checkpoint)
    image_size = cfg.image_size or meta.get("image_size")
    splits = load_splits(
        cfg.dataset, cfg.data_dir, image_size, cfg.train_samples, cfg.test_samples, cfg.seed
    )
    if splits.bank is None:
        raise UserError(f"{cfg.dataset} at {cfg.data_dir} has no labeled train and test splits")
    transform = eval_transform(splits.image_size, DATASETS[cfg.dataset].normalize)
    bank, bank_y = extract_features(
        model, Transformed(splits.bank, transform), cfg.batch_size, cfg.num_workers
    )
    test, test_y = extract_features(
        model, Transformed(splits.test, transform), cfg.batch_size, cfg.num_workers
    )
    top1, top5 = knn_accuracy(test, test_y, bank, bank_y, splits.num_classes, cfg.knn_k, cfg.knn_t)
    result = {
        "protocol": cfg.protocol,
        "dataset": cfg.dataset,
        "checkpoint": cfg.checkpoint,
        "top1": top1,
        "top5": top5,
        "seconds": round(time.time() - start, 1),
    }
    out_dir = Path(cfg.output_dir or (Path(cfg.checkpoint).parent if meta else "runs/eval-random"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(EvalConfig, argv, prog="evaluate.py")
    result = evaluate(cfg)
    print(json.dumps(result), flush=True)
    return result


def cli() -> None:
    run_main(main)
