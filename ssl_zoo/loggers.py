"""Loggers: a CSV file always (metrics.csv in the run directory), Weights & Biases on request."""

from __future__ import annotations

import csv
import netrc
import os
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from ssl_zoo.errors import UserError

# Lightning warns when a log directory already holds files; ours always holds the run's config.
warnings.filterwarnings(
    "ignore", message=r".*Experiment logs directory .* exists and is not empty.*"
)


def wandb_mode() -> str:
    """W&B mode: as WANDB_MODE says, else online with an API key, else offline (sync later)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def build_loggers(cfg, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=run_dir, name="", version="")]
    if cfg.logger == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise UserError("--logger wandb needs the wandb package: pip install wandb") from err
        mode = wandb_mode()
        loggers.append(
            WandbLogger(
                project=cfg.wandb_project,
                name=cfg.wandb_name or run_dir.name,
                group=cfg.wandb_group,
                tags=list(cfg.wandb_tags) or None,
                save_dir=str(run_dir),
                offline=mode == "offline",
                mode=mode,
                config=cfg.as_dict(),
            )
        )
    return loggers


def wandb_logger(loggers: list[Logger]) -> WandbLogger | None:
    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)


def read_csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def prepend_csv_rows(path: Path, earlier: list[dict]) -> None:
    """Put rows logged before a resume back in front of the resumed run's rows.

    Lightning's CSV writer starts a fresh metrics.csv when a run is resumed in the same directory.
    """
    if not earlier:
        return
    later = read_csv_rows(path)
    keys = sorted({k for row in earlier + later for k in row})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(earlier + later)
