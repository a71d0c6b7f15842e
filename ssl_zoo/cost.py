"""What a run cost: FLOPs of its training steps, energy, and the peak memory.

FLOPs are counted by torch's FlopCounterMode over one whole training step, the first of a fit:
the views made on the fly, the forward of every network the step runs (momentum networks
included), the loss and the backward. Training batches all have one size (drop_last), so the fit's
total is that count times its steps. FlopCounterMode counts matrix multiplies and convolutions,
which dominate; elementwise work (activations, the optimizer's update, the momentum update) is
not counted. Counting one step instead of all keeps the count's overhead to that one step.
"""

from __future__ import annotations

import logging
import resource
import sys
import time

import lightning.pytorch as L
from torch.utils.flop_counter import FlopCounterMode

# codecarbon's CPU modes that read a power meter, as its hardware descriptions name them; its
# other modes (cpu_load, constant) estimate the CPU's power from its TDP.
METERED_CPU = ("Rapl", "Power Gadget", "Powermetrics")

log = logging.getLogger(__name__)


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


class TimeSplit(L.Callback):
    """Wall seconds of a run's training steps (forward, backward, optimizer) and of its monitor
    (the kNN/probe validation epochs); `split(total)` calls the rest I/O: waiting for batches,
    checkpoints, logging and setup. A step's time ends when its hooks return: on a GPU that
    includes waiting for the device only where something synchronises (the logged loss does)."""

    def __init__(self):
        self.training = self.monitor = 0.0
        self._since: dict[str, float] = {}

    def _start(self, part: str) -> None:
        self._since[part] = time.perf_counter()

    def _end(self, part: str) -> None:
        if part in self._since:
            setattr(self, part, getattr(self, part) + time.perf_counter() - self._since.pop(part))

    def on_train_batch_start(self, *args) -> None:
        self._start("training")

    def on_train_batch_end(self, *args) -> None:
        self._end("training")

    def on_validation_start(self, *args) -> None:
        self._start("monitor")

    def on_validation_end(self, *args) -> None:
        self._end("monitor")

    def split(self, total: float) -> dict[str, float]:
        io = max(0.0, total - self.training - self.monitor)
        return {"training": round(self.training, 1), "monitor": round(self.monitor, 1),
                "io": round(io, 1)}  # fmt: skip


def gflops(flops: float) -> float:
    return round(flops / 1e9, 3)


def peak_rss_mb() -> float:
    """This process's peak resident memory. A Flower simulation's clients run in processes of
    their own, which this does not include."""
    unit = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20, 1)


class EnergyMeter:
    """The energy this process's run used, by codecarbon's offline tracker (no network), from
    construction to `stop()`. It tracks the whole machine (codecarbon's tracking_mode
    'machine'), so a Flower simulation's client processes are included, and so is anything
    else the machine runs meanwhile.

    energy_method says how the CPU's share was obtained: 'measured' where its power meter (RAPL,
    powermetrics) was readable, 'estimated' where codecarbon fell back on the CPU's TDP and its
    load; 'none' when off, not installed or failed (the run goes on). codecarbon always reads
    GPUs by NVML and always estimates RAM from its size.
    `tracker_args` are passed to codecarbon's OfflineEmissionsTracker (country_iso_code, pue,
    measure_power_secs, ...); co2_kg depends on the country (default USA)."""

    def __init__(self, enabled: bool = True, tracker_args: dict | None = None):
        self.tracker = None
        if not enabled:
            return
        try:
            from codecarbon import OfflineEmissionsTracker

            # Its warnings about unknown CPUs and fallbacks are summed up by energy_method.
            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            args = {"country_iso_code": "USA", "save_to_file": False, "log_level": "error",
                    "allow_multiple_runs": True, **(tracker_args or {})}  # fmt: skip
            self.tracker = OfflineEmissionsTracker(**args)
            self.tracker.start()
        except Exception as err:  # an optional measurement never stops a run
            self.fail(err)

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()  # a run that raised stops its tracker too (its figures are dropped)

    def fail(self, err: Exception) -> None:
        self.tracker = None
        log.warning("energy not tracked (energy_method: none): %s: %s", type(err).__name__, err)

    def method(self) -> str:
        for hardware in self.tracker._conf.get("hardware", []):  # codecarbon's descriptions
            if hardware.startswith("AppleSiliconChip") or (
                hardware.startswith("CPU") and any(m in hardware for m in METERED_CPU)
            ):
                return "measured"
        return "estimated"

    def kwh(self) -> float | None:
        """The energy used since construction, measured now (None where not tracked): the
        difference of two readings is what happened between them (a federated round)."""
        if self.tracker is None:
            return None
        try:
            self.tracker.flush()  # measures now unless it just did; writes nothing (save_to_file off)
            return self.tracker._total_energy.kWh  # codecarbon's running total
        except Exception as err:
            self.fail(err)
            return None

    def stop(self) -> dict:
        """energy_kwh, energy_method and co2_kg (None where not tracked); stops the tracker."""
        none = {"energy_kwh": None, "energy_method": "none", "co2_kg": None}
        if self.tracker is None:
            return none
        try:
            co2_kg = self.tracker.stop()
            data = self.tracker.final_emissions_data
            result = {"energy_kwh": round(data.energy_consumed, 7), "energy_method": self.method(),
                      "co2_kg": None if co2_kg is None else round(co2_kg, 7)}  # fmt: skip
        except Exception as err:
            self.fail(err)
            return none
        self.tracker = None
        return result


class CostSoFar(L.Callback):
    """Logs what the run has cost so far beside every monitor point: `cost/gflops` (the steps
    taken x one step's count, on every device) and `cost/energy_kwh` (where tracked), so
    metrics.csv says how much compute and energy each kNN figure took (benchmarks/cost.py reads
    the cost of first reaching a kNN target from it). A resumed run's tracker starts from 0:
    `kwh_before` is what the run had spent when its checkpoint was written."""

    def __init__(self, flops: StepFlops, energy: EnergyMeter, kwh_before: float = 0.0):
        self.flops, self.energy, self.kwh_before = flops, energy, kwh_before

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        so_far = {"cost/gflops": gflops(self.flops.total(trainer.global_step) * trainer.world_size)}
        kwh = self.energy.kwh()
        if kwh is not None:
            so_far["cost/energy_kwh"] = self.kwh_before + kwh
        pl_module.log_dict(so_far)  # DDP's copies track no energy; the first process writes
