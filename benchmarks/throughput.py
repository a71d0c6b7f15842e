"""Training throughput in views per second, three ways:

- limit:     the backbone's forward + backward + optimizer step on ready-made tensors;
- ssl_zoo:   the full SSL step as train.py runs it (DataModule, batched views on the training
             device, the method's LightningModule inside a Lightning Trainer); `--augment pil`
             measures the PIL path (lightly views in DataLoader workers) instead;
- reference: lightly's example recipe: the same backbone, head and loss in a plain PyTorch loop,
             PIL transforms from lightly.transforms in DataLoader workers, fp32 whatever
             `--precision` says (limit and ssl_zoo train in it).

Each measurement runs in a process of its own, so that ssl_zoo's process-wide malloc settings
(ssl_zoo/allocator.py) hold for limit and ssl_zoo, and the reference runs with glibc's defaults,
as lightly's recipe would; the rounds interleave the three so machine noise cancels.

    python benchmarks/throughput.py [--method simclr] [--backbone timm:resnet18] [--batch_size 256]
                                    [--steps 16] [--warmup 6] [--rounds 3] [--device cpu|cuda]
                                    [--num_workers 2]
                                    [--augment batched|pil] [--channels_last 1|0] [--compile 0|1]
                                    [--precision 32-true|bf16-mixed|16-mixed]

Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning.pytorch as L  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.cli import at_least, method_name  # noqa: E402
from ssl_zoo.allocator import keep_freed_memory  # noqa: E402
from ssl_zoo.components import build_components  # noqa: E402
from ssl_zoo.config import TrainConfig  # noqa: E402
from ssl_zoo.data import SSLDataModule, Transformed, collate_views  # noqa: E402
from ssl_zoo.views import build_views  # noqa: E402


def pil_views(parts, cfg):
    """lightly's PIL transform of the method: what the reference runs, and the views' shapes."""
    return build_views(parts.model.views, parts.splits.image_size, parts.normalize, cfg.views)


# Lightning precision -> the autocast dtype it trains under (None: no autocast).
AUTOCAST = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def time_limit(parts, cfg, device, steps: int, warmup: int) -> float:
    """Backbone alone on ready-made tensors shaped like the views, with the memory format,
    precision, malloc settings and compilation the method trains with (so the ratio measures the
    pipeline, not these). fp16 scales its loss as Lightning's 16-mixed does."""
    keep_freed_memory()  # as ssl_zoo's setup() does
    fmt = parts.model.memory_format
    backbone = parts.model.backbone.to(device, memory_format=fmt).train()
    if cfg.compile:
        backbone.compile()
    # Fused, as ssl_zoo's optimizers are: the limit is the fastest step of these parameters.
    opt = torch.optim.SGD(backbone.parameters(), lr=0.01, momentum=0.9, fused=True)
    dtype = AUTOCAST[cfg.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    shapes = [tuple(v.shape) for v in pil_views(parts, cfg)(parts.splits.train[0][0])]
    # Views of one size go through the backbone together, as the methods do.
    inputs = [
        torch.randn(cfg.batch_size * shapes.count(s), *s, device=device).contiguous(
            memory_format=fmt
        )
        for s in sorted(set(shapes))
    ]
    elapsed = 0.0
    for step in range(warmup + steps):
        sync(device)
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(backbone(x).float().pow(2).mean() for x in inputs)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync(device)
        if step >= warmup:
            elapsed += time.perf_counter() - tic
    return steps * cfg.batch_size * len(shapes) / elapsed


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device)
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.steps = trainer.global_step - self.warmup


def time_ssl_zoo(parts, cfg, device, steps: int, warmup: int) -> float:
    """What train.py runs: DataModule + Lightning Trainer + the method's training_step."""
    datamodule = SSLDataModule(
        parts.splits, parts.views, parts.normalize, cfg.batch_size, cfg.num_workers
    )
    timer = StepTimer(warmup)
    trainer = L.Trainer(max_steps=warmup + steps, accelerator="gpu" if device.type == "cuda" else "cpu",
                        devices=1, precision=cfg.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[timer])  # fmt: skip
    trainer.fit(parts.model, datamodule=datamodule)
    elapsed = time.perf_counter() - timer.start
    n_views = len(pil_views(parts, cfg)(parts.splits.train[0][0]))
    return timer.steps * cfg.batch_size * n_views / elapsed


def time_reference(parts, cfg, device, steps: int, warmup: int) -> float:
    """lightly's example loop: same modules and loss, PIL transforms in DataLoader workers,
    default (NCHW) memory format."""
    model = parts.model.to(device).train()
    views = pil_views(parts, cfg)
    loader = DataLoader(Transformed(parts.splits.train, views), batch_size=cfg.batch_size,
                        shuffle=True, drop_last=True, num_workers=cfg.num_workers,
                        collate_fn=collate_views, persistent_workers=cfg.num_workers > 0)  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    elapsed, done, it = 0.0, 0, iter(loader)
    tic = None
    for step in range(warmup + steps):
        try:
            views, _ = next(it)
        except StopIteration:
            it = iter(loader)
            views, _ = next(it)
        views = [v.to(device, non_blocking=True) for v in views]
        loss = model.ssl_step(views).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if step == warmup - 1:
            tic = time.perf_counter()
        elif step >= warmup:
            done += 1
    elapsed = time.perf_counter() - tic
    return done * cfg.batch_size * len(views) / elapsed


def sync(device) -> None:
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


PIPELINES = {"limit": time_limit, "ssl_zoo": time_ssl_zoo, "reference": time_reference}


def child(args, device) -> None:
    """One measurement, in a process of its own: the views/s of one pipeline as a JSON line."""
    samples = args.batch_size * (args.steps + args.warmup + 1)
    cfg = TrainConfig(method=args.method, backbone=args.backbone, batch_size=args.batch_size,
                      dataset=args.dataset, data_dir=args.data_dir, train_samples=samples,
                      test_samples=10, num_workers=args.num_workers, views={"gaussian_blur": 0.0},
                      augment=args.augment, channels_last=bool(args.channels_last),
                      compile=bool(args.compile), precision=args.precision)  # fmt: skip
    L.seed_everything(args.seed, verbose=False)
    parts = build_components(cfg)
    rate = PIPELINES[args.child](parts, cfg, device, args.steps, args.warmup)
    print(json.dumps({"views_per_s": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", type=method_name, default="simclr")
    parser.add_argument("--backbone", default="timm:resnet18")
    parser.add_argument("--batch_size", type=at_least(1), default=256)
    parser.add_argument("--steps", type=at_least(1), default=16)
    # The reference's workers fill their prefetch queue (2 x prefetch_factor 2 batches) before its
    # timer starts; timed after only 2 warm-up steps it read 8-10% above its steady state.
    parser.add_argument("--warmup", type=at_least(0), default=6)
    parser.add_argument("--rounds", type=at_least(1), default=3)
    parser.add_argument("--num_workers", type=at_least(0), default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--augment", default="batched", choices=["batched", "pil"])
    parser.add_argument("--channels_last", type=int, default=1, choices=[0, 1])
    parser.add_argument("--compile", type=int, default=0, choices=[0, 1])
    parser.add_argument("--precision", default="32-true", choices=list(AUTOCAST))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.child:
        child(args, device)
        return
    results: dict[str, list[float]] = {name: [] for name in PIPELINES}
    for round_index in range(args.rounds):
        for name in PIPELINES:
            command = [sys.executable, __file__, *sys.argv[1:], "--child", name,
                       "--seed", str(round_index)]  # fmt: skip
            proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                lines = proc.stderr.strip().splitlines() or ["no output"]
                sys.exit(f"error: the {name} measurement failed: {lines[-1]}")
            rate = json.loads(proc.stdout.strip().splitlines()[-1])["views_per_s"]
            results[name].append(rate)
            print(
                f"round {round_index + 1}/{args.rounds} {name:9s} {rate:8.0f} views/s",
                file=sys.stderr,
                flush=True,
            )
    median = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"\n{'pipeline':10s} {'views/s (median of ' + str(args.rounds) + ')':>28s}", file=sys.stderr
    )
    for name, value in median.items():
        print(f"{name:10s} {value:28.0f}", file=sys.stderr)
    summary = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "method": args.method,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "channels_last": bool(args.channels_last),
        "compile": bool(args.compile),
        "precision": args.precision,
        "limit_views_per_s": round(median["limit"], 1),
        "ssl_zoo_views_per_s": round(median["ssl_zoo"], 1),
        "reference_views_per_s": round(median["reference"], 1),
        "ratio_to_limit": round(median["ssl_zoo"] / median["limit"], 3),
        "ratio_to_reference": round(median["ssl_zoo"] / median["reference"], 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
