"""One way to build what a run needs from its config: data splits, backbone spec, the method's
LightningModule and its views. Used by train.py and federate.py alike, so that centralized,
embedded-federated and Flower runs train the very same module."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from ssl_zoo.backbones import BackboneSpec, default_cifar_stem
from ssl_zoo.batch_views import BatchViews
from ssl_zoo.config import RunConfig, check_accelerator, make_output_dir
from ssl_zoo.data import DATASETS, Splits, load_splits
from ssl_zoo.errors import UserError, unknown_choice
from ssl_zoo.methods import METHODS, SSLMethod, build_method
from ssl_zoo.monitor import OnlineMonitor
from ssl_zoo.views import RepeatedViews, bad_views_options, build_views


@dataclass
class Components:
    splits: Splits
    spec: BackboneSpec
    model: SSLMethod
    views: object  # BatchViews (uint8 batch -> view batches) or a PIL image -> view tensors
    normalize: dict
    monitor: OnlineMonitor  # scores the model's features on the splits' bank and test images

    @property
    def meta(self) -> dict:
        """What evaluate.py needs besides the weights to use a checkpoint or backbone.pt."""
        return {"image_size": self.splits.image_size, "normalize": self.normalize}


# Lightning's DDP starts devices 1.. as copies of the command; they learn the run directory
# (named by the first process when --output_dir is not given) from this variable.
RUN_DIR_VARIABLE = "SSL_ZOO_RUN_DIR"


def ddp_copy() -> bool:
    """Whether this process is one of the copies DDP started (devices 1.., other machines): it
    trains its share and writes nothing."""
    return int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0


def check_devices(accelerator: str, devices: int) -> None:
    if accelerator in ("cuda", "gpu") and devices > torch.cuda.device_count():
        raise UserError(f"--devices {devices}: this machine has {torch.cuda.device_count()} "
                        "GPU(s)")  # fmt: skip


def prepare_run_dir(cfg: RunConfig, progress: str, prefix: str) -> Path:
    """The run directory; refuses to overwrite a finished or an unfinished run unless resuming.
    A DDP copy gets the first process's directory, as it is.

    `progress` names what an unfinished run leaves behind (its checkpoints), summary.json marks
    a finished one."""
    if ddp_copy():
        return Path(os.environ.get(RUN_DIR_VARIABLE) or cfg.output_dir)
    if cfg.output_dir is None:
        if cfg.resume:
            raise UserError("--resume true needs the --output_dir of the run to continue")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.output_dir = f"runs/{prefix}{cfg.method}-{cfg.dataset}-{stamp}"
    run_dir = Path(cfg.output_dir)
    finished = (run_dir / "summary.json").exists()
    started = (run_dir / progress).exists()
    if cfg.resume and not started:
        raise UserError(f"nothing to resume in {run_dir}: no {progress}")
    if not cfg.resume and (finished or started):
        state = "a finished run" if finished else "an unfinished run (continue: --resume true)"
        raise UserError(f"{run_dir} already holds {state}; choose another --output_dir")
    make_output_dir(run_dir)
    os.environ[RUN_DIR_VARIABLE] = str(run_dir.resolve())
    return run_dir


def check_before_work(cfg: RunConfig) -> None:
    """Fail on unknown names and on a device this machine lacks, before any data is loaded or
    generated."""
    if cfg.method not in METHODS:
        raise unknown_choice("method", cfg.method, METHODS)
    if cfg.dataset not in DATASETS:
        raise unknown_choice("dataset", cfg.dataset, DATASETS)
    check_accelerator(cfg.accelerator, present=True)


def build_components(cfg: RunConfig, splits: Splits | None = None,
                     online_probe: bool = True) -> Components:  # fmt: skip
    """online_probe: train the method's linear probe on the labels the training images have
    (a federation's clients hold none)."""
    check_before_work(cfg)
    normalize = DATASETS[cfg.dataset].normalize
    if splits is None:
        splits = load_splits(
            cfg.dataset, cfg.data_dir, cfg.image_size, cfg.train_samples, cfg.test_samples,
            cfg.seed, cfg.extra_images,
        )  # fmt: skip
    cifar_stem = cfg.cifar_stem
    if cifar_stem is None:
        cifar_stem = default_cifar_stem(cfg.backbone, splits.image_size)
    spec = BackboneSpec(cfg.backbone, cifar_stem, cfg.pretrained, cfg.backbone_args)
    model = build_method(
        cfg.method,
        cfg.method_args,
        backbone=spec,
        num_classes=splits.num_classes,
        online_probe=online_probe,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_fraction=cfg.warmup_fraction,
        hard_views=cfg.hard_views,
        channels_last=cfg.channels_last,
        compile_backbone=cfg.compile,
        collapse=cfg.collapse,
        collapse_steps=cfg.collapse_steps,
    )
    views = build_views(model.views, splits.image_size, normalize, cfg.views)
    check_views_fit_backbone(model.backbone, first_views(views, splits.train[0][0], cfg.views),
                             cfg.backbone)  # fmt: skip
    if cfg.augment == "batched":
        views = BatchViews.from_lightly(views, repeats=cfg.hard_views)
    elif cfg.hard_views > 1:
        views = RepeatedViews(views, cfg.hard_views)
    monitor = OnlineMonitor(splits.num_classes, cfg.knn_k, cfg.knn_t)
    return Components(splits, spec, model, views, normalize, monitor)


def first_views(views, image, options: dict) -> list:
    """One image's views, drawn before any work: some options out of range (a crop scale above
    1) pass the transform's constructor and fail only when it draws."""
    try:
        return views(image)
    except (ValueError, RuntimeError, TypeError) as err:
        raise bad_views_options(options, err) from None


@torch.no_grad()
def check_views_fit_backbone(backbone, views: list, name: str) -> None:
    """Fail early, in one line, when the backbone cannot take a crop size (e.g. a fixed-size ViT
    given DINO's local crops), rather than deep inside the first training step."""
    was_training = backbone.training
    backbone.eval()
    try:
        for size in sorted({tuple(v.shape[-2:]) for v in views}):
            try:
                backbone(torch.zeros(2, 3, *size))
            except Exception as err:
                first_line = (str(err).strip().splitlines() or [""])[0]
                raise UserError(
                    f"backbone {name} cannot take {size[0]}x{size[1]}-px views ({first_line}); "
                    "choose crop sizes it supports (--views.*crop_size*) or another backbone"
                ) from None
    finally:
        backbone.train(was_training)
