"""Centralized pre-training: config -> data, views, method -> Lightning Trainer -> run directory.

The run directory gets config.yaml (resolved), metrics.csv, checkpoints/last.ckpt, backbone.pt,
curves.png and summary.json; summary.json is written last, so its presence marks a finished run.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ssl_zoo.backbones import save_backbone
from ssl_zoo.components import (
    build_components,
    check_before_work,
    check_devices,
    ddp_copy,
    prepare_run_dir,
)
from ssl_zoo.config import TrainConfig, json_entry_point, replacing
from ssl_zoo.cost import CostSoFar, StepFlops, TimeSplit, gflops
from ssl_zoo.curves import training_curves
from ssl_zoo.data import SSLDataModule
from ssl_zoo.errors import UserError, run_main
from ssl_zoo.lifecycle import RunLife
from ssl_zoo.loggers import build_loggers, prepend_csv_rows, read_csv_rows, wandb_logger
from ssl_zoo.monitor import OnlineMonitor
from ssl_zoo.resume import ResumableRun


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint beside its place and renames it there: a kill or a full disk during
    the write leaves the previous checkpoint whole."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with replacing(Path(path)) as partial:
            super().save_checkpoint(checkpoint, partial, storage_options)


def final_monitor(trainer: L.Trainer, model, datamodule, monitor: OnlineMonitor) -> dict:
    """kNN/probe metrics of the final weights; re-measured if training stopped between epochs."""
    if not datamodule.has_monitor:
        return {}
    if monitor.last_metrics.get("step") != model.global_step:
        trainer.validate(model, datamodule=datamodule, verbose=False)
    return monitor.last_metrics


def train(cfg: TrainConfig) -> dict | None:
    """The run's summary; None in DDP's copies, where only the first process writes."""
    check_before_work(cfg)
    check_devices(cfg.accelerator, cfg.devices)
    copy = ddp_copy()
    run_dir = prepare_run_dir(cfg, progress="checkpoints", prefix="")
    with RunLife(cfg, run_dir, "train", track_energy=cfg.track_energy and not copy) as life:
        L.seed_everything(cfg.seed, workers=True, verbose=False)

        parts = build_components(cfg)
        model, splits = parts.model, parts.splits
        datamodule = SSLDataModule(
            splits, parts.views, parts.normalize, cfg.batch_size, cfg.num_workers, cfg.seed
        )
        if not copy:
            life.snapshot()

        last_ckpt = run_dir / "checkpoints" / "last.ckpt"
        earlier_rows: list[dict] = []
        if cfg.resume:
            if not last_ckpt.exists():
                raise UserError(f"nothing to resume: {last_ckpt} does not exist")
            try:
                resumed_step = torch.load(last_ckpt, map_location="cpu", weights_only=False)[
                    "global_step"
                ]
            except Exception as err:
                raise UserError(
                    f"cannot resume: {last_ckpt} is unreadable ({type(err).__name__}); it was kept"
                ) from err
            earlier_rows = [
                r for r in read_csv_rows(run_dir / "metrics.csv") if int(r["step"]) <= resumed_step
            ]

        spent = [float(r["cost/energy_kwh"]) for r in earlier_rows if r.get("cost/energy_kwh")]
        kwh_before = spent[-1] if spent else 0.0
        loggers = build_loggers(cfg, run_dir)
        flops, timing = StepFlops(), TimeSplit()
        last = {"dirpath": run_dir / "checkpoints", "filename": "last", "save_top_k": 1,
                "enable_version_counter": False}  # fmt: skip
        trainer = L.Trainer(
            max_epochs=cfg.max_epochs,
            max_time=timedelta(minutes=cfg.max_time) if cfg.max_time else None,
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy="ddp" if cfg.strategy == "auto" and cfg.world_size > 1 else cfg.strategy,
            sync_batchnorm=cfg.sync_batchnorm,
            use_distributed_sampler=False,  # SSLDataModule shares the images out itself
            precision=cfg.precision,
            logger=loggers,
            callbacks=[
                # last.ckpt after every monitor epoch (with its kNN; every epoch without a monitor)
                # and every --checkpoint_minutes within an epoch, each replacing the one before.
                ModelCheckpoint(**last, save_on_train_epoch_end=not datamodule.has_monitor),
                ModelCheckpoint(
                    **last, train_time_interval=timedelta(minutes=cfg.checkpoint_minutes)
                ),
                TQDMProgressBar(refresh_rate=1),
                flops,
                timing,
                CostSoFar(flops, life.energy, kwh_before),
                parts.monitor,
                ResumableRun(cfg.seed, parts.meta),
            ],
            check_val_every_n_epoch=cfg.knn_every_n_epochs,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            enable_model_summary=False,
            default_root_dir=run_dir,
            plugins=[AtomicCheckpointIO()],
        )

        init_metrics: dict = {}
        if cfg.resume:  # measured when the run began: metrics.csv's first monitor row
            first = next((r for r in earlier_rows if r.get("val/knn_top1")), {})
            init_metrics = {k: float(v) for k, v in first.items() if k.startswith("val/") and v}
        elif datamodule.has_monitor:
            # The encoder at initialisation is the baseline every kNN figure is compared against.
            trainer.validate(model, datamodule=datamodule, verbose=False)
            init_metrics = parts.monitor.last_metrics
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(last_ckpt) if cfg.resume else None)
        final = final_monitor(trainer, model, datamodule, parts.monitor)
        if not trainer.is_global_zero:
            return None
        prepend_csv_rows(run_dir / "metrics.csv", earlier_rows)

        stopped_by = "max_epochs" if trainer.current_epoch >= cfg.max_epochs else "max_time"
        summary = {
            "method": cfg.method,
            "dataset": cfg.dataset,
            "backbone": cfg.backbone,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "stopped_by": stopped_by,
            "knn_top1_init": init_metrics.get("val/knn_top1"),
            "knn_top1": final.get("val/knn_top1"),
            "knn_top5": final.get("val/knn_top5"),
            "probe_top1": final.get("val/probe_top1"),
            "embedding_std": final.get("val/embedding_std"),
            "devices": trainer.world_size,
            # A step's count is one device's; every device takes as many steps.
            "gflops_per_step": gflops(flops.total(1)),
            "gflops": gflops(flops.total(trainer.global_step) * trainer.world_size),
            **life.cost(),
        }
        summary["seconds_split"] = timing.split(summary["seconds"])
        save_backbone(
            run_dir / "backbone.pt",
            model.backbone,
            parts.spec,
            feature_dim=model.feature_dim,
            **parts.meta,
            method=cfg.method,
            dataset=cfg.dataset,
            knn_top1=summary["knn_top1"],
        )
        training_curves(run_dir, f"{cfg.method} on {cfg.dataset}, {cfg.backbone}")
        wandb = wandb_logger(loggers)  # Lightning's, which logged every step
        return life.finish(summary, wandb and wandb.experiment, run_dir / "backbone.pt")


main = json_entry_point(TrainConfig, train, prog="train.py")


def cli() -> None:
    run_main(main)
