"""federate.py's command line: one federated run (ssl_zoo.federated.run) or, with --compare,
several side by side (ssl_zoo.jobs.compare)."""

from __future__ import annotations

import json
import logging
import sys

from ssl_zoo.config import parse_config
from ssl_zoo.errors import run_main
from ssl_zoo.federated.config import FedConfig
from ssl_zoo.federated.run import federate


def main(argv: list[str] | None = None) -> dict | None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Every client round builds a Trainer; its start-up notes would bury the round progress bar.
    # (lightly installs pytorch_lightning too; Lightning then reports through its loggers.)
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("flwr").propagate = False  # Flower prints through its own handler

    cfg = parse_config(FedConfig, argv, prog="federate.py")
    if cfg.compare:
        from ssl_zoo.jobs.compare import compare

        summary = compare(cfg, sys.argv[1:] if argv is None else argv)
    else:
        summary = federate(cfg)
    if summary is not None:  # None: a DDP copy of the command (--devices), which reports nothing
        print(json.dumps(summary), flush=True)
    return summary


def cli() -> None:
    run_main(main)
