"""The typed run configuration shared by the entry points, and its YAML + command-line parser.

Configs compose: `--config a.yaml --config b.yaml --lr 0.1` applies a, then b, then the flag.
"""

from __future__ import annotations

import json
import sys
import typing
from argparse import ArgumentError
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from ssl_zoo.errors import UserError

LOGGERS = ("csv", "wandb")
AUGMENT = ("batched", "pil")
COLLAPSE = ("warn", "stop", "off")


def inference_device(accelerator: str):
    """Where an evaluation computes outside a Trainer (features, detections): CUDA when asked
    for (or auto) and present, else the CPU."""
    import torch

    return torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")


def check_accelerator(name: str, present: bool = False) -> None:
    """One of Lightning's accelerator names; with `present`, also one this machine has (checked
    when a run starts, not when a config is read: a GPU config may be prepared on a laptop).
    Lightning would otherwise fail later, deep in the Trainer."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    known = set(AcceleratorRegistry.available_accelerators())
    if name == "auto":
        return
    if name not in known | {"gpu"}:
        raise UserError(
            f"unknown accelerator '{name}'; valid choices: {', '.join(sorted(known | {'auto', 'gpu'}))}"
        )
    kinds = ("cuda", "mps") if name == "gpu" else (name,)
    if present and not any(AcceleratorRegistry[k]["accelerator"].is_available() for k in kinds):
        raise UserError(
            f"--accelerator {name}: this machine has none; use --accelerator auto or cpu"
        )


def make_output_dir(path: Path, flag: str = "--output_dir") -> None:
    """Create a directory a run writes into; `flag` is the option that named it (for the message)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; name a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {flag} {path}: {err.strerror}") from err


@contextmanager
def replacing(path: Path):
    """Yield a path beside `path` to write to; renamed onto `path` once written. A kill or a full
    disk mid-write leaves the old file whole (and no partial file behind), so a checkpoint is
    never torn and a summary.json, which marks a run as finished, is never truncated."""
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    with replacing(path) as partial:
        partial.write_text(text)


def check_precision(precision: str) -> None:
    from lightning.fabric.connector import _PRECISION_INPUT_STR

    # Double precision is left out: the views are made inside the training step, after
    # Lightning's casting of the batch, so they would meet float64 weights as float32.
    valid = [p for p in (*typing.get_args(_PRECISION_INPUT_STR), "32", "16", "bf16")
             if not str(p).startswith("64")]  # fmt: skip
    if str(precision) not in valid:
        raise UserError(f"unknown precision '{precision}'; valid choices: {', '.join(valid)}")


@dataclass(kw_only=True)
class OptionGroup:
    """The options of one concern; a config is made of groups (train.py's and federate.py's of
    all, evaluate.py's of those it shares), so each option is declared once."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class LogOptions(OptionGroup):
    """Seeds, where the run writes, and what it logs.

    Args:
        seed: Seed of everything random in the run (initialisation, views, data order, subsets,
            probes).
        output_dir: Where the run writes; default: runs/<method>-<dataset>-<time> (evaluate.py:
            beside the checkpoint).
        logger: csv (always written) or wandb (also a W&B run; offline without an API key).
        wandb_project: W&B project.
        wandb_group: W&B group, to compare runs side by side.
        wandb_tags: W&B tags.
        wandb_name: W&B run name; default: the run directory's name.
        track_energy: Measure the run's energy with codecarbon's offline tracker (ssl_zoo/cost.py).
        energy_args: Passed to codecarbon's OfflineEmissionsTracker (country_iso_code, pue, ...).
    """

    seed: int = 0
    output_dir: str | None = None
    logger: str = "csv"
    wandb_project: str = "ssl_zoo"
    wandb_group: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    wandb_name: str | None = None
    track_energy: bool = True
    energy_args: dict[str, Any] = field(default_factory=dict)

    def log_checks(self) -> list[tuple[bool, str]]:
        return [
            # numpy seeds from 0 to 2**32 - 1
            (0 <= self.seed < 2**32, f"seed must be in [0, 2**32) (got {self.seed})"),
            (
                self.logger in LOGGERS,
                f"unknown logger '{self.logger}'; valid choices: {', '.join(LOGGERS)}",
            ),
        ]


@dataclass(kw_only=True)
class MachineOptions(OptionGroup):
    """Where the work runs.

    Args:
        accelerator: auto, cpu, gpu, ...
        num_workers: DataLoader worker processes.
    """

    accelerator: str = "auto"
    num_workers: int = 2


@dataclass(kw_only=True)
class KnnOptions(OptionGroup):
    """The kNN classifier of the monitor and of evaluate.py.

    Args:
        knn_k: Neighbours of the kNN classifier (train.py, federate.py: of the monitor).
        knn_t: Temperature of its weighted vote.
    """

    knn_k: int = 200
    knn_t: float = 0.1


@dataclass(kw_only=True)
class DataOptions(OptionGroup):
    """The images.

    Args:
        dataset: synthetic, scenes (street scenes, ssl_zoo/scenes.py), cifar10, cifar100, stl10,
            imagefolder, or coco (the photos of a COCO detection layout, each labeled by its
            largest object for the monitor and non-IID partitions; the boxes are not read).
        data_dir: Dataset root (torchvision files, DIR/train/<class>/* for imagefolder, or
            DIR/annotations + DIR/train + DIR/val for coco).
        image_size: Side of the images in pixels; default: the dataset's own (evaluate.py: the
            checkpoint's).
        train_samples: Use at most this many training images (synthetic: generate this many).
        test_samples: Use at most this many test images (synthetic: generate this many).
    """

    dataset: str = "synthetic"
    data_dir: str | None = None
    image_size: int | None = None
    train_samples: int | None = None
    test_samples: int | None = None


@dataclass(kw_only=True)
class OptimOptions(OptionGroup):
    """Optimisation and its budget.

    Args:
        batch_size: Images per step (each yields two or more views).
        optimizer: sgd, lars or adamw.
        lr: Peak learning rate (absolute, not scaled by batch size).
        weight_decay: Weight decay (not applied to biases and normalisation layers).
        warmup_fraction: Fraction of training spent in linear learning-rate warm-up.
        max_epochs: train.py: epochs to train. A federation's compute is set by rounds x
            local_epochs instead; federate.py accepts the key so one method YAML serves both.
        max_time: Wall-clock budget in minutes (train.py: of training; federate.py: of all rounds);
            the learning-rate and momentum schedules anneal to fit it. None: no budget.
        precision: Lightning precision, e.g. 32-true, bf16-mixed, 16-mixed.
        collapse: What to do when the embeddings collapse (their spread stays under 5% of a
            uniform spread for collapse_steps steps): warn, stop (exit 2, keeping the last
            checkpoint; a federated client is dropped from its round) or off.
        collapse_steps: Consecutive collapsed training steps before `collapse` acts.
    """

    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.06
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.0
    max_epochs: int = 100
    max_time: float | None = None
    precision: str = "32-true"
    collapse: str = "warn"
    collapse_steps: int = 50


@dataclass(kw_only=True)
class BackboneOptions(OptionGroup):
    """The backbone.

    Args:
        backbone: resnet18/resnet34/resnet50 (torchvision) or timm:<model name>.
        backbone_args: Keyword arguments of the backbone's constructor, e.g. {output_stride: 16}
            for a timm ResNet (keeps a 2x2 map in the last stage of 32-px images).
        cifar_stem: 3x3 stride-1 stem without max-pool for torchvision ResNets; default: on for <=64 px.
        pretrained: true: start from the backbone library's pretrained weights (needs them
            downloaded); a path: from another ssl_zoo run's backbone.pt of this architecture
            (e.g. a recipe trained on other photos).
        channels_last: Train in NHWC memory format (faster convolutions on CPU and GPU).
        compile: Compile the backbone with torch.compile (inductor); the first steps, and the first
            kNN monitor, wait for compilation (about a minute for a ResNet-18 on 2 CPU cores).
    """

    backbone: str = "resnet18"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool | None = None
    pretrained: bool | str = False
    channels_last: bool = True
    compile: bool = False


@dataclass(kw_only=True)
class MethodOptions(OptionGroup):
    """The SSL method and its views.

    Args:
        method: SSL method (simclr, mocov2, nnclr, byol, simsiam, dino, vicreg, barlowtwins, swav, rotnet).
        method_args: The method's own hyper-parameters (temperature, projector sizes, momentum...).
        views: Options of the method's lightly view transform (e.g. gaussian_blur, min_scale).
        augment: batched (lightly's views as tensor ops on in-memory uint8 batches, on the training
            device) or pil (lightly's PIL transforms in DataLoader workers, for data too big for memory).
        hard_views: Hard View Selection: draw N view pairs per image, train on the hardest (1: off).
    """

    method: str = "simclr"
    method_args: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)
    augment: str = "batched"
    hard_views: int = 1


# The groups listed last come first in --help (and in config.yaml): the method, then its data.
@dataclass(kw_only=True)
class RunConfig(LogOptions, MachineOptions, KnnOptions, OptimOptions, BackboneOptions, DataOptions,
                MethodOptions):  # fmt: skip
    """What every training run shares: method, data, views, backbone, optimisation, monitor,
    seeds and logging.

    Args:
        extra_images: Folders of more unlabeled photos for the method to learn from (every image
            file under each, e.g. a public set beside a fleet's own photos), unlabeled: the
            monitor never sees them, a non-IID partition deals them out as one more class.
        knn_every_n_epochs: train.py: run the kNN monitor every N epochs (and always at the end).
            A federation evaluates its global model after every round.
        checkpoint_minutes: train.py: besides after every monitor epoch, checkpoint at least this
            often within long epochs, so a killed run loses little.
        resume: Continue the run in output_dir from its last checkpoint.
    """

    # Options that moved (old name -> new dotted name): given, they are one line naming the new.
    renamed: ClassVar[dict[str, str]] = {}

    extra_images: list[str] = field(default_factory=list)
    knn_every_n_epochs: int = 1
    checkpoint_minutes: float = 10.0
    resume: bool = False

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.batch_size >= 2, f"batch_size must be >= 2 (got {self.batch_size})"),
            *self.log_checks(),
            (self.lr > 0, f"lr must be > 0 (got {self.lr})"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            *data_checks(self),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.augment in AUGMENT, f"augment must be one of {', '.join(AUGMENT)}"),
            (self.hard_views >= 1, f"hard_views must be >= 1 (got {self.hard_views})"),
            (
                self.dataset not in ("imagefolder", "coco") or self.data_dir,
                f"{self.dataset} needs --data_dir DIR",
            ),
            (self.max_epochs >= 1, f"max_epochs must be >= 1 (got {self.max_epochs})"),
            (self.max_time is None or self.max_time > 0, "max_time must be > 0 minutes"),
            (self.knn_every_n_epochs >= 1, "knn_every_n_epochs must be >= 1"),
            (self.checkpoint_minutes > 0, "checkpoint_minutes must be > 0"),
            (self.collapse in COLLAPSE, f"collapse must be one of {', '.join(COLLAPSE)}"),
            (self.collapse_steps >= 1, f"collapse_steps must be >= 1 (got {self.collapse_steps})"),
        ]

    def validate(self) -> None:
        raise_first_failure(self.checks())
        check_accelerator(self.accelerator)
        check_precision(self.precision)


def data_checks(cfg) -> list[tuple[bool, str]]:
    """What train.py, federate.py and evaluate.py check alike: the kNN classifier's options, and
    --train_samples and --test_samples, where given, leaving at least one image."""
    counts = {"train_samples": cfg.train_samples, "test_samples": cfg.test_samples}
    knn = f"knn_k must be >= 1 and knn_t > 0 (got {cfg.knn_k}, {cfg.knn_t})"
    return [(cfg.knn_k >= 1 and cfg.knn_t > 0, knn)] + [
        (n is None or n >= 1, f"{name} must be >= 1 (got {n})") for name, n in counts.items()
    ]


def raise_first_failure(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UserError(message)


STRATEGIES = ("auto", "ddp")


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """Centralized SSL pre-training with an online kNN monitor.

    Args:
        devices: Devices per machine, each a process of Lightning's DDP training on its share
            of every epoch's images. batch_size is per device: the effective batch is
            batch_size x devices x num_nodes, and the learning rate is not rescaled for it.
        num_nodes: Machines, each running this same command (Lightning's multi-node DDP; set
            MASTER_ADDR, MASTER_PORT and NODE_RANK on each, and a shared --output_dir).
        strategy: auto (one device: none; more: ddp) or ddp.
        sync_batchnorm: BatchNorm statistics over all devices' batches (SyncBatchNorm), not
            each device's own.
    """

    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False

    def checks(self) -> list[tuple[bool, str]]:
        return [
            *super().checks(),
            (self.devices >= 1, f"devices must be >= 1 (got {self.devices})"),
            (self.num_nodes >= 1, f"num_nodes must be >= 1 (got {self.num_nodes})"),
            (
                self.strategy in STRATEGIES,
                f"unknown strategy '{self.strategy}'; valid choices: {', '.join(STRATEGIES)}",
            ),
            (
                self.num_nodes == 1 or self.output_dir is not None,
                "num_nodes > 1 needs --output_dir (the same run directory on every machine)",
            ),
        ]

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def build_parser(config_class: type, prog: str) -> ArgumentParser:
    # exit_on_error=False: a bad option or config becomes a UserError (one line, exit code 2)
    # instead of jsonargparse's usage dump and a message wrapped over several lines.
    parser = ArgumentParser(
        prog=prog, description=(config_class.__doc__ or "").split("\n")[0], exit_on_error=False
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config; may be repeated")
    parser.add_class_arguments(config_class)
    return parser


def bool_options(config_class: type) -> set[str]:
    hints = typing.get_type_hints(config_class)
    return {
        f"--{f.name}"
        for f in fields(config_class)
        if bool in (hints[f.name], *typing.get_args(hints[f.name]))
    }


def bare_flags_to_true(argv: list[str], flags: set[str]) -> list[str]:
    """`--resume` as users type it: a boolean option with no value means true (jsonargparse
    wants `--resume true`)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in flags and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append("true")
    return out


def read_yaml_files(argv: list[str]) -> list[object]:
    """The --config files, read; one that is not YAML is named with the line where it breaks
    (jsonargparse's own message names neither the file nor, with several, which one)."""
    paths = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--config"]
    paths += [a.removeprefix("--config=") for a in argv if a.startswith("--config=")]
    read = []
    for path in paths:
        if Path(path).is_file():
            try:
                read.append(yaml.safe_load(Path(path).read_text()))
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
                problem = getattr(err, "problem", None) or type(err).__name__
                raise UserError(f"--config {path} is not valid YAML: {problem}{where}") from None
    return read


def check_renamed(argv: list[str], configs: list[object], renamed: dict[str, str]) -> None:
    """An option that moved, on the command line or in a --config file: one line naming its new
    name, instead of jsonargparse's "unrecognized arguments"."""
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    given |= {key for config in configs if isinstance(config, dict) for key in config}
    for old, new in renamed.items():
        if old in given:
            raise UserError(f"--{old} is now --{new}")


def parse_config(config_class: type, argv: list[str] | None, prog: str):
    parser = build_parser(config_class, prog)
    argv = sys.argv[1:] if argv is None else argv
    check_renamed(argv, read_yaml_files(argv), getattr(config_class, "renamed", {}))
    try:
        namespace = parser.parse_args(bare_flags_to_true(list(argv), bool_options(config_class)))
    except ArgumentError as err:
        raise UserError(f"{' '.join(str(err).split())} (options: {prog} --help)") from None
    values = {k: v for k, v in vars(namespace).items() if k != "config"}
    config = config_class(**values)
    config.validate()
    return config


def json_entry_point(config_class: type, run, prog: str):
    """main(argv) of an entry point: parse the config, run it, end stdout with one JSON line."""

    def main(argv: list[str] | None = None) -> dict:
        summary = run(parse_config(config_class, argv, prog=prog))
        if summary is not None:  # None: a DDP copy of the command, which reports nothing
            print(json.dumps(summary), flush=True)
        return summary

    return main
