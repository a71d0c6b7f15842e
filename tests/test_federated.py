"""Federated SSL: partitions, FedAvg, FedBN, schedules, failures, resume, engines, bad configs."""

import contextlib
import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, last_json_line, run_script

from ssl_zoo.config import parse_config
from ssl_zoo.cost import StepFlops
from ssl_zoo.curves import column
from ssl_zoo.errors import UserError, run_main
from ssl_zoo.federated.aggregate import WeightedMean, fedavg, from_wire, state_bytes, to_wire
from ssl_zoo.federated.client import client_batch_size, fit_client, load_private
from ssl_zoo.federated.config import FedConfig
from ssl_zoo.federated.federation import build_federation
from ssl_zoo.federated.partition import class_histograms, partition, plot_histograms
from ssl_zoo.federated.records import to_record, to_state
from ssl_zoo.jobs.federate import main as federate_main
from ssl_zoo.methods.base import ScheduleWindow, passed_in

TINY = ["--dataset", "synthetic", "--train_samples", "96", "--test_samples", "40",
        "--backbone", "timm:resnet10t", "--batch_size", "16", "--num_workers", "0", "--knn_k", "10",
        "--method", "simsiam", "--num_clients", "2", "--rounds", "2", "--partition", "iid",
        "--optimizer", "adamw", "--lr", "1e-3"]  # fmt: skip


def read_rounds(run_dir):
    with (run_dir / "rounds.csv").open() as f:
        return list(csv.DictReader(f))


# ---- partitions -------------------------------------------------------------------------------
LABELS = np.repeat(np.arange(10), 100)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partitions_are_deterministic_and_cover_every_sample_once(scheme):
    a = partition(LABELS, 7, scheme, alpha=0.3, classes_per_client=2, seed=5)
    b = partition(LABELS, 7, scheme, alpha=0.3, classes_per_client=2, seed=5)
    c = partition(LABELS, 7, scheme, alpha=0.3, classes_per_client=2, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(len(LABELS)))


def max_class_share(parts):
    hist = class_histograms(LABELS, parts, 10)
    hist = hist[hist.sum(1) > 0]
    return float((hist.max(1) / hist.sum(1)).mean())


def test_small_alpha_dirichlet_is_skewed_and_iid_is_not():
    assert max_class_share(partition(LABELS, 10, "dirichlet", alpha=0.1)) > 0.6
    assert max_class_share(partition(LABELS, 10, "dirichlet", alpha=100)) < 0.25
    assert max_class_share(partition(LABELS, 10, "iid")) < 0.25


def test_shards_give_each_client_about_k_classes():
    hist = class_histograms(LABELS, partition(LABELS, 10, "shards", classes_per_client=2), 10)
    assert ((hist > 0).sum(1) <= 3).all() and (hist > 0).sum(1).mean() <= 2.5


@pytest.mark.parametrize("clients", [5, 10_000])
def test_partition_plot_stays_a_picture_at_any_client_count(tmp_path, clients):
    """A bar per client made a 10,000-client plot 500,000 px wide and took 83 s."""
    from PIL import Image

    labels = np.repeat(np.arange(10), 2_000)
    hist = class_histograms(labels, partition(labels, clients, "dirichlet", alpha=0.5), 10)
    plot_histograms(hist, tmp_path / "partition.png", f"{clients} clients")
    width, height = Image.open(tmp_path / "partition.png").size
    assert 400 <= width <= 1_200 and height == 350


# ---- aggregation ------------------------------------------------------------------------------
def test_fedavg_is_the_sample_weighted_mean_of_parameters_and_batchnorm_buffers():
    bn_a, bn_b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        bn_a.weight.fill_(1.0), bn_b.weight.fill_(4.0)
        bn_a.running_mean.fill_(2.0), bn_b.running_mean.fill_(-1.0)
    bn_a.num_batches_tracked.fill_(3), bn_b.num_batches_tracked.fill_(7)
    averaged = fedavg([bn_a.state_dict(), bn_b.state_dict()], [10, 30])
    assert torch.allclose(averaged["weight"], torch.full((3,), (1.0 * 10 + 4.0 * 30) / 40))
    assert torch.allclose(averaged["running_mean"], torch.full((3,), (2.0 * 10 - 1.0 * 30) / 40))
    assert averaged["num_batches_tracked"].item() == 7 and averaged["weight"].dtype == torch.float32
    streaming = WeightedMean()
    streaming.add(bn_a.state_dict(), 10)
    streaming.add(bn_b.state_dict(), 30)
    assert all(torch.equal(streaming.result()[k], averaged[k]) for k in averaged)
    # The running sum is accumulated in place: it must never alias a client's tensors.
    client = {"w": torch.ones(2, dtype=torch.float64)}
    streaming = WeightedMean()
    streaming.add(client, 3.0)
    streaming.add({"w": torch.zeros(2, dtype=torch.float64)}, 1.0)
    assert torch.equal(client["w"], torch.ones(2, dtype=torch.float64))
    assert torch.allclose(streaming.result()["w"], torch.full((2,), 0.75, dtype=torch.float64))


def tiny_federation(*extra):
    cfg = parse_config(FedConfig, [*TINY, *extra], prog="test")
    return cfg, *build_federation(cfg)


def test_momentum_methods_aggregate_online_predictor_and_target():
    cfg, parts, clients, algorithm = tiny_federation("--method", "byol", "--rounds", "1")
    state = parts.model.state_dict()
    updates = []
    for client in range(2):
        images = torch.utils.data.Subset(parts.splits.train, clients[client].tolist())
        updates.append(fit_client(parts.model, state, {}, algorithm, images, parts.views, parts.normalize, 32,
                                  cfg, 0, client))  # fmt: skip
    averaged = fedavg([u.state for u in updates], [u.num_examples for u in updates])
    assert set(averaged) == set(state)
    for prefix in ("backbone.", "prediction_head.", "target_backbone.", "target_projection_head."):
        key = next(k for k in averaged if k.startswith(prefix) and averaged[k].is_floating_point())
        a, b = updates[0], updates[1]
        expected = (a.state[key] * a.num_examples + b.state[key] * b.num_examples) / (
            a.num_examples + b.num_examples
        )
        assert torch.allclose(averaged[key], expected, atol=1e-6), key
    # A client keeps no optimizer state (momentum buffers) past its round.
    optimizers = parts.model.trainer.optimizers
    assert optimizers and not any(o.state for o in optimizers)


def test_fedbn_keeps_batchnorm_local_and_schedule_follows_the_global_round():
    cfg, parts, clients, algorithm = tiny_federation("--fedbn", "true")
    model = parts.model
    local = algorithm.local_keys(model)
    bn = torch.nn.modules.batchnorm._BatchNorm
    assert local and all(isinstance(model.get_submodule(k.rsplit(".", 1)[0]), bn) for k in local)
    images = torch.utils.data.Subset(parts.splits.train, clients[0].tolist())
    update = fit_client(model, model.state_dict(), {}, algorithm, images, parts.views, parts.normalize, 32,
                        cfg, 1, 0)  # fmt: skip
    # Each of the 2 clients trains at batch 16 x its half of the images = 8, so a local epoch
    # takes a centralized epoch's steps (96 // 16); round 2 of 2 continues the schedule.
    steps = 96 // 16
    window = passed_in(model.trainer, ScheduleWindow)
    assert len(images) // 8 == steps and (window.done, window.total) == (steps, 2 * steps)
    assert set(local) <= set(update.private)
    # Another global model (the projector's BatchNorm, local and not uploaded, included).
    other = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(other)
    load_private(model, update.private)
    key = next(k for k in local if k.endswith("running_mean"))
    assert torch.equal(model.state_dict()[key], update.private[key])  # the client's own BN


def test_schedule_runs_across_rounds_or_restarts_every_round():
    """Round 1 of 2 ends halfway down the cosine of one schedule across the federation; with
    restart_schedule_every_round (FEDn's example) it runs the whole cosine, ending near 0."""
    ends = {}
    for restart in ("false", "true"):
        cfg, parts, clients, algorithm = tiny_federation(
            "--restart_schedule_every_round", restart, "--lr", "0.1"
        )
        images = torch.utils.data.Subset(parts.splits.train, clients[0].tolist())
        fit_client(parts.model, parts.model.state_dict(), {}, algorithm, images, parts.views,
                   parts.normalize, 32, cfg, 0, 0)  # fmt: skip
        ends[restart] = parts.model.trainer.optimizers[0].param_groups[0]["lr"]
    steps = 96 // 16
    assert ends["false"] == pytest.approx(
        0.1 * 0.5 * (1 + math.cos(math.pi * steps / (2 * steps))), rel=0.05
    )
    assert ends["true"] < 0.01


@pytest.mark.parametrize(("local_epochs", "steps"), [("0.5", 3), ("1", 6), ("1.5", 9)])
def test_a_client_trains_local_epochs_worth_of_steps_fractions_included(local_epochs, steps):
    """Half an epoch is half the steps (on a fresh shuffle), as exact as a whole epoch; past
    an epoch's end the fit goes on into the next."""
    cfg, parts, clients, algorithm = tiny_federation("--local_epochs", local_epochs)
    images = torch.utils.data.Subset(parts.splits.train, clients[0].tolist())  # 48 at batch 8
    update = fit_client(parts.model, parts.model.state_dict(), {}, algorithm, images, parts.views,
                        parts.normalize, 32, cfg, 0, 0)  # fmt: skip
    assert parts.model.trainer.global_step == steps
    counter = next(c for c in parts.model.trainer.callbacks if isinstance(c, StepFlops))
    assert update.flops == steps * counter.per_step > 0


def test_shared_optimizer_state_continues_adamw_across_rounds(tmp_path):
    """With --share_optimizer_state a client's AdamW starts round 2 from the mean of round 1's
    clients' moments: the step count the server holds after 2 rounds of 6 steps is 12, not 6, and
    every trainable parameter's two moments travel (bytes about triple)."""
    plain = federate_main([*TINY, "--method", "simclr", "--output_dir", str(tmp_path / "plain")])
    out = tmp_path / "shared"
    shared = federate_main([*TINY, "--method", "simclr", "--share_optimizer_state",
                            "--output_dir", str(out)])  # fmt: skip
    server = torch.load(out / "fed_state.pt", weights_only=False)["algorithm"]
    carried = server["shared_optimizer_state"]
    mean = {k: v / carried["clients"] for k, v in carried["sum"].items()}  # round 2's, not sent yet
    steps = {float(v) for k, v in mean.items() if k.endswith(".step")}
    assert steps == {12.0}  # 48 images at batch 8, 2 rounds
    cfg, parts, _, _ = tiny_federation("--method", "simclr")
    trainable = sum(1 for p in parts.model.parameters() if p.requires_grad)
    assert sum(k.endswith(".exp_avg_sq") for k in mean) == trainable
    assert 2.5 < shared["bytes_up"] / plain["bytes_up"] < 3.1


@pytest.mark.parametrize(
    ("args", "images", "expected"),
    [
        ([], 2000, 51),  # IID over 5 clients: batch_size / 5
        ([], 200, 5),  # a small non-IID client: its share of batch_size
        (["--fraction_fit", "0.4"], 2000, 128),  # 2 of 5 clients a round train on 4000 images
        ([], 3, 2),  # never under 2 (a contrastive batch, BatchNorm)
        (["--client_batch_size", "64"], 2000, 64),  # fixed, as in FedAvg's paper
        (["--client_batch_size", "64"], 40, 40),
    ],
)
def test_client_batch_is_its_share_of_a_centralized_batch(args, images, expected):
    cfg = parse_config(FedConfig, ["--batch_size", "256", "--num_clients", "5", "--min_clients", "1",
                                   *args], prog="test")  # fmt: skip
    assert client_batch_size(cfg, images, train_images=10_000) == expected


# ---- end to end -------------------------------------------------------------------------------
def test_embedded_run_writes_rounds_partition_and_summary(tmp_path):
    out = tmp_path / "run"
    proc = run_script("federate.py", *TINY, "--output_dir", str(out), "--partition", "dirichlet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json_line(proc.stdout)
    keys = {"method", "engine", "partition", "num_clients", "rounds", "knn_top1_init",
            "knn_top1_per_round", "bytes_up", "bytes_down", "gflops", "peak_rss_mb", "energy_kwh",
            "energy_method", "run_dir", "seconds"}  # fmt: skip
    assert keys <= set(summary) and len(summary["knn_top1_per_round"]) == 2
    assert summary["gflops"] > 0 and summary["peak_rss_mb"] > 100
    assert summary["energy_kwh"] > 0 and summary["energy_method"] in ("measured", "estimated")
    rows = read_rounds(out)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert int(rows[1]["bytes_up"]) == int(rows[1]["bytes_down"]) > 1_000_000
    # Each round's energy; together less than the run's, which also builds, evaluates round 0
    # and saves.
    per_round = [float(r["energy_kwh"]) for r in rows[1:]]
    assert min(per_round) > 0 and sum(per_round) < summary["energy_kwh"]
    # A client's steps take part of its fit; the rest is its fixed cost (Trainer, data, state).
    for r in rows[1:]:
        assert 0 < float(r["client_step_seconds"]) < float(r["train_seconds"]) / int(r["clients"])
    for name in ("partition.csv", "partition.png", "fed_state.pt", "backbone.pt", "summary.json",
                 "rounds.png"):  # fmt: skip
        assert (out / name).is_file(), name
    # rounds.png: kNN from round 0 (initialisation), the clients' loss from round 1.
    assert column(rows, "round", "knn_top1") == ([0, 1, 2], [float(r["knn_top1"]) for r in rows])
    assert column(rows, "round", "train_loss")[0] == [1, 2]
    with (out / "partition.csv").open() as f:
        assert sum(int(r["images"]) for r in csv.DictReader(f)) == 96


def test_clients_on_two_devices_split_their_batch_and_the_first_process_writes(tmp_path):
    """--devices 2: each client's fit is Lightning DDP over two CPU processes (gloo), its batch
    split between them, so it takes one device's steps and does one device's arithmetic. The
    second process runs the whole loop but reports and writes nothing, and a resume continues
    both."""
    one = federate_main([*TINY, "--output_dir", str(tmp_path / "one")])
    out = tmp_path / "two"
    proc = run_script("federate.py", *TINY, "--output_dir", str(out), "--accelerator", "cpu",
                      "--devices", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, lines  # the second process reports nothing
    two = json.loads(lines[0])
    assert json.loads((out / "summary.json").read_text()) == two
    assert (two["devices_per_client"], two["rounds"]) == (2, 2)
    # 4 images a device a step instead of 8 on one: the same FLOPs in all, and as many steps.
    assert two["gflops"] == pytest.approx(one["gflops"], rel=1e-3)
    assert [r["examples"] for r in read_rounds(out)] == [
        r["examples"] for r in read_rounds(tmp_path / "one")
    ]
    assert two["knn_top1_init"] == one["knn_top1_init"]  # the same initial model, evaluated once
    proc = run_script("federate.py", *TINY, "--output_dir", str(out), "--accelerator", "cpu",
                      "--devices", "2", "--rounds", "3", "--resume")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = last_json_line(proc.stdout)
    assert resumed["knn_top1_per_round"][:2] == two["knn_top1_per_round"]
    assert [int(r["round"]) for r in read_rounds(out)] == [0, 1, 2, 3]


def test_a_failing_client_is_dropped_and_too_few_fail_the_run(tmp_path, caplog):
    """A very skewed Dirichlet split leaves some clients with fewer than two images: their local
    training fails, the round goes on with the others unless fewer than min_clients remain."""
    args = [
        *TINY,
        "--partition",
        "dirichlet",
        "--alpha",
        "0.05",
        "--num_clients",
        "12",
        "--rounds",
        "1",
    ]
    cfg, parts, clients, _ = tiny_federation(*args[len(TINY) :])
    starved = [c for c, idx in enumerate(clients) if len(idx) < 2]
    assert 0 < len(starved) < 6, [len(c) for c in clients]
    summary = federate_main([*args, "--output_dir", str(tmp_path / "ok"), "--min_clients", "2"])
    rows = read_rounds(tmp_path / "ok")
    assert int(rows[1]["failed"]) == len(starved) and int(rows[1]["clients"]) == 12 - len(starved)
    assert f"client {starved[0]} failed in round 1 and is dropped" in caplog.text
    assert summary["knn_top1"] is not None
    with pytest.raises(UserError, match="clients trained .*last good checkpoint \\(round 0\\)"):
        federate_main([*args, "--output_dir", str(tmp_path / "bad"), "--min_clients", "12"])
    assert (tmp_path / "bad" / "fed_state.pt").is_file()


@pytest.mark.parametrize(
    ("lr", "message"),
    [
        ("1e30", r"only 0 clients trained .*last good checkpoint \(round 0\)"),
        ("1e6", r"training diverged \(seen by the monitor\): the backbone's features are not"),
    ],
)
def test_diverging_clients_are_dropped_and_never_averaged(tmp_path, caplog, lr, message):
    """A client whose loss turns NaN fails like a raising client: nothing of it is averaged, so
    with every client diverging the run stops at round 1 and keeps round 0's checkpoint. Finite
    losses whose averaged model overflows stop at the server's monitor, also in one line."""
    out = tmp_path / "run"
    # Three steps per client (batch 16 of 48 images): at lr 1e6 the losses stay finite that long.
    with pytest.raises(UserError, match=message):
        federate_main([*TINY, "--lr", lr, "--client_batch_size", "16", "--output_dir", str(out)])
    if lr == "1e30":
        assert "client 0 failed in round 1 and is dropped: training diverged" in caplog.text
    assert [r["round"] for r in read_rounds(out)] == ["0"]
    assert torch.load(out / "fed_state.pt", weights_only=False)["round"] == 0
    assert not (out / "summary.json").exists()


def test_clients_silent_past_the_round_timeout_are_failed_and_the_checkpoint_kept(tmp_path, caplog):
    """Flower's server waits --round_timeout seconds for a round's replies: a client still
    training then counts as failed, as a SuperNode that went silent would. Here no client can
    reply within 10 ms, so round 1 fails in one line and round 0's checkpoint stays."""
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"round 1: only 0 clients trained .*\(round 0\)"):
        federate_main([*TINY, "--engine", "flower", "--round_timeout", "0.01",
                       "--output_dir", str(out)])  # fmt: skip
    assert caplog.text.count("no reply within --round_timeout 0.01 s") == 2  # both clients
    assert torch.load(out / "fed_state.pt", weights_only=False)["round"] == 0
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("engine", ["embedded", "flower"])
def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, engine):
    """FedAvgM: the server's momentum must survive the kill as well; FedBN: so must each client's
    own BatchNorm layers, which the embedded engine checkpoints and Flower's clients keep on
    their own disk."""
    # Two rounds: the kill comes after round 1, whose server momentum round 2 must step with.
    args = [*TINY, "--server_lr", "1.5", "--server_momentum", "0.5", "--fedbn", "--engine", engine]
    full = federate_main([*args, "--output_dir", str(tmp_path / "full")])
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "federate.py"), *args, "--output_dir", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "rounds.csv").exists() and len(read_rounds(out)) >= 2:  # round 1 is done
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait()
    assert len(read_rounds(out)) < 3, "the run finished before it could be killed"
    resumed = federate_main([*args, "--output_dir", str(out), "--resume"])
    assert resumed["knn_top1_per_round"] == full["knn_top1_per_round"]
    assert resumed["knn_top1_init"] == full["knn_top1_init"]
    assert full["epochs_equivalent"] == pytest.approx(2.0)  # 2 rounds x 1 epoch x all images
    a, b = (torch.load(d / "fed_state.pt", weights_only=False) for d in (tmp_path / "full", out))
    assert a["server"]["v"] and all(
        torch.equal(a["server"]["v"][k], b["server"]["v"][k]) for k in a["server"]["v"]
    )
    assert all(torch.equal(a["global_state"][k], b["global_state"][k]) for k in a["global_state"])
    if engine == "flower":
        return  # what follows is the server's own resume, the same for both engines
    # Killed before round 1 ended: the checkpoint holds no server state yet; resume still runs.
    early = torch.load(out / "fed_state.pt", weights_only=False)
    early.update(round=0, rows=early["rows"][:1], server={}, elapsed=0.0, private={}, trained={})
    early["global_state"] = {k: v.clone() for k, v in a["global_state"].items()}
    torch.save(early, out / "fed_state.pt")
    (out / "summary.json").unlink()
    again = federate_main([*args, "--output_dir", str(out), "--resume"])
    assert len(again["knn_top1_per_round"]) == 2 and again["rounds"] == 2


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "algorithm, method",
    # FedEMA's run also covers plain FedAvg's path (its server rule is FedAvg's): the default
    # suite runs it and fusion; the others are slow (about 35 s each).
    [pytest.param("fedavg", "simsiam", marks=SLOW), ("fedema", "byol"), ("fusion", "simclr"),
     pytest.param("fedu", "byol", marks=SLOW), pytest.param("ldawa", "simsiam", marks=SLOW),
     pytest.param("fedx", "simclr", marks=SLOW),
     pytest.param("fedavg --share_optimizer_state", "simclr", marks=SLOW)],
)  # fmt: skip
def test_flower_simulation_matches_the_embedded_loop(tmp_path, algorithm, method):
    """Every algorithm's hooks run through both engines: private client state (FedEMA), payloads
    both ways (fusion's features, the shared optimizer state), a loss term (FedX), the server
    rule (L-DAWA)."""
    args = [*TINY, "--method", method, "--fed_algorithm", *algorithm.split()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in Flower's actors (one CPU each): same float reduction order
    try:
        embedded = federate_main([*args, "--output_dir", str(tmp_path / "embedded")])
    finally:
        torch.set_num_threads(threads)
    flower = federate_main([*args, "--output_dir", str(tmp_path / "flower"), "--engine", "flower"])
    assert flower["engine"] == "flower" and len(flower["knn_top1_per_round"]) == 2
    a = torch.load(tmp_path / "embedded" / "fed_state.pt", weights_only=False)["global_state"]
    b = torch.load(tmp_path / "flower" / "fed_state.pt", weights_only=False)["global_state"]
    assert set(a) == set(b)
    # Same seeds, data order, client code and aggregation: bit for bit the same weights. (With
    # other thread counts, float reductions differ in order: ~1e-3 apart after 2 AdamW rounds.)
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst == 0.0, worst
    assert embedded["knn_top1_per_round"] == flower["knn_top1_per_round"]
    assert (
        embedded["bytes_up"] == flower["bytes_up"]
        and embedded["bytes_down"] == flower["bytes_down"]
    )
    # Both count the clients' training FLOPs the same way: rounds.csv per round, summed.
    per_round = [float(r["gflops"]) for r in read_rounds(tmp_path / "flower")[1:]]
    assert flower["gflops"] == embedded["gflops"] == pytest.approx(sum(per_round))
    assert min(per_round) > 0
    # A client's step is counted once and reused, except where what it runs changed: fusion's
    # clients take the others' features as extra negatives from round 2 on.
    assert per_round[1] > per_round[0] if algorithm == "fusion" else per_round[1] == per_round[0]


def test_clients_dropping_out_at_random_are_counted_and_the_rounds_go_on(tmp_path):
    """30% of client fits fail (--client_dropout): every round still ends with those that
    trained, rounds.csv counts each failure, and both engines lose the same clients and end with
    the same global weights (the survivors train as they would have)."""
    args = [*TINY, "--num_clients", "5", "--rounds", "3", "--client_dropout", "0.3"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in Flower's actors: same float reduction order
    try:
        embedded = federate_main([*args, "--output_dir", str(tmp_path / "embedded")])
    finally:
        torch.set_num_threads(threads)
    flower = federate_main([*args, "--output_dir", str(tmp_path / "flower"), "--engine", "flower"])
    assert len(embedded["knn_top1_per_round"]) == len(flower["knn_top1_per_round"]) == 3
    counts = {}
    for engine in ("embedded", "flower"):
        rows = read_rounds(tmp_path / engine)[1:]
        counts[engine] = [(int(r["clients"]), int(r["failed"])) for r in rows]
        assert all(trained + failed == 5 for trained, failed in counts[engine]), counts
    failures = sum(failed for _, failed in counts["embedded"])
    assert 1 <= failures <= 8, counts  # 30% of 15 fits: 4.5, two standard deviations 3.5
    assert counts["embedded"] == counts["flower"]
    a, b = (torch.load(tmp_path / e / "fed_state.pt", weights_only=False)["global_state"]
            for e in ("embedded", "flower"))  # fmt: skip
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert embedded["bytes_down"] == flower["bytes_down"]  # the dropped were sent the model


def test_flower_records_hold_the_same_bytes_as_flowers_own_and_round_trip():
    from flwr.app import ArrayRecord

    state = {
        "conv": torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last),
        "bias": torch.randn(4, dtype=torch.float64),
        "count": torch.tensor(7),  # 0-d, as BatchNorm's num_batches_tracked
        "empty": torch.zeros(0, 5),
        "half": torch.randn(2, 2).half(),
        "transposed": torch.randn(3, 5).t(),  # np.save writes it in Fortran order
    }
    ours, flowers = to_record(state), ArrayRecord(state)
    for key in set(state) - {"transposed"}:
        assert ours[key].data == flowers[key].data, key  # a Flower peer reads ours as its own
        assert (ours[key].dtype, ours[key].shape) == (flowers[key].dtype, flowers[key].shape)
    for record in (ours, flowers):
        back = to_state(record)
        for key, tensor in state.items():
            assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
            assert torch.equal(back[key], tensor), key
    back["conv"].add_(1)  # writable, and not a view into the record's bytes
    assert torch.equal(to_state(ours)["conv"], state["conv"])
    # numpy has no bfloat16; --update_dtype bfloat16 sends its bits and gets them back.
    brain = {"w": torch.randn(3, 4).bfloat16(), "scalar": torch.tensor(2.5).bfloat16()}
    back = to_state(to_record(brain))
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], brain[k]) for k in brain)


def test_half_precision_on_the_wire_halves_the_bytes_and_computes_in_float32(tmp_path):
    """--update_dtype float16: the global model and the clients' weights travel in float16
    (bytes counted as sent), the server keeps and sums float32 weights."""
    state = {"w": torch.randn(4, 4), "big": torch.full((2,), 1e6), "steps": torch.tensor(3)}
    wire = to_wire(state, "bfloat16")
    assert wire["w"].dtype == torch.bfloat16 and wire["steps"].dtype == torch.int64
    assert state_bytes(wire) == state_bytes(state) // 2 + 4  # the int64 scalar stays 8 bytes
    back = from_wire(wire, state)
    assert back["w"].dtype == torch.float32 and torch.allclose(back["w"], state["w"], rtol=1e-2)
    with pytest.raises(UserError, match="big overflows float16 on the wire"):
        to_wire(state, "float16")
    summary = federate_main([*TINY, "--rounds", "1", "--update_dtype", "float16",
                             "--output_dir", str(tmp_path)])  # fmt: skip
    saved = torch.load(tmp_path / "fed_state.pt", weights_only=False)["global_state"]
    assert all(v.dtype != torch.float16 for v in saved.values())
    floats = sum(v.numel() for v in saved.values() if v.is_floating_point())
    others = state_bytes({k: v for k, v in saved.items() if not v.is_floating_point()})
    rows = read_rounds(tmp_path)[1:]
    clients = int(rows[0]["clients"])
    assert int(rows[0]["bytes_down"]) == clients * (2 * floats + others)
    assert int(rows[0]["bytes_up"]) == clients * (2 * floats + others)
    assert np.isfinite(summary["knn_top1"])


BAD = [
    (["--alpha", "0"], "alpha must be > 0 (got 0.0)"),
    (["--num_clients", "500"], "num_clients (500) is more than the samples (96)"),
    (["--fraction_fit", "0"], "fraction_fit must be in (0, 1] (got 0.0)"),
    (["--engine", "spark"], "unknown engine 'spark'; valid choices: embedded, flower"),
    (["--partition", "pathological"], "unknown partition 'pathological'; valid choices: dirichlet, iid, shards"),
    (["--compare_only", "fed*"], "--compare_only needs --compare FILE"),
    (["--client_dropout", "1"], "client_dropout must be in [0, 1) (got 1.0)"),
    (["--update_dtype", "int8"], "unknown update_dtype 'int8'; valid choices: float32, float16, bfloat16"),
    (["--client_batch_size", "1"], "client_batch_size must be >= 2 (got 1)"),
    (["--local_epochs", "0"], "local_epochs must be > 0 (got 0.0)"),
    (["--round_timeout", "0", "--engine", "flower"], "round_timeout must be > 0 seconds (got 0.0)"),
    (["--round_timeout", "30"], "round_timeout needs --engine flower"),
    (["--rounds", "x"], 'Parser key "rounds": Expected a <class \'int\'>. Got value: x'),
    (["--test_samples", "0"], "test_samples must be >= 1 (got 0)"),
    (["--devices", "0"], "devices must be >= 1 (got 0)"),
    (["--devices", "2", "--engine", "flower"], "devices > 1 needs the embedded engine and one run"),
    (["--devices", "9", "--client_batch_size", "16"], "client_batch_size 16 over 9 devices leaves fewer than 2 images a device"),
    (["--fed_algorithm", "fedprox"], "unknown fed_algorithm 'fedprox'; valid choices: fedavg, fedema, fedu, fedx, fusion, ldawa"),
    (["--fedema_tau", "0.5"], "--fedema_tau is now --fed_algorithm_args.tau"),
    (["--fed_algorithm", "fedema", "--fed_algorithm_args", "{mu: 1}"], "unknown fed_algorithm_args mu for fedema; valid: tau"),
    (["--fed_algorithm", "fedema", "--fed_algorithm_args.tau", "0"], "fedema's tau must be > 0 (got 0)"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD, ids=[a[0] for a, _ in BAD])
def test_bad_config_is_one_line_and_nonzero(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(federate_main, [*TINY, *args, "--output_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in err, err


def test_comparison_writes_csv_markdown_and_plot(tmp_path):
    """Also the quick regeneration of a comparison's published tables."""
    out = tmp_path / "cmp"
    at = TINY.index("--partition")
    tiny = TINY[:at] + TINY[at + 2 :]  # each run names its split
    spec = tmp_path / "compare.yaml"
    page = tmp_path / "page.md"
    spec.write_text(
        f"publish: {{{page}: [runs, by-split, by-epoch]}}\n"
        "base: configs/federated/quickstart.yaml\n"
        "runs:\n"
        "  - {name: fed-iid, partition: iid}\n"
        "  - {name: fed-shards, partition: shards, classes_per_client: 2}\n"
        "  - {name: central, centralized: true}\n"
    )
    page.write_text("# results\n<!-- compare table -->\n<!-- /compare table -->\n")
    with pytest.raises(UserError, match="lacks the markers <!-- compare-by-split table -->"):
        federate_main(["--compare", str(spec), "--output_dir", str(out)])  # before any run
    assert not out.exists()
    tables = "".join(f"<!-- compare{k} table -->\nold\n<!-- /compare{k} table -->\n"
                     for k in ("", "-by-split", "-by-epoch"))  # fmt: skip
    page.write_text(f"# results\n{tables}after\n")
    summary = federate_main(["--compare", str(spec), "--output_dir", str(out), *tiny,
                             "--rounds", "2"])  # fmt: skip
    published = page.read_text()
    assert "old" not in published and published.endswith("after\n")
    # comparison.md holds the three views, each as it was published between its markers
    between = re.findall(r"<!-- compare[a-z-]* table -->\n(.*?)<!-- /", published, flags=re.S)
    assert len(between) == 3 and (out / "comparison.md").read_text() == "\n".join(between)
    assert "`python federate.py --compare " in published and str(date.today()) in published
    assert (
        "| method | algorithm | kNN init | IID | 2-class shards | centralized | IID - centralized |"
        in published
    )
    federated, central = summary["runs"][0], summary["runs"][2]
    gap = f"{100 * (federated['knn_top1'] - central['knn_top1']):+.1f}"
    assert f"| {central['knn_top1']:.3f} | {gap} |" in published  # by split, beside centralized
    assert (
        f"| fed-iid | {federated_knn_after(out, 'fed-iid', 1):.3f} | {federated['knn_top1']:.3f} | {gap} |"
        in published
    )
    assert [r["name"] for r in summary["runs"]] == ["fed-iid", "fed-shards", "central"]
    assert central["kind"] == "centralized" and central["epochs"] == 2  # equal compute
    assert summary["runs"][0]["epochs"] == 2.0  # 2 rounds x 1 local epoch x all images
    with (out / "comparison.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    assert "| fed-iid | federated (embedded) |" in (out / "comparison.md").read_text()
    assert (out / "comparison.png").stat().st_size > 5_000
    assert (out / "fed-iid" / "run" / "rounds.csv").is_file()
    # Rerun into the same folder: finished runs are reused, not trained again.
    again = federate_main(
        ["--compare", str(spec), "--output_dir", str(out), *tiny, "--rounds", "2"]
    )
    assert [r["knn_top1"] for r in again["runs"]] == [r["knn_top1"] for r in summary["runs"]]
    assert again["seconds"] < summary["seconds"] / 2
    # A run saved before an option existed (here the energy options, one with a factory
    # default) is still the same run when the option is at its default.
    saved_path = out / "fed-iid" / "run" / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text())
    del saved["energy_args"], saved["track_energy"]
    saved_path.write_text(yaml.safe_dump(saved))
    older = federate_main(
        ["--compare", str(spec), "--output_dir", str(out), *tiny, "--rounds", "2"]
    )
    assert older["runs"][0]["knn_top1"] == summary["runs"][0]["knn_top1"]
    # A subset by name: only the matching runs, reused, and a report of those alone.
    subset = federate_main(["--compare", str(spec), "--compare_only", "central,nothing-*",
                            "--output_dir", str(out), *tiny, "--rounds", "2"])  # fmt: skip
    assert [r["name"] for r in subset["runs"]] == ["central"]
    assert "fed-iid" not in (out / "comparison.md").read_text()
    assert page.read_text() == published  # a subset is never published
    with pytest.raises(UserError, match="matches none"):
        federate_main(["--compare", str(spec), "--compare_only", "x*", "--output_dir", str(out)])
    with pytest.raises(UserError, match="other settings"):
        federate_main(["--compare", str(spec), "--output_dir", str(out), *tiny, "--rounds", "3"])


def test_by_split_gives_runs_that_share_a_cell_rows_of_their_own():
    from ssl_zoo.jobs.compare import by_split

    run = {"kind": "federated (embedded)", "method": "simclr", "algorithm": "fedavg",
           "partition": "IID", "knn_top1_init": 0.2, "epochs": 5.0}  # fmt: skip
    rows = [{**run, "name": "a", "knn_top1": 0.4}, {**run, "name": "b", "knn_top1": 0.41},
            {**run, "name": "c", "kind": "centralized", "partition": "-", "knn_top1": 0.43}]  # fmt: skip
    table = by_split(rows, "head")
    assert "| simclr | fedavg | 0.200 | 0.400 | 0.430 | -3.0 |" in table
    assert "| simclr | fedavg (b) | 0.200 | 0.410 | 0.430 | -2.0 |" in table
    # Without centralized runs (the algorithms' comparison) the table has no empty columns.
    table = by_split([{**run, "name": "a", "knn_top1": 0.4},
                      {**run, "name": "d", "algorithm": "fedx", "partition": "2-class shards",
                       "knn_top1": 0.38}], "head")  # fmt: skip
    assert "| method | algorithm | kNN init | IID | 2-class shards |\n" in table
    assert "| simclr | fedx | 0.200 |  | 0.380 |" in table and "centralized" not in table


def test_each_federated_run_is_read_against_the_centralized_run_of_equal_compute():
    from ssl_zoo.jobs.compare import by_epoch, by_split

    run = {"kind": "federated (embedded)", "method": "simclr", "algorithm": "fedavg",
           "partition": "IID", "knn_top1_init": 0.2}  # fmt: skip
    central = {**run, "kind": "centralized", "partition": "-"}
    rows = [{**central, "name": "c5", "epochs": 5.0, "knn_top1": 0.43},
            {**central, "name": "c10", "epochs": 10.0, "knn_top1": 0.48},
            {**run, "name": "f5", "epochs": 5.0, "knn_top1": 0.40},
            {**run, "name": "f10", "epochs": 10.0, "knn_top1": 0.46},
            {**run, "name": "f7", "epochs": 7.0, "knn_top1": 0.44}]  # fmt: skip
    curves = {r["name"]: [(r["epochs"], r["knn_top1"])] for r in rows}
    lines = by_epoch(rows, curves, "head").splitlines()
    gap = {
        line.split(" | ")[0][2:]: line.rsplit("|", 2)[1].strip()
        for line in lines
        if line.startswith("| ")
    }
    # the 10-epoch run against the 10-epoch centralized run, not the last one of its method
    assert (gap["f5"], gap["f10"], gap["f7"], gap["c10"]) == ("-3.0", "-2.0", "", "")
    table = by_split(rows, "head")
    assert "| simclr | fedavg | 0.200 | 0.400 | 0.430 | -3.0 |" in table
    assert "| simclr | fedavg (f10) | 0.200 | 0.460 | 0.480 | -2.0 |" in table
    assert "| simclr | fedavg (f7) | 0.200 | 0.440 |  |  |" in table


def federated_knn_after(out, run: str, round_: int) -> float:
    with (out / run / "run" / "rounds.csv").open() as f:
        return float(next(r for r in csv.DictReader(f) if int(r["round"]) == round_)["knn_top1"])


def test_federation_keys_chain_to_their_ca_and_load_as_flowers_supernode_keys(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    from ssl_zoo.federated.keys import make_keys

    (node,) = make_keys(tmp_path, hosts=["link.example.org", "10.0.0.7"], supernodes=1)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    link = x509.load_pem_x509_certificate((tmp_path / "superlink.crt").read_bytes())
    link.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = link.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"link.example.org", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        "10.0.0.7",
        "127.0.0.1",
    }
    key = load_ssh_private_key(node.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert try_load_public_key(node.with_suffix(".pub"))  # what `flwr supernode register` reads
    assert (node.stat().st_mode & 0o077) == 0 and (
        (tmp_path / "ca.key").stat().st_mode & 0o077
    ) == 0


class SecuredLoopback:
    """The README's multi-machine commands on one machine: a SuperLink on 127.0.0.1:8000 with TLS
    and SuperNode authentication, keys for three SuperNodes of which 0 and 1 are registered, and
    the flwr CLI pointed at it. Every process it starts is stopped by close()."""

    def __init__(self, tmp_path):
        from ssl_zoo.federated.keys import make_keys

        bin_dir = Path(sys.executable).parent
        if shutil.which("flower-superlink", path=str(bin_dir)) is None:
            pytest.skip("flower-superlink is not installed beside this Python")
        self.dir, self.keys, self.started = tmp_path, tmp_path / "keys", []
        make_keys(self.keys, hosts=[], supernodes=3)
        home = tmp_path / "flwr"
        home.mkdir()
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
            f'address = "127.0.0.1:8000"\nroot-certificates = "{self.keys / "ca.crt"}"\n'
        )
        # One thread per process, as an embedded run with torch.set_num_threads(1): the same
        # float reductions, so the same weights bit for bit.
        self.env = {**os.environ, "FLWR_HOME": str(home), "OMP_NUM_THREADS": "1",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # fmt: skip
        self.ca = ("--root-certificates", str(self.keys / "ca.crt"))
        self.start("flower-superlink", "--ssl-ca-certfile", str(self.keys / "ca.crt"),
                   "--ssl-certfile", str(self.keys / "superlink.crt"), "--ssl-keyfile",
                   str(self.keys / "superlink.key"), "--enable-supernode-auth")  # fmt: skip
        try:
            for key in ("supernode-0.pub", "supernode-1.pub"):  # the CLI talks TLS to the SuperLink
                for _ in range(20):  # until the SuperLink listens
                    reg = subprocess.run(["flwr", "supernode", "register", str(self.keys / key), "loopback"],
                                         env=self.env, capture_output=True, text=True, timeout=60)  # fmt: skip
                    if reg.returncode == 0:
                        break
                    time.sleep(1)
                assert reg.returncode == 0, reg.stdout[-2000:] + reg.stderr[-2000:]
        except BaseException:
            self.close()  # the fixture never gets the object: stop the SuperLink here
            raise

    def start(self, *args):
        proc = subprocess.Popen(list(args), env=self.env, cwd=self.dir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.started.append(proc)
        return proc

    def supernode(self, key, port, *tls):
        return ["flower-supernode", *tls, "--auth-supernode-private-key", str(self.keys / key),
                "--superlink", "127.0.0.1:8000", "--port", str(port)]  # fmt: skip

    def member(self, k):
        """Registered SuperNode k, with the CA, serving partition k of 2."""
        return self.start(*self.supernode(f"supernode-{k}", 9094 + k, *self.ca), "--node-config",
                          f"partition-id={k} num-partitions=2")  # fmt: skip

    def refused(self, key, port, *tls):
        """Exit status and log of a SuperNode that should not get in (one retry)."""
        # Its log goes to a file: the SuperExec it starts would hold a pipe open after it exits.
        log = self.dir / f"refused-{port}.log"
        with log.open("w") as sink:
            proc = subprocess.Popen([*self.supernode(key, port, *tls), "--max-retries", "1"],
                                    env=self.env, cwd=self.dir, stdout=sink, stderr=sink,
                                    start_new_session=True)  # fmt: skip
            try:
                returncode = proc.wait(timeout=120)  # a SuperNode let in would never return
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        return returncode, log.read_text()

    def run(self, config, out, overrides=""):
        run = subprocess.run(["flwr", "run", ".", "loopback", "--stream", "--run-config",
                              f"config='{config}' output-dir='{out}' {overrides}"],
                             cwd=ROOT / "flower_app", env=self.env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run

    def close(self):
        for proc in self.started:  # SuperLink and SuperNodes outlive `flwr run`: stop them all
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)  # a frozen one would not hear SIGTERM
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.fixture
def secured_loopback(tmp_path):
    federation = SecuredLoopback(tmp_path)
    yield federation
    federation.close()


def tiny_yaml(path):
    path.write_text("method: simsiam\ntrain_samples: 96\ntest_samples: 40\nbackbone: timm:resnet10t\n"
                    "batch_size: 16\nnum_workers: 0\nknn_k: 10\npartition: iid\n")  # fmt: skip
    return path


@pytest.mark.slow
def test_secured_flower_deployment_on_loopback_refuses_strangers(tmp_path, secured_loopback):
    """A SuperNode with an unregistered key and one without the CA are refused; the two members
    run `flwr run` of flower_app/ to the embedded engine's global model, bit for bit (2 min)."""
    link = secured_loopback
    link.member(0), link.member(1)
    stranger = link.refused("supernode-2", 9096, *link.ca)  # a key nobody registered
    assert stranger[0] != 0 and "Failed to activate SuperNode" in stranger[1], stranger[1]
    no_ca = link.refused("supernode-1", 9097)  # cannot check the SuperLink's certificate
    assert no_ca[0] != 0 and "CERTIFICATE_VERIFY_FAILED" in no_ca[1], no_ca[1]
    config, out = tiny_yaml(tmp_path / "tiny.yaml"), tmp_path / "run"
    link.run(config, out)
    rows = read_rounds(out)
    assert [int(r["round"]) for r in rows] == [0, 1, 2] and rows[1]["clients"] == "2"
    assert (out / "backbone.pt").is_file() and (out / "summary.json").is_file()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        federate_main(["--config", str(config), "--num_clients", "2", "--rounds", "2",
                       "--output_dir", str(tmp_path / "embedded")])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    a = torch.load(tmp_path / "embedded" / "fed_state.pt", weights_only=False)["global_state"]
    b = torch.load(out / "fed_state.pt", weights_only=False)["global_state"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_hung_supernode_is_failed_after_the_round_timeout(tmp_path, secured_loopback):
    """A SuperNode frozen (SIGSTOP: alive, connected, silent) while the round waits for it: after
    --round_timeout the round goes on with the other client, the hung one counted as failed."""
    link = secured_loopback
    link.member(0)
    hung = link.member(1)
    time.sleep(10)  # both SuperNodes online before one of them freezes
    os.killpg(hung.pid, signal.SIGSTOP)
    try:
        out = tmp_path / "run"
        started = time.monotonic()
        options = "rounds=1 options='--round_timeout 60 --min_clients 1'"
        run = link.run(tiny_yaml(tmp_path / "tiny.yaml"), out, options)
        seconds = time.monotonic() - started
    finally:
        os.killpg(hung.pid, signal.SIGCONT)
    rows = read_rounds(out)
    assert [int(r["round"]) for r in rows] == [0, 1]
    failures = [line for line in run.stdout.splitlines() if "failed in round" in line]
    assert (rows[1]["clients"], rows[1]["failed"]) == ("1", "1"), failures
    assert seconds < 300, seconds  # waited about the timeout, not forever


def test_wandb_offline_run_has_rounds_and_the_partition_table(tmp_path, monkeypatch):
    from wandb_records import history_keys

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    federate_main(
        [*TINY, "--rounds", "1", "--logger", "wandb", "--output_dir", str(tmp_path / "run")]
    )
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/*.wandb")
    keys = history_keys(run_file)
    assert {"round/knn_top1", "round/bytes_up", "partition/_type"} <= keys, keys  # the table


# ---- server optimizer, budgets, flags ---------------------------------------------------------
def server_step(name, lr, momentum, rounds):
    """Run ServerOptimizer over `rounds` of (current, averaged) and return its states."""
    from ssl_zoo.federated.server_optimizer import ServerOptimizer

    opt = ServerOptimizer(name, lr, momentum, {"w"})
    x = {"w": torch.tensor([1.0, -2.0]), "running_var": torch.tensor([1.0])}
    out = []
    for average in rounds:
        x = opt.step(x, {"w": torch.tensor(average), "running_var": torch.tensor([0.5])})
        out.append(x)
    return out


def test_server_sgd_is_fedavg_at_lr_1_and_fedavgm_otherwise():
    (plain,) = server_step("sgd", 1.0, 0.0, [[3.0, 0.0]])
    assert plain["w"].tolist() == [3.0, 0.0]
    # FedAvgM, lr 2, momentum 0.5: d1 = (2, 2) -> x = (1, -2) + 2 * (2, 2) = (5, 2);
    # d2 = (6, 2) - (5, 2) = (1, 0), v = 0.5 * (2, 2) + (1, 0) = (2, 1) -> x = (9, 4).
    first, second = server_step("sgd", 2.0, 0.5, [[3.0, 0.0], [6.0, 2.0]])
    assert first["w"].tolist() == [5.0, 2.0] and second["w"].tolist() == [9.0, 4.0]
    # Buffers (BatchNorm statistics) take the clients' average, never an extrapolation.
    assert first["running_var"].tolist() == [0.5]


def test_server_adam_and_yogi_follow_flowers_equations():
    d = torch.tensor([2.0, 2.0])  # averaged - current in round 1
    (adam,) = server_step("adam", 0.1, 0.9, [[3.0, 0.0]])
    m, v = 0.1 * d, 0.01 * d * d
    lr = 0.1 * (1 - 0.99**2) ** 0.5 / (1 - 0.9**2)  # Flower's bias correction at round 1
    assert torch.allclose(adam["w"], torch.tensor([1.0, -2.0]) + lr * m / (v.sqrt() + 1e-3))
    (yogi,) = server_step("yogi", 0.1, 0.9, [[3.0, 0.0]])
    v = 0.0 - 0.01 * d * d * torch.sign(0.0 - d * d)  # v0 = 0: v grows by (1 - b2) d^2
    assert torch.allclose(yogi["w"], torch.tensor([1.0, -2.0]) + 0.1 * m / (v.sqrt() + 1e-3))


def test_a_time_budget_plans_fewer_rounds_and_anneals_to_them(tmp_path):
    from ssl_zoo.federated.loop import FedState, planned_rounds

    cfg = FedConfig(rounds=100, max_time=1.0)  # 60 s
    state = FedState(0, {})
    assert planned_rounds(cfg, state) == 100  # nothing measured yet
    state.round, state.elapsed = 2, 30.0  # 15 s a round: 4 rounds fit
    assert planned_rounds(cfg, state) == 4
    state.round, state.elapsed = 4, 70.0  # over budget: stop here
    assert planned_rounds(cfg, state) == 4
    summary = federate_main([*TINY, "--rounds", "50", "--max_time", "0.05",
                             "--output_dir", str(tmp_path / "run")])  # fmt: skip
    assert 1 <= summary["rounds"] < 50
    assert summary["seconds"] < 60


def test_one_method_recipe_serves_train_and_federate(tmp_path):
    """configs/methods/*.yaml carry train.py keys (max_epochs, knn_every_n_epochs): federate.py
    takes them unchanged, and bare boolean flags mean true."""
    for path in sorted((ROOT / "configs" / "methods").glob("*.yaml")):
        cfg = parse_config(FedConfig, ["--config", str(path), "--resume", "--fedbn"], prog="t")
        assert cfg.resume is True and cfg.fedbn is True and cfg.method == path.stem


@pytest.mark.slow
def test_the_federated_quickstart_learns_round_by_round(tmp_path):
    """The README's federated promise, end to end (2-4 minutes on 2 cores): the global model's kNN
    ends at least 5 points above initialisation and within 1 point of its best round."""
    proc = run_script("federate.py", "--config", "configs/federated/quickstart.yaml",
                      "--output_dir", str(tmp_path / "run"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = last_json_line(proc.stdout)
    assert summary["knn_top1"] >= summary["knn_top1_init"] + 0.05, summary
    assert summary["knn_top1"] >= summary["knn_top1_best"] - 0.01, summary


@pytest.mark.parametrize(
    "name",
    [
        "compare.yaml",
        "compare-cifar10.yaml",
        "compare-algorithms.yaml",
        "compare-fedn.yaml",
        "compare-local-work.yaml",
    ],
)
def test_shipped_comparisons_name_valid_runs(tmp_path, name):
    """Every run of the shipped comparison files parses into a valid config whose algorithm fits
    its method (no training)."""
    from ssl_zoo.federated.algorithms import build_algorithm
    from ssl_zoo.jobs.compare import centralized_config, read_comparison, run_config

    base, runs, _ = read_comparison(f"configs/federated/{name}")
    methods = set()
    for spec in runs:
        cfg = run_config(base, spec, tmp_path / spec["name"], [])
        if spec.get("centralized"):
            assert centralized_config(cfg, tmp_path).max_epochs == cfg.rounds * cfg.local_epochs
        build_algorithm(cfg).check(cfg.method)
        methods.add(cfg.method)
    assert len(runs) >= 3 and methods
