"""Evaluate an encoder: kNN, linear probe and few-label fine-tuning, with label-free metrics and an
embedding plot, or detection transfer (ssl_zoo/detection). Works for backbone.pt, Lightning
checkpoints of ssl_zoo runs, and random init."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from torch import nn

from ssl_zoo.backbones import BackboneSpec, build_backbone, default_cifar_stem, load_backbone
from ssl_zoo.config import (
    DataOptions,
    KnnOptions,
    LogOptions,
    MachineOptions,
    check_accelerator,
    data_checks,
    json_entry_point,
    make_output_dir,
    raise_first_failure,
)
from ssl_zoo.data import DATASETS
from ssl_zoo.errors import UserError, run_main, unknown_choice
from ssl_zoo.evaluation.bench import FeatureBench
from ssl_zoo.evaluation.protocols import PROTOCOLS, build_protocols
from ssl_zoo.evaluation.selection import LABEL_FREE, RULES, file_hash
from ssl_zoo.lifecycle import RunLife


# The groups listed last come first in --help: the data, then the kNN classifier, ...
@dataclass(kw_only=True)
class EvalConfig(LogOptions, MachineOptions, KnnOptions, DataOptions):
    """Evaluate an encoder on a labeled dataset.

    Args:
        checkpoint: backbone.pt or a .ckpt of an ssl_zoo run, or 'random' for initialisation.
        protocol: knn, linear, finetune, all (the first three) or detection
            (ssl_zoo/evaluation/protocols.py).
        protocol_args: Options of the protocol that are not options here (a protocol's options
            are its constructor's keywords; docs/extending.md).
        backbone: Backbone name; required with --checkpoint random, checked against a checkpoint.
        backbone_args: Keyword arguments of the backbone's constructor, e.g. {output_stride: 16}:
            with --checkpoint random, those of the pretrained backbone it stands beside (its
            spec in backbone.pt), so both have one architecture; checked against a checkpoint.
        linear_epochs: Epochs of the linear probe on precomputed features.
        label_fraction: Fraction of the training images to label for fine-tuning, in (0, 1]
            (--select balanced: of each class); detection: of the training images.
        labels: Label this many training images instead of a fraction; the linear probe then
            trains on them alone (without --labels, --select or --selection: on all labels).
        select: Which images to label (ssl_zoo/evaluation/selection.py): balanced (a random
            fraction of each class; reads the labels), or from the encoder's embeddings
            without reading any label: random, typiclust, probcover or kcenter.
        selection: Reuse a selection.json of an earlier evaluation (the same images labeled,
            e.g. for another protocol or backbone).
        federated_selection: A federate.py run directory: each of its clients selects its share
            of the budget (proportional to its images) on its own images with --select.
        self_train: finetune and detection: the fine-tuned model labels the unlabeled rest of
            the training images and a second model trains on both, from the same encoder,
            for as many steps as the first.
        finetune_steps: Fine-tuning steps (few labels: an epoch may be a single batch).
        finetune_lr: Fine-tuning learning rate (SGD, cosine).
        classes: detection: comma-separated class names to detect (default: all of them).
        detector: detection: fasterrcnn (two-stage), retinanet or fcos (one-stage), torchvision's.
        det_size: detection: shorter image side the detector sees.
        det_epochs: detection: fine-tuning epochs over the labeled images.
        det_lr: detection: peak learning rate (SGD, warm-up then cosine); default: the
            detector's (DETECTOR_LR).
        det_batch_size: detection: images per step.
        trainable_layers: detection: how many of the backbone's stem and four stages train,
            from the top (0: frozen backbone, 5: all), as torchvision's detectors count them.
        trainable_bn: detection: train BatchNorm (batch statistics) instead of freezing it.
        plot: Write embedding.png (t-SNE of the test features coloured by class), or
            detections.png (predicted boxes on validation images).
        batch_size: Images per forward pass.
    """

    checkpoint: str
    protocol: str = "knn"
    protocol_args: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None
    backbone_args: dict[str, Any] | None = None
    linear_epochs: int = 100
    label_fraction: float = 0.01
    labels: int | None = None
    select: str = "balanced"
    selection: str | None = None
    federated_selection: str | None = None
    self_train: bool = False
    finetune_steps: int = 300
    finetune_lr: float = 0.05
    classes: str | None = None
    detector: str = "fasterrcnn"
    det_size: int = 128
    det_epochs: int = 12
    det_lr: float | None = None
    det_batch_size: int = 8
    trainable_layers: int = 3
    trainable_bn: bool = False
    plot: bool = True
    batch_size: int = 256

    @cached_property
    def protocols(self) -> list:
        """The protocols --protocol names, with their options (built once: validate checks them
        before any work)."""
        return build_protocols(self)

    def validate(self) -> None:
        protocols = self.protocols
        datasets = protocols[0].datasets
        if datasets is not None and self.dataset not in datasets:
            raise unknown_choice(f"dataset for --protocol {self.protocol}", self.dataset, datasets)
        if datasets is None and self.dataset not in DATASETS:
            raise unknown_choice("dataset", self.dataset, DATASETS)
        raise_first_failure(self.log_checks())
        if not 0 < self.label_fraction <= 1:
            raise UserError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.select not in RULES:
            raise unknown_choice("select", self.select, RULES)
        if self.labels is not None and self.labels < 1:
            raise UserError(f"labels must be >= 1 (got {self.labels})")
        if self.federated_selection and self.select not in LABEL_FREE:
            raise UserError("--federated_selection: clients hold no labels; give a label-free "
                            f"--select ({', '.join(LABEL_FREE)})")  # fmt: skip
        if self.self_train and not any(p.self_trains for p in protocols):
            able = [n for n, p in PROTOCOLS.items() if p.self_trains]
            raise UserError(f"--self_train goes with --protocol {', '.join(able)} or all")
        if self.checkpoint == "random" and not self.backbone:
            raise UserError("--checkpoint random needs --backbone NAME (e.g. resnet18)")
        raise_first_failure(data_checks(self))
        if self.batch_size < 1 or self.num_workers < 0:
            raise UserError("batch_size must be >= 1 and num_workers >= 0")
        if self.linear_epochs < 1 or self.finetune_steps < 1:
            raise UserError("linear_epochs and finetune_steps must be >= 1")
        check_accelerator(self.accelerator)

    @property
    def few_labels(self) -> bool:
        """Whether the user asked for a labeled subset: then the linear probe trains on it too."""
        return self.labels is not None or self.selection is not None or self.select != "balanced"

    def encoder_id(self) -> str:
        """Which encoder embedded the pool: a checkpoint's name and hash, or the random init."""
        if self.checkpoint == "random":
            return f"random {self.backbone} (seed {self.seed})"
        return f"{self.checkpoint} (sha256 {file_hash(self.checkpoint)})"


def load_encoder(cfg: EvalConfig) -> tuple[nn.Module, int, dict]:
    if cfg.checkpoint == "random":
        size = (cfg.protocols[0].input_size or cfg.image_size
                or DATASETS[cfg.dataset].image_size or 32)  # fmt: skip
        spec = BackboneSpec(cfg.backbone, default_cifar_stem(cfg.backbone, size),
                            args=cfg.backbone_args or {})  # fmt: skip
        model, dim = build_backbone(spec)
        return model, dim, {"spec": asdict(spec)}
    model, dim, meta = load_backbone(cfg.checkpoint)
    trained_on = meta["spec"]["name"]
    if cfg.backbone and cfg.backbone != trained_on:
        raise UserError(
            f"{cfg.checkpoint} holds a {trained_on} backbone, not the requested {cfg.backbone}; "
            "drop --backbone or pass the matching name"
        )
    # A random baseline compared with a checkpoint must have its architecture: on coco128 at
    # 256 px a stride-16 last stage cost Faster R-CNN 1.5x the FLOPs of the stride-32 default.
    trained_args = meta["spec"].get("args") or {}
    if cfg.backbone_args is not None and cfg.backbone_args != trained_args:
        raise UserError(
            f"{cfg.checkpoint} holds a backbone built with backbone_args {trained_args}, not "
            f"{cfg.backbone_args}; drop --backbone_args or pass the checkpoint's"
        )
    return model, dim, meta


def evaluate(cfg: EvalConfig) -> dict:
    L.seed_everything(cfg.seed, verbose=False)
    check_accelerator(cfg.accelerator, present=True)
    out_dir = Path(cfg.output_dir or Path(cfg.checkpoint).parent)
    if cfg.checkpoint == "random" and cfg.output_dir is None:
        out_dir = Path("runs") / f"eval-random-{cfg.backbone.replace(':', '_')}-{cfg.dataset}"
    make_output_dir(out_dir)
    with RunLife(cfg, out_dir, "evaluation", summary_file="results.json") as life:
        model, _, meta = load_encoder(cfg)
        protocols = cfg.protocols
        if protocols[0].on_features:
            found = scored_features(cfg, protocols, model, meta, out_dir)
        else:
            found = protocols[0].run(Encoder(cfg, model, meta, out_dir))
        summary = {
            "protocol": cfg.protocol,
            "dataset": cfg.dataset,
            "checkpoint": cfg.checkpoint,
            "backbone": meta["spec"]["name"],
            **found,
            **life.cost(with_run_dir=False),
        }
        wandb_run, per_protocol = None, {}
        if cfg.logger == "wandb":
            wandb_run = life.start_wandb(
                f"eval-{cfg.protocol}-{Path(cfg.checkpoint).parent.name or cfg.checkpoint}"
            )
            for protocol, values in summary["results"].items():
                per_protocol.update({f"{protocol}/{k}": v for k, v in values.items()})
            if summary["plot"]:
                import wandb

                wandb_run.log({Path(summary["plot"]).stem: wandb.Image(summary["plot"])})
        return life.finish(summary, wandb_run, wandb_also=per_protocol)


@dataclass
class Encoder:
    """What a protocol on data of its own (detection) is given."""

    cfg: EvalConfig
    model: nn.Module
    meta: dict
    out_dir: Path


def scored_features(cfg: EvalConfig, protocols: list, model: nn.Module, meta: dict,
                    out_dir: Path) -> dict:  # fmt: skip
    """The feature protocols on one bench, with label-free metrics and the embedding plot."""
    labeling = any(p.labeled_subset for p in protocols) or cfg.few_labels
    bench = FeatureBench(cfg, model, meta, out_dir, labeling)
    results: dict[str, dict] = {}
    if bench.selection is not None:
        results["selection"] = bench.selection
    for protocol in protocols:
        results[protocol.name] = protocol.run(bench)
    label_free = bench.label_free()
    plot_path = bench.plot()
    names = [p.name for p in protocols]
    first = results[names[0]]
    return {
        # With --protocol all, top1/top5 are per protocol; otherwise the protocol's own figures.
        "top1": first["top1"] if len(names) == 1 else {p: results[p]["top1"] for p in names},
        "top5": first["top5"] if len(names) == 1 else {p: results[p]["top5"] for p in names},
        **label_free,
        "results": results,
        "seconds_per_protocol": {k: round(v, 1) for k, v in bench.seconds.items()},
        "plot": plot_path,
        # Training FLOPs of the evaluation (fine-tuning); extracting features is not counted.
        "gflops": results.get("finetune", {}).get("gflops", 0.0)
        + results.get("finetune", {}).get("self_train", {}).get("gflops", 0.0),
    }


main = json_entry_point(EvalConfig, evaluate, prog="evaluate.py")


def cli() -> None:
    run_main(main)
