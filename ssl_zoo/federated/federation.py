"""The start and the end of a federated run, the same on every engine (embedded loop, Flower's
simulation, a `flwr run` deployment): the components, partitions and algorithm it is built from,
and the final global model's backbone.pt and summary.json."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as L

from ssl_zoo.backbones import save_backbone
from ssl_zoo.components import Components, build_components
from ssl_zoo.curves import round_curves
from ssl_zoo.data import dataset_labels
from ssl_zoo.errors import UserError
from ssl_zoo.federated.algorithms import Stack, build_algorithm
from ssl_zoo.federated.config import FedConfig
from ssl_zoo.federated.partition import class_histograms, partition, plot_histograms
from ssl_zoo.lifecycle import RunLife


def build_federation(cfg: FedConfig) -> tuple[Components, list, Stack]:
    algorithm = build_algorithm(cfg)
    algorithm.check(cfg.method)
    # Seeded here, not by the caller: Flower's simulation builds the federation again in each
    # client actor, whose initial private state (a target network kept local, a memory bank)
    # must be the server's.
    L.seed_everything(cfg.seed, verbose=False)
    parts = build_components(cfg, online_probe=False)  # clients hold no labels to train it on
    algorithm.prepare(parts.model)
    labels = dataset_labels(parts.splits.train)
    if (labels < 0).any() and cfg.partition != "iid":
        raise UserError(f"partition {cfg.partition} needs labels; this dataset has none: use iid")
    clients = partition(
        labels, cfg.num_clients, cfg.partition, cfg.alpha, cfg.classes_per_client, cfg.seed
    )
    return parts, clients, algorithm


def write_partition(run_dir: Path, labels, clients, num_classes: int, title: str):
    histograms = class_histograms(labels, clients, max(num_classes, 1))
    with (run_dir / "partition.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["client", "images", *[f"class_{c}" for c in range(histograms.shape[1])]])
        for client, row in enumerate(histograms):
            writer.writerow([client, int(row.sum()), *row.tolist()])
    plot_histograms(histograms, run_dir / "partition.png", title)
    return histograms


def finish_run(cfg: FedConfig, parts: Components, state, life: RunLife, wandb_run=None) -> dict:
    """backbone.pt of the final global model, rounds.png and summary.json (written last: the run
    finished)."""
    run_dir = life.run_dir
    parts.model.load_state_dict(state.global_state)
    save_backbone(run_dir / "backbone.pt", parts.model.backbone, parts.spec,
                  feature_dim=parts.model.feature_dim, **parts.meta,
                  method=cfg.method, dataset=cfg.dataset, federated=True)  # fmt: skip
    rows = state.rows
    trained = [r for r in rows if r["round"] > 0]
    summary = {
        "method": cfg.method,
        "engine": cfg.engine,
        "partition": cfg.partition,
        "fed_algorithm": cfg.fed_algorithm,
        "num_clients": cfg.num_clients,
        "devices_per_client": cfg.devices,
        "rounds": len(trained),
        "epochs_equivalent": rows[-1].get("epochs"),
        "server_optimizer": cfg.server_optimizer,
        "server_lr": cfg.server_lr,
        "knn_top1_init": rows[0].get("knn_top1"),
        "knn_top1": rows[-1].get("knn_top1"),
        "knn_top1_best": max(
            (r["knn_top1"] for r in trained if r.get("knn_top1") is not None), default=None
        ),
        "knn_top1_per_round": [r.get("knn_top1") for r in trained],
        "bytes_up": sum(r["bytes_up"] for r in trained),
        "bytes_down": sum(r["bytes_down"] for r in trained),
        # (a run resumed from a checkpoint older than the FLOP count has rows without one)
        "gflops": round(sum(r.get("gflops") or 0 for r in trained), 3),
        "seconds_per_round": round(sum(r["seconds"] for r in trained) / max(len(trained), 1), 1),
        # (energy None: a deployment, whose clients spend it on machines of their own)
        **life.cost(),
    }
    round_curves(
        run_dir,
        f"{cfg.method}, {cfg.fed_algorithm}, {cfg.partition} over {cfg.num_clients} clients",
    )
    return life.finish(summary, wandb_run)
