"""What counting FLOPs costs a run (ssl_zoo/cost.py): the one training step run under torch's
FlopCounterMode against the steps after it, in the Trainer train.py and every federated client
use, and that difference as a share of a centralized epoch and of a client's round.

    python benchmarks/cost_overhead.py [--method simclr] [--backbone timm:resnet18]
                                       [--batch_size 256] [--steps 8]
                                       [--dataset synthetic | imagefolder --data_dir DIR]

A fit's first step also pays start-up work (allocations, kernel choice), most of it only in the
first fit of a process. So one uncounted fit warms the process up and is thrown away; then fits
with and without counting alternate, `--repeats` times each: overhead = median first step counted
- median first step uncounted, against (steps per epoch x a median later step). Prints a table and
ends with one JSON line. (Until 2026-12-03 the warm-up fit was missing and the counted fit ran
first, so the process's start-up was charged to counting: +0.9 s measured that way against
+0.15 s warmed up, on the same AMD EPYC.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning.pytorch as L  # noqa: E402

from benchmarks.cli import at_least, method_name  # noqa: E402
from ssl_zoo.components import build_components  # noqa: E402
from ssl_zoo.config import TrainConfig  # noqa: E402
from ssl_zoo.cost import StepFlops  # noqa: E402
from ssl_zoo.data import SSLDataModule  # noqa: E402


class StepTimes(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.tic = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.tic)


def step_times(cfg: TrainConfig, steps: int, count: bool) -> tuple[list[float], int | None]:
    L.seed_everything(0, verbose=False)
    parts = build_components(cfg)
    datamodule = SSLDataModule(parts.splits, parts.views, parts.normalize, cfg.batch_size, 0)
    # The timer's hooks run first: the timed first step holds the whole counted step.
    timer, flops = StepTimes(), StepFlops()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[timer, flops] if count else [timer])  # fmt: skip
    trainer.fit(parts.model, datamodule=datamodule)
    return timer.times, flops.per_step if count else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", type=method_name, default="simclr")
    parser.add_argument("--backbone", default="timm:resnet18")
    parser.add_argument("--batch_size", type=at_least(1), default=256)
    # The first two steps pay start-up work; the median is taken over the steps after them.
    parser.add_argument("--steps", type=at_least(3), default=8)
    parser.add_argument("--repeats", type=at_least(1), default=2)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--epoch_images", type=at_least(1), default=10_000,
                        help="images of the epoch the overhead is a share of (cifar10-12k: 10,000)")  # fmt: skip
    args = parser.parse_args()
    cfg = TrainConfig(method=args.method, backbone=args.backbone, batch_size=args.batch_size,
                      dataset=args.dataset, data_dir=args.data_dir,
                      train_samples=args.batch_size * (args.steps + 1), test_samples=10)  # fmt: skip
    step_times(cfg, args.steps, count=False)  # the process's start-up, charged to neither
    first_steps: dict[bool, list[float]] = {True: [], False: []}
    later: list[float] = []
    per_step = 0
    for _ in range(args.repeats):
        for count in (True, False):
            times, flops = step_times(cfg, args.steps, count)
            per_step = flops or per_step
            first_steps[count].append(times[0])
            later += times[2:]
    step = statistics.median(later)
    counted, plain = (statistics.median(first_steps[count]) for count in (True, False))
    extra = counted - plain
    epoch = args.epoch_images // args.batch_size * step
    rows = [
        ("first step, FLOPs counted (s, median)", counted),
        ("first step, not counted (s, median)", plain),
        ("median later step (s)", step),
        ("counting costs (s)", extra),
        (f"share of an epoch of {args.epoch_images} images (%)", 100 * extra / epoch),
        ("GFLOPs per step", per_step / 1e9),
    ]
    print(f"{args.method}, {args.backbone}, batch {args.batch_size}, CPU")
    for name, value in rows:
        print(f"  {name:<42} {value:10.3f}")
    print(json.dumps({"method": args.method, "backbone": args.backbone,
                      "batch_size": args.batch_size, "first_step_counted_s": round(counted, 3),
                      "first_step_plain_s": round(plain, 3), "step_s": round(step, 3),
                      "overhead_s": round(extra, 3),
                      "overhead_pct_of_epoch": round(100 * extra / epoch, 3),
                      "gflops_per_step": round(per_step / 1e9, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
