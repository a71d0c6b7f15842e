"""Federated SSL: config -> partitioned clients -> FedAvg rounds (embedded loop or Flower) ->
run directory with rounds.csv, partition.csv/.png, fed_state.pt, backbone.pt and summary.json."""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as L
import yaml

from ssl_zoo.backbones import save_backbone
from ssl_zoo.components import Components, build_components, check_before_work, prepare_run_dir
from ssl_zoo.config import RunConfig, parse_config, write_atomically
from ssl_zoo.cost import EnergyMeter, peak_rss_mb
from ssl_zoo.data import dataset_labels
from ssl_zoo.errors import UserError, run_main, unknown_choice
from ssl_zoo.federated.aggregate import WIRE_DTYPES
from ssl_zoo.federated.algorithms import ALGORITHMS, Stack, build_algorithm
from ssl_zoo.federated.partition import PARTITIONS, class_histograms, partition, plot_histograms
from ssl_zoo.federated.server_optimizer import SERVER_OPTIMIZERS

ENGINES = ("embedded", "flower")


@dataclass
class FedConfig(RunConfig):
    """Federated SSL: clients train the same method modules as train.py; a federated algorithm
    (ssl_zoo/federated/algorithms) says how they merge the global model and how the server
    aggregates.

    The compute of a federation is counted in epochs-equivalent (rounds.csv `epochs`): each round
    adds every trained client's local_epochs x its share of the training images.

    Args:
        engine: embedded (one process, runs anywhere) or flower (Flower's simulation engine).
        num_clients: Number of clients the training split is divided over.
        partition: iid, dirichlet (non-IID by label proportions) or shards (k classes per client).
        alpha: Dirichlet concentration; small is skewed, large approaches IID.
        classes_per_client: Classes per client for the shards partition.
        rounds: Federated rounds.
        fraction_fit: Fraction of clients sampled each round.
        local_epochs: Epochs each sampled client trains per round; a fraction (0.5) trains that
            share of an epoch's steps on a fresh shuffle, so more, shorter rounds can spend the
            same compute (less client drift between averages).
        restart_schedule_every_round: Each round's local training runs the whole schedule
            (warm-up, cosine learning rate, momentum) anew, as FEDn's FedSimSiam example does,
            instead of one schedule across all rounds (default, as a centralized run's).
        min_clients: Fewest clients that must train successfully for a round to count.
        client_batch_size: Images per step on a client. Default: batch_size x the client's share
            of the images a round trains on (IID, 5 clients: batch_size / 5), so each local
            epoch takes as many steps as a centralized epoch at batch_size.
        update_dtype: float32, float16 or bfloat16: the precision the global model and the
            clients' weights travel in (bytes_down, bytes_up); each side computes in float32
            and the server sums in float64. float16 halves the bytes and keeps 10 mantissa bits
            but overflows past 65504; bfloat16 keeps float32's range with 7 bits.
        client_dropout: Chance that a sampled client goes offline in a round (simulated, drawn
            from seed, round and client): it is sent the model, returns nothing and is counted
            in rounds.csv `failed`. For studying unreliable clients; 0 on real deployments.
        round_timeout: Flower engine and `flwr run`: seconds the server waits for a round's
            replies (Flower's Grid timeout); clients that have not answered by then count as
            failed and their late replies are ignored. Default: wait for every client.
        fed_algorithm: fedavg, fedema (FedEMA), fedu (FedU), ldawa (L-DAWA), fedx (FedX) or
            fusion (feature fusion + neighbourhood matching, Wu et al.; shares features).
        fedbn: Keep BatchNorm layers local to each client (FedBN), beside any algorithm.
        fedprox_mu: Weight of FedProx's proximal term (0: none), beside any algorithm.
        fedema_tau: FedEMA's tau: the EMA weight of a client's first merge (lambda = tau / divergence).
        fedu_threshold: FedU's divergence below which the predictor is taken from the server.
        shared_features: fusion: how many normalised features of its images a client uploads
            per round.
        fusion_match_weight: fusion: weight of the neighbourhood-matching loss.
        server_optimizer: The server's step on the clients' averaged update: sgd (FedAvg; FedAvgM
            with server_lr or server_momentum), adam (FedAdam) or yogi (FedYogi), as Flower's
            strategies define them.
        server_lr: Server learning rate on the averaged update (sgd: 1 is plain FedAvg).
        server_momentum: sgd: FedAvgM's momentum (default 0); adam/yogi: beta_1 (default 0.9).
        compare: A comparison file: several runs side by side and a report (see configs/federated).
        compare_only: With compare: run and report only the runs whose names match these
            comma-separated patterns (shell-style, e.g. '*-shards2,fedbyol-*').
    """

    engine: str = "embedded"
    num_clients: int = 4
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2
    rounds: int = 5
    fraction_fit: float = 1.0
    local_epochs: float = 1.0
    restart_schedule_every_round: bool = False
    min_clients: int = 1
    client_batch_size: int | None = None
    update_dtype: str = "float32"
    client_dropout: float = 0.0
    round_timeout: float | None = None
    fed_algorithm: str = "fedavg"
    fedbn: bool = False
    fedprox_mu: float = 0.0
    fedema_tau: float = 0.7
    fedu_threshold: float = 0.4
    shared_features: int = 1024
    fusion_match_weight: float = 1.0
    server_optimizer: str = "sgd"
    server_lr: float = 1.0
    server_momentum: float | None = None
    compare: str | None = None
    compare_only: str | None = None

    @property
    def resolved_server_momentum(self) -> float:
        if self.server_momentum is not None:
            return self.server_momentum
        return 0.0 if self.server_optimizer == "sgd" else 0.9

    def checks(self) -> list[tuple[bool, str]]:
        return [
            *super().checks(),
            (self.alpha > 0, f"alpha must be > 0 (got {self.alpha})"),
            (self.num_clients >= 1, f"num_clients must be >= 1 (got {self.num_clients})"),
            (
                0 < self.fraction_fit <= 1,
                f"fraction_fit must be in (0, 1] (got {self.fraction_fit})",
            ),
            (self.rounds >= 1, f"rounds must be >= 1 (got {self.rounds})"),
            (self.local_epochs > 0, f"local_epochs must be > 0 (got {self.local_epochs})"),
            (1 <= self.min_clients <= self.num_clients, "min_clients must be in [1, num_clients]"),
            (
                self.client_batch_size is None or self.client_batch_size >= 2,
                f"client_batch_size must be >= 2 (got {self.client_batch_size})",
            ),
            (
                0 <= self.client_dropout < 1,
                f"client_dropout must be in [0, 1) (got {self.client_dropout})",
            ),
            (
                self.round_timeout is None or self.round_timeout > 0,
                f"round_timeout must be > 0 seconds (got {self.round_timeout})",
            ),
            (
                self.round_timeout is None or self.engine == "flower",
                "round_timeout needs --engine flower (the embedded loop trains its clients one "
                "after another in this process, with nothing to wait for)",
            ),
            (self.fedprox_mu >= 0, "fedprox_mu must be >= 0"),
            (self.fedema_tau > 0, f"fedema_tau must be > 0 (got {self.fedema_tau})"),
            (self.fedu_threshold >= 0, f"fedu_threshold must be >= 0 (got {self.fedu_threshold})"),
            (
                self.shared_features >= 1,
                f"shared_features must be >= 1 (got {self.shared_features})",
            ),
            (self.fusion_match_weight >= 0, "fusion_match_weight must be >= 0"),
            (
                self.update_dtype in WIRE_DTYPES,
                f"unknown update_dtype '{self.update_dtype}'; valid choices: "
                + ", ".join(WIRE_DTYPES),
            ),
            (not self.compare_only or self.compare, "--compare_only needs --compare FILE"),
            (self.server_lr > 0, f"server_lr must be > 0 (got {self.server_lr})"),
            (
                0 <= self.resolved_server_momentum < 1,
                f"server_momentum must be in [0, 1) (got {self.server_momentum})",
            ),
        ]

    def validate(self) -> None:
        super().validate()
        if self.engine not in ENGINES:
            raise unknown_choice("engine", self.engine, ENGINES)
        if self.fed_algorithm not in ALGORITHMS:
            raise unknown_choice("fed_algorithm", self.fed_algorithm, ALGORITHMS)
        if self.partition not in PARTITIONS:
            raise unknown_choice("partition", self.partition, PARTITIONS)
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise unknown_choice("server_optimizer", self.server_optimizer, SERVER_OPTIMIZERS)


def build_federation(cfg: FedConfig) -> tuple[Components, list, Stack]:
    algorithm = build_algorithm(cfg)
    algorithm.check(cfg.method)
    # Seeded here, not by the caller: Flower's simulation builds the federation again in each
    # client actor, whose initial private state (a target network kept local, a memory bank)
    # must be the server's.
    L.seed_everything(cfg.seed, verbose=False)
    parts = build_components(cfg)
    # Clients hold no labels, so the online probe would never train: drop it.
    parts.model.probe = None
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


class WandbRounds:
    """One W&B run per experiment: per-round metrics, the partition table and picture."""

    def __init__(self, cfg: FedConfig, run_dir: Path, histograms):
        import wandb

        from ssl_zoo.loggers import wandb_mode

        self.run = wandb.init(project=cfg.wandb_project, group=cfg.wandb_group,
                              tags=list(cfg.wandb_tags) or None, name=cfg.wandb_name or run_dir.name,
                              dir=str(run_dir), mode=wandb_mode(), config=cfg.as_dict(),
                              job_type="federated")  # fmt: skip
        columns = ["client", *[f"class_{c}" for c in range(histograms.shape[1])]]
        table = wandb.Table(
            columns=columns, data=[[i, *r.tolist()] for i, r in enumerate(histograms)]
        )
        self.run.log(
            {"partition": table, "partition_plot": wandb.Image(str(run_dir / "partition.png"))}
        )

    def __call__(self, row: dict) -> None:
        self.run.log({f"round/{k}": v for k, v in row.items() if v is not None}, step=row["round"])

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
        self.run.finish()


def federate(cfg: FedConfig) -> dict:
    start = time.time()
    check_before_work(cfg)
    run_dir = prepare_run_dir(cfg, progress="fed_state.pt", prefix="fed-")
    with EnergyMeter(cfg.track_energy, cfg.energy_args) as energy:
        parts, clients, algorithm = build_federation(cfg)
        labels = dataset_labels(parts.splits.train)
        title = f"{cfg.partition} over {cfg.num_clients} clients" + (
            f" (alpha {cfg.alpha})" if cfg.partition == "dirichlet" else ""
        )
        histograms = write_partition(run_dir, labels, clients, parts.splits.num_classes, title)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
        wandb = WandbRounds(cfg, run_dir, histograms) if cfg.logger == "wandb" else None

        if cfg.engine == "embedded":
            from ssl_zoo.federated.loop import run_rounds

            state = run_rounds(cfg, parts, algorithm, clients, run_dir, wandb, energy=energy)
        else:
            from ssl_zoo.federated.flower import run_flower_simulation

            state = run_flower_simulation(cfg, parts, clients, algorithm, run_dir, wandb, energy)

        summary = finish_run(cfg, parts, state, run_dir, start, energy)
        if wandb is not None:
            wandb.finish(summary)
        return summary


def finish_run(
    cfg: FedConfig,
    parts: Components,
    state,
    run_dir: Path,
    start: float,
    energy: EnergyMeter | None = None,
) -> dict:
    """backbone.pt of the final global model and summary.json (written last: the run finished)."""
    parts.model.load_state_dict(state.global_state)
    save_backbone(run_dir / "backbone.pt", parts.model.backbone, parts.spec,
                  feature_dim=parts.model.feature_dim, **parts.model.checkpoint_meta,
                  method=cfg.method, dataset=cfg.dataset, federated=True)  # fmt: skip
    rows = state.rows
    trained = [r for r in rows if r["round"] > 0]
    summary = {
        "method": cfg.method,
        "engine": cfg.engine,
        "partition": cfg.partition,
        "fed_algorithm": cfg.fed_algorithm,
        "num_clients": cfg.num_clients,
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
        "peak_rss_mb": peak_rss_mb(),
        # (None: a deployment, whose clients spend their energy on machines of their own)
        **(energy or EnergyMeter(enabled=False)).stop(),
        "seconds_per_round": round(sum(r["seconds"] for r in trained) / max(len(trained), 1), 1),
        "run_dir": str(run_dir),
        "seconds": round(time.time() - start, 1),
    }
    write_atomically(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Every client round builds a Trainer; its start-up notes would bury the round progress bar.
    # (lightly installs pytorch_lightning too; Lightning then reports through its loggers.)
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("flwr").propagate = False  # Flower prints through its own handler

    cfg = parse_config(FedConfig, argv, prog="federate.py")
    if cfg.compare:
        from ssl_zoo.federated.compare import compare

        summary = compare(cfg, sys.argv[1:] if argv is None else argv)
    else:
        summary = federate(cfg)
    print(json.dumps(summary), flush=True)
    return summary


def cli() -> None:
    run_main(main)
