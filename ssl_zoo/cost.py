"""What a run cost in compute and memory: FLOPs of its training steps and the peak memory.

FLOPs are counted by torch's FlopCounterMode over one whole training step, the first of a fit:
the views made on the fly, the forward of every network the step runs (momentum networks
included), the loss and the backward. Training batches all have one size (drop_last), so the fit's
total is that count times its steps. FlopCounterMode counts matrix multiplies and convolutions,
which dominate; elementwise work (activations, the optimizer's update, the momentum update) is
not counted. Counting one step instead of all keeps the count's overhead to that one step.
"""

from __future__ import annotations

import resource
import sys

import lightning.pytorch as L
from torch.utils.flop_counter import FlopCounterMode


class StepFlops(L.Callback):
    """Counts the FLOPs of the first training step of a fit; `total(steps)` scales it. Given
    `per_step` (a count of the same step made earlier), it counts nothing."""

    def __init__(self, per_step: int | None = None):
        self.per_step = per_step
        self._counter: FlopCounterMode | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.per_step is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._counter is not None:
            self._stop()
            self.per_step = self._counter.get_total_flops()
            self._counter = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._counter is not None:  # a step that raised must not leave the counter on
            self._stop()
            self._counter = None

    def _stop(self) -> None:
        self._counter.__exit__(None, None, None)

    def total(self, steps: int) -> int:
        return (self.per_step or 0) * steps


def gflops(flops: float) -> float:
    return round(flops / 1e9, 3)


def peak_rss_mb() -> float:
    """This process's peak resident memory. A Flower simulation's clients run in processes of
    their own, which this does not include."""
    unit = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20, 1)
