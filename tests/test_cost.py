"""Cost accounting (ssl_zoo/cost.py): FLOPs of a training step as torch counts them, scaled by
the steps run, the energy tracker, and the fields every summary carries."""

import sys
import threading
import time
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import torch
from conftest import tiny_args
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.data import DataLoader, TensorDataset

from ssl_zoo.cost import EnergyMeter, StepFlops
from ssl_zoo.errors import UserError
from ssl_zoo.jobs.train import main as train_main


class TwoLinears(L.LightningModule):
    def __init__(self, n: int, h: int, k: int):
        super().__init__()
        self.first, self.second = nn.Linear(n, h), nn.Linear(h, k)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.second(self.first(x)).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_step_flops_match_the_matrix_multiply_formula_and_scale_with_steps():
    """x (B x n) -> Linear(n, h) -> Linear(h, k): forward 2Bnh + 2Bhk; backward 2Bhk for the
    second layer's weight, 2Bhk for its input's gradient, 2Bnh for the first layer's weight (its
    input, the data, needs no gradient). The optimizer's elementwise update is not counted."""
    B, n, h, k, batches = 8, 12, 20, 5, 3
    loader = DataLoader(TensorDataset(torch.randn(B * batches, n)), batch_size=B)
    flops = StepFlops()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[flops])  # fmt: skip
    trainer.fit(TwoLinears(n, h, k), loader)
    assert flops.per_step == 4 * B * n * h + 6 * B * h * k
    assert trainer.global_step == 2 * batches
    assert flops.total(trainer.global_step) == 6 * flops.per_step
    assert _get_current_dispatch_mode() is None  # the counter is off after the first step


def test_a_raising_step_leaves_no_counter_on():
    class Raising(TwoLinears):
        def training_step(self, batch, batch_idx):
            raise ValueError("boom")

    flops = StepFlops()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[flops])  # fmt: skip
    loader = DataLoader(TensorDataset(torch.randn(4, 3)), batch_size=2)
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(Raising(3, 4, 2), loader)
    assert _get_current_dispatch_mode() is None and flops.per_step is None


def test_the_energy_tracker_opens_no_connection():
    """codecarbon's offline tracker, given a country, must not reach the network (it would
    otherwise look up the location): every socket connection in the process is recorded."""
    connections, recording = [], [True]

    def audit(event, args):
        if recording[0] and event in ("socket.connect", "socket.getaddrinfo", "urllib.Request"):
            connections.append((event, args))

    sys.addaudithook(audit)  # (a hook cannot be removed: `recording` ends it)
    try:
        meter = EnergyMeter()
        busy = time.time() + 1
        while time.time() < busy:
            torch.randn(256, 256) @ torch.randn(256, 256)
        energy = meter.stop()
    finally:
        recording[0] = False
    assert connections == []
    assert energy["energy_kwh"] > 0 and energy["energy_method"] in ("measured", "estimated")


def test_energy_off_or_failing_leaves_none_and_the_run_finishes(tmp_path, caplog):
    off = train_main(tiny_args(tmp_path / "off", "--track_energy", "false"))
    assert (off["energy_kwh"], off["energy_method"], off["co2_kg"]) == (None, "none", None)
    # A tracker that fails (here: given an option it does not know, it fails when stopped) warns
    # and the run goes on without an energy figure.
    failed = train_main(tiny_args(tmp_path / "failed", "--energy_args", "{no_such_option: 1}"))
    assert failed["energy_method"] == "none" and failed["knn_top1"] is not None
    assert "energy not tracked (energy_method: none): " in caplog.text
    assert (tmp_path / "failed" / "summary.json").is_file()


def test_a_run_that_raises_stops_its_energy_tracker(tmp_path):
    """codecarbon samples power on a timer thread; a run that fails after starting it (here: a
    corrupt checkpoint to resume) must stop it, or a notebook or a comparison that goes on
    keeps a tracker sampling in the background. Only timers started by this run are watched
    (trackers of earlier tests may still be winding down)."""
    before = set(threading.enumerate())
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"truncated")
    with pytest.raises(UserError, match="unreadable"):
        train_main(tiny_args(out, "--resume", "true"))
    started = [t for t in set(threading.enumerate()) - before if isinstance(t, threading.Timer)]
    for timer in started:
        timer.join(timeout=5)  # a cancelled timer ends at once; a running one waits 15 s
    assert not [t for t in started if t.is_alive()]


def test_clients_share_a_step_count_unless_a_broadcast_tells_them_apart():
    """Many clients sampled once each (cross-device) must not each pay for a counted step:
    with nothing broadcast, the same batch size means the same count; fusion's broadcast is
    used differently by each client (it leaves out its own features), so there each counts."""
    from ssl_zoo.federated.algorithms import build_algorithm
    from ssl_zoo.federated.client import step_flops_key

    cfg = SimpleNamespace(
        fed_algorithm="fedavg",
        fed_algorithm_args={},
        fedbn=False,
        fedprox_mu=0.0,
        share_optimizer_state=False,
    )
    stack = build_algorithm(cfg)
    assert step_flops_key(stack, 0, 16, {}) == step_flops_key(stack, 7, 16, {})
    assert step_flops_key(stack, 0, 16, {}) != step_flops_key(stack, 0, 12, {})
    features = {"fusion/features/0": torch.zeros(4, 8), "fusion/features/1": torch.zeros(4, 8)}
    assert step_flops_key(stack, 0, 16, features) != step_flops_key(stack, 1, 16, features)
