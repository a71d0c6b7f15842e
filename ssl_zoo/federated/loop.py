"""The embedded FedAvg loop: sample clients, fit each (client.py), average (aggregate.py),
evaluate the global backbone on the server, log and checkpoint every round.

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

from ssl_zoo.components import Components
from ssl_zoo.data import SSLDataModule
from ssl_zoo.errors import UserError
from ssl_zoo.federated.aggregate import FedAvg, batchnorm_keys, state_bytes
from ssl_zoo.federated.client import fit_client, private_state

log = logging.getLogger("ssl_zoo.federated")

ROUND_FIELDS = ["round", "knn_top1", "knn_top5", "embedding_std", "rankme", "clients",
                "failed", "examples", "train_loss", "bytes_down", "bytes_up", "train_seconds",
                "aggregate_seconds", "eval_seconds", "seconds"]  # fmt: skip


@dataclass
class FedState:
    round: int
    global_state: dict[str, torch.Tensor]
    private: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)


def sample_clients(num_clients: int, fraction: float, minimum: int, seed: int, round_index: int):
    count = min(num_clients, max(minimum, round(fraction * num_clients)))
    rng = np.random.default_rng([seed, round_index])
    return sorted(rng.choice(num_clients, size=count, replace=False).tolist())


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
                        enable_model_summary=False, precision=cfg.precision)  # fmt: skip
    trainer.validate(model, datamodule=datamodule, verbose=False)
    m = model.last_metrics
    return {"knn_top1": m["val/knn_top1"], "knn_top5": m["val/knn_top5"],
            "embedding_std": m["val/embedding_std"], "rankme": m["val/rankme"]}  # fmt: skip


def save_state(path: Path, state: FedState) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state.__dict__, tmp)
    tmp.replace(path)  # atomic: a kill leaves the previous round's checkpoint whole


def load_state(path: Path) -> FedState:
    return FedState(**torch.load(path, map_location="cpu", weights_only=False))


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROUND_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def run_rounds(
    cfg, parts: Components, client_indices: list[np.ndarray], run_dir: Path, on_round=None
) -> FedState:
    model = parts.model
    local_keys = batchnorm_keys(model) if cfg.fedbn else set()
    checkpoint = run_dir / "fed_state.pt"
    if cfg.resume:
        state = load_state(checkpoint)
        log.info("resuming after round %d", state.round)
    else:
        state = FedState(0, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        tic = time.time()
        state.rows.append({"round": 0, **evaluate_global(parts, state.global_state, cfg),
                           "eval_seconds": round(time.time() - tic, 2)})  # fmt: skip
        save_state(checkpoint, state)
        write_rows(run_dir / "rounds.csv", state.rows)
        if on_round:
            on_round(state.rows[-1])
    # A client's first round starts from the method's initial private state (e.g. empty queues).
    initial_private = private_state(model, local_keys)
    sent_keys = [k for k in state.global_state if k not in local_keys]
    bar = tqdm(range(state.round + 1, cfg.rounds + 1), desc="rounds", unit="round", initial=state.round,
               total=cfg.rounds)  # fmt: skip
    for round_number in bar:
        start = time.time()
        clients = sample_clients(
            cfg.num_clients, cfg.fraction_fit, cfg.min_clients, cfg.seed, round_number
        )
        accumulator, failed, losses, bytes_up, aggregate_seconds = FedAvg(), [], [], 0, 0.0
        for position, client in enumerate(clients):
            bar.set_postfix_str(f"client {position + 1}/{len(clients)}")
            images = Subset(parts.splits.train, client_indices[client].tolist())
            try:
                update = fit_client(model, state.global_state, state.private.get(client, initial_private),
                                    local_keys, images, parts.views, parts.normalize, parts.splits.image_size, cfg,
                                    round_number - 1, client)  # fmt: skip
            except Exception as err:  # a failing client must not take the round down with it
                reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
                log.warning(
                    "client %d failed in round %d and is dropped: %s", client, round_number, reason
                )
                failed.append(client)
                continue
            tic = time.time()
            accumulator.add(update.state, update.num_examples)
            aggregate_seconds += time.time() - tic
            state.private[client] = update.private
            bytes_up += state_bytes({k: update.state[k] for k in sent_keys})
            if update.loss is not None:
                losses.append(update.loss)
        train_seconds = time.time() - start - aggregate_seconds
        if accumulator.clients < cfg.min_clients:
            raise UserError(
                f"round {round_number}: only {accumulator.clients} of {len(clients)} clients trained "
                f"(min_clients {cfg.min_clients}; failed: {failed}); the last good checkpoint "
                f"(round {state.round}) is in {checkpoint}"
            )
        tic = time.time()
        state.global_state = accumulator.result()
        aggregate_seconds += time.time() - tic
        tic = time.time()
        metrics = evaluate_global(parts, state.global_state, cfg)
        bytes_down = len(clients) * state_bytes({k: state.global_state[k] for k in sent_keys})
        state.round = round_number
        state.rows.append({
            "round": round_number, **metrics, "clients": accumulator.clients, "failed": len(failed),
            "examples": int(accumulator.total_weight),
            "train_loss": float(np.mean(losses)) if losses else None,
            "bytes_down": bytes_down, "bytes_up": bytes_up,
            "train_seconds": round(train_seconds, 2), "aggregate_seconds": round(aggregate_seconds, 4),
            "eval_seconds": round(time.time() - tic, 2), "seconds": round(time.time() - start, 2),
        })  # fmt: skip
        save_state(checkpoint, state)
        write_rows(run_dir / "rounds.csv", state.rows)
        if on_round:
            on_round(state.rows[-1])
        bar.set_postfix_str(f"kNN {metrics.get('knn_top1', float('nan')):.3f}")
    return state
