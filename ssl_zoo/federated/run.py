"""federate(): one federated run, config -> partitioned clients -> rounds (embedded loop or
Flower's simulation) -> run directory with rounds.csv, partition.csv/.png, fed_state.pt,
backbone.pt and summary.json."""

from __future__ import annotations

from ssl_zoo.components import check_before_work, check_devices, ddp_copy, prepare_run_dir
from ssl_zoo.data import dataset_labels
from ssl_zoo.federated.config import FedConfig
from ssl_zoo.federated.federation import build_federation, finish_run, write_partition
from ssl_zoo.federated.loop import run_rounds
from ssl_zoo.lifecycle import RunLife


class WandbRounds:
    """One W&B run per experiment: per-round metrics, the partition table and picture."""

    def __init__(self, life: RunLife, histograms):
        import wandb

        self.run = life.start_wandb()
        run_dir = life.run_dir
        columns = ["client", *[f"class_{c}" for c in range(histograms.shape[1])]]
        table = wandb.Table(
            columns=columns, data=[[i, *r.tolist()] for i, r in enumerate(histograms)]
        )
        self.run.log(
            {"partition": table, "partition_plot": wandb.Image(str(run_dir / "partition.png"))}
        )

    def __call__(self, row: dict) -> None:
        self.run.log({f"round/{k}": v for k, v in row.items() if v is not None}, step=row["round"])


def federate(cfg: FedConfig) -> dict | None:
    """The run's summary; None in the copies that DDP starts for clients on several devices."""
    check_before_work(cfg)
    check_devices(cfg.accelerator, cfg.devices)
    copy = ddp_copy()
    run_dir = prepare_run_dir(cfg, progress="fed_state.pt", prefix="fed-")
    with RunLife(cfg, run_dir, "federated", track_energy=cfg.track_energy and not copy) as life:
        parts, clients, algorithm = build_federation(cfg)
        if copy:  # trains its share of every client's fit; the first process writes the run
            run_rounds(cfg, parts, algorithm, clients, run_dir)
            return None
        labels = dataset_labels(parts.splits.train)
        title = f"{cfg.partition} over {cfg.num_clients} clients" + (
            f" (alpha {cfg.alpha})" if cfg.partition == "dirichlet" else ""
        )
        histograms = write_partition(run_dir, labels, clients, parts.splits.num_classes, title)
        life.snapshot()
        wandb = WandbRounds(life, histograms) if cfg.logger == "wandb" else None

        if cfg.engine == "embedded":
            state = run_rounds(cfg, parts, algorithm, clients, run_dir, wandb, energy=life.energy)
        else:
            # Flower (and Ray behind it) is imported only by runs that use it.
            from ssl_zoo.federated.flower import run_flower_simulation

            state = run_flower_simulation(cfg, parts, clients, algorithm, run_dir, wandb,
                                          life.energy)  # fmt: skip
        return finish_run(cfg, parts, state, life, wandb and wandb.run)
