"""The federated round loop of both engines: sample clients, fit each (client.py, in this
process or through Flower), aggregate by the algorithm's rule (algorithms/; by default the
weighted mean of aggregate.py), take the server's step (server_optimizer.py), evaluate the global
backbone on the server, log and checkpoint every round.

`epochs` in rounds.csv is the compute spent so far in epochs-equivalent: the sum over rounds of
each trained client's local epochs times its share of the training images, so a centralized run of
that many epochs trains on as many images.

Randomness is derived from (seed, round, client), never carried from one round to the next, so
a run resumed from its checkpoint after round r repeats rounds r+1... exactly as an uninterrupted
run would; the checkpoint (fed_state.pt, written atomically) holds the global model, the
clients' private state, the round number and the logged rows.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ssl_zoo.components import Components, ddp_copy
from ssl_zoo.config import replacing
from ssl_zoo.cost import gflops
from ssl_zoo.data import SSLDataModule
from ssl_zoo.errors import UserError
from ssl_zoo.federated.aggregate import from_wire, state_bytes, to_wire
from ssl_zoo.federated.algorithms import Stack
from ssl_zoo.federated.client import clients_per_round, fit_client, private_state
from ssl_zoo.federated.server_optimizer import ServerOptimizer

log = logging.getLogger("ssl_zoo.federated")

ROUND_FIELDS = ["round", "epochs", "knn_top1", "knn_top5", "embedding_std", "rankme", "clients",
                "failed", "examples", "train_loss", "gflops", "energy_kwh", "bytes_down",
                "bytes_up", "train_seconds", "client_step_seconds", "aggregate_seconds",
                "eval_seconds", "seconds"]  # fmt: skip


@dataclass
class FedState:
    round: int
    global_state: dict[str, torch.Tensor]
    private: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    server: dict = field(default_factory=dict)  # the server optimizer's moments
    algorithm: dict = field(default_factory=dict)  # the algorithms' server state (shared features)
    elapsed: float = 0.0  # seconds spent in rounds so far (the --max_time budget)
    # The last round each client trained in: a Flower client, which keeps its private state on its
    # own disk, is told which round's state to start from (the checkpoint's, after a resume).
    trained: dict[int, int] = field(default_factory=dict)


def sample_clients(cfg, round_index: int) -> list[int]:
    rng = np.random.default_rng([cfg.seed, round_index])
    return sorted(rng.choice(cfg.num_clients, size=clients_per_round(cfg), replace=False).tolist())


def evaluate_global(parts: Components, state: dict, cfg) -> dict:
    """kNN top-1/top-5, collapse std and RankMe of the global backbone: the model's own monitor."""
    model = parts.model
    model.load_state_dict(state)
    datamodule = SSLDataModule(
        parts.splits, parts.views, parts.normalize, cfg.batch_size, cfg.num_workers
    )
    if not datamodule.has_monitor:
        return {}
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, precision=cfg.precision,
                        callbacks=[parts.monitor])  # fmt: skip
    trainer.validate(model, datamodule=datamodule, verbose=False)
    m = parts.monitor.last_metrics
    return {"knn_top1": m["val/knn_top1"], "knn_top5": m["val/knn_top5"],
            "embedding_std": m["val/embedding_std"], "rankme": m["val/rankme"]}  # fmt: skip


def save_state(path: Path, state: FedState) -> None:
    with replacing(path) as partial:  # a kill leaves the previous round's checkpoint whole
        torch.save(state.__dict__, partial)


def load_state(path: Path) -> FedState:
    return FedState(**torch.load(path, map_location="cpu", weights_only=False))


def write_rows(path: Path, rows: list[dict]) -> None:
    with replacing(path) as partial, partial.open("w", newline="") as f:
        # After the fixed columns, what the algorithm decided (FedEMA's mu, ...), if anything.
        extra = sorted({k for row in rows for k in row} - set(ROUND_FIELDS))
        writer = csv.DictWriter(f, fieldnames=ROUND_FIELDS + extra)
        writer.writeheader()
        writer.writerows(rows)


def planned_rounds(cfg, state: FedState) -> int:
    """How many rounds the federation will run: cfg.rounds, or fewer when --max_time would run out
    first, estimated from the mean length of the rounds so far (re-planned after every round, so
    the clients' schedules anneal to end with the budget, as train.py's do)."""
    if not cfg.max_time or state.round == 0:
        return cfg.rounds
    per_round = state.elapsed / state.round
    return max(state.round, min(cfg.rounds, int(cfg.max_time * 60 / per_round)))


def agreed(value, cfg):
    """The first process's value, on every process of a federation whose clients train on
    several devices: each process runs the loop, but only the first one's clock and monitor
    decide (a copy that planned another round count would wait forever for the others)."""
    if cfg.devices == 1 or not torch.distributed.is_initialized():
        return value  # before the first client's fit there are no copies yet
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def fit_locally(cfg, parts: Components, client_indices, algorithm: Stack, initial_private):
    """The embedded engine's round: each sampled client fits in turn in this process."""

    def fit_round(round_number: int, global_state: dict, state: FedState, total_rounds: int, bar,
                  received: dict):  # fmt: skip
        clients = sample_clients(cfg, round_number)
        for position, client in enumerate(clients):
            bar.set_postfix_str(f"client {position + 1}/{len(clients)}")
            images = Subset(parts.splits.train, client_indices[client].tolist())
            try:
                update = fit_client(parts.model, global_state, state.private.get(client, initial_private),
                                    algorithm, images, parts.views, parts.normalize, parts.splits.image_size, cfg,
                                    round_number - 1, client, total_rounds, received)  # fmt: skip
            except Exception as err:  # a failing client must not take the round down with it
                yield client, None, (str(err).strip().splitlines() or [type(err).__name__])[-1]
                continue
            state.private[client] = update.private
            yield client, update, None

    return fit_round


def run_rounds(cfg, parts: Components, algorithm: Stack, client_indices: list[np.ndarray],
               run_dir: Path, on_round=None, fit_round=None, energy=None) -> FedState:  # fmt: skip
    """Rounds of sampling, local fits, aggregation, a server step, evaluation and a checkpoint.
    With an EnergyMeter, each round's row has the machine's energy during it (energy_kwh).

    `fit_round(round, global_state, state, total_rounds, bar, received)` yields (client, update
    or None, failure reason) for each sampled client: the embedded engine fits them here
    (fit_locally), the Flower engine sends them messages; everything else is this one loop for
    both, the algorithm's server hooks included."""
    model = parts.model
    local_keys = algorithm.local_keys(model)
    # A DDP copy (--devices) trains its share of every client's batches and evaluates and writes
    # nothing; the rows it keeps are the first process's but for the monitor's figures.
    copy = ddp_copy()

    def record(state: FedState) -> None:
        """After round 0 and every round: the checkpoint, rounds.csv and the caller's row hook."""
        if copy:
            return
        save_state(checkpoint, state)
        write_rows(run_dir / "rounds.csv", state.rows)
        if on_round:
            on_round(state.rows[-1])

    if fit_round is None:
        fit_round = fit_locally(
            cfg, parts, client_indices, algorithm, private_state(model, local_keys)
        )
    parameters = {k for k, p in model.named_parameters() if p.is_floating_point()} - local_keys
    server = ServerOptimizer(
        cfg.server_optimizer, cfg.server_lr, cfg.resolved_server_momentum, parameters
    )
    checkpoint = run_dir / "fed_state.pt"
    share = np.array([len(c) for c in client_indices], dtype=float) / max(
        1, sum(len(c) for c in client_indices)
    )
    if cfg.resume:
        state = load_state(checkpoint)
        if state.server:  # empty when killed before the first round ended
            server.load_state_dict(state.server)
        algorithm.load_state_dict(state.algorithm)
        log.info("resuming after round %d", state.round)
    else:
        state = FedState(0, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        tic = time.time()
        metrics = {} if copy else evaluate_global(parts, state.global_state, cfg)
        state.rows.append({"round": 0, **metrics, "epochs": 0.0,
                           "eval_seconds": round(time.time() - tic, 2)})  # fmt: skip
        record(state)
    sent_keys = [k for k in state.global_state if k not in local_keys]
    bar = tqdm(desc="rounds", unit="round", initial=state.round,
               total=agreed(planned_rounds(cfg, state), cfg), disable=copy)  # fmt: skip
    while state.round < (total_rounds := agreed(planned_rounds(cfg, state), cfg)):
        bar.total = total_rounds
        round_number, start = state.round + 1, time.time()
        kwh_before = energy.kwh() if energy else None
        accumulator, received = algorithm.aggregator(state.global_state), algorithm.broadcast()
        failed, losses, decided = [], [], {}
        bytes_up, aggregate_seconds, epochs, flops, step_seconds = 0, 0.0, 0.0, 0, []
        sent = to_wire(state.global_state, cfg.update_dtype)
        for client, update, reason in fit_round(
            round_number, sent, state, total_rounds, bar, received
        ):
            if update is None:
                # Flower's server knows a failed client by its node only (client -1).
                who = f"client {client}" if client >= 0 else "a client"
                log.warning("%s failed in round %d and is dropped: %s", who, round_number, reason)
                failed.append(client)
                continue
            state.trained[client] = round_number
            tic = time.time()
            accumulator.add(from_wire(update.state, state.global_state), update.num_examples)
            algorithm.receive(client, update.upload)
            for key, value in update.metrics.items():
                decided.setdefault(key, []).append(value)
            aggregate_seconds += time.time() - tic
            bytes_up += state_bytes(update.state) + state_bytes(update.upload)  # as it travels
            epochs += cfg.local_epochs * share[client]
            flops += update.flops
            step_seconds.append(update.step_seconds)
            if update.loss is not None:
                losses.append(update.loss)
        train_seconds = time.time() - start - aggregate_seconds
        if accumulator.clients < cfg.min_clients:
            raise UserError(
                f"round {round_number}: only {accumulator.clients} clients trained "
                f"(min_clients {cfg.min_clients}; failed: {failed}); the last good checkpoint "
                f"(round {state.round}) is in {checkpoint}"
            )
        tic = time.time()
        state.global_state = server.step(state.global_state, accumulator.result())
        state.server = server.state_dict()
        state.algorithm = algorithm.state_dict()
        aggregate_seconds += time.time() - tic
        tic = time.time()
        metrics = {} if copy else evaluate_global(parts, state.global_state, cfg)
        # Every sampled client was sent the model, including those that failed.
        bytes_down = (accumulator.clients + len(failed)) * (
            state_bytes({k: sent[k] for k in sent_keys}) + state_bytes(received)
        )
        state.round = round_number
        state.elapsed += time.time() - start
        state.rows.append({
            "round": round_number, **metrics, "epochs": round(state.rows[-1]["epochs"] + epochs, 4),
            "clients": accumulator.clients, "failed": len(failed),
            "examples": int(accumulator.total_weight),
            "train_loss": float(np.mean(losses)) if losses else None, "gflops": gflops(flops),
            "energy_kwh": None if kwh_before is None else round(energy.kwh() - kwh_before, 7),
            "bytes_down": bytes_down, "bytes_up": bytes_up,
            "train_seconds": round(train_seconds, 2), "aggregate_seconds": round(aggregate_seconds, 4),
            "client_step_seconds": round(float(np.mean(step_seconds)), 3) if step_seconds else None,
            "eval_seconds": round(time.time() - tic, 2), "seconds": round(time.time() - start, 2),
            **{key: float(np.mean(values)) for key, values in decided.items()},
        })  # fmt: skip
        record(state)
        bar.update(1)
        bar.set_postfix_str(f"kNN {metrics.get('knn_top1', float('nan')):.3f}")
    bar.close()
    return state
