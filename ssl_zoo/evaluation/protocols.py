"""The evaluation protocols by name (evaluate.py --protocol), one class each (their base:
ssl_zoo/evaluation/protocol.py). `--protocol all` runs every protocol that scores features."""

from __future__ import annotations

from dataclasses import asdict

from ssl_zoo.detection.protocol import Detection
from ssl_zoo.errors import UserError, unknown_choice
from ssl_zoo.evaluation.finetune import FineTune
from ssl_zoo.evaluation.knn import KNN
from ssl_zoo.evaluation.linear import Linear
from ssl_zoo.evaluation.protocol import Protocol
from ssl_zoo.registry import options_of

PROTOCOLS: dict[str, type[Protocol]] = {p.name: p for p in (KNN, Linear, FineTune, Detection)}
ALL = [name for name, protocol in PROTOCOLS.items() if protocol.on_features]


def build_protocols(cfg) -> list[Protocol]:
    """The protocols --protocol names, each given its options: those named like an evaluate.py
    option take its value, the others --protocol_args's (an unknown one is an error)."""
    names = ALL if cfg.protocol == "all" else [cfg.protocol]
    if cfg.protocol != "all" and cfg.protocol not in PROTOCOLS:
        raise unknown_choice("protocol", cfg.protocol, [*PROTOCOLS, "all"])
    given = asdict(cfg)
    built, claimed = [], set()
    for name in names:
        wanted = options_of(PROTOCOLS[name])
        own = {k: cfg.protocol_args[k] for k in wanted if k in cfg.protocol_args and k not in given}
        shared = {k: given[k] for k in wanted if k in given and k != "protocol_args"}
        claimed |= set(own)
        built.append(PROTOCOLS[name](**shared, **own))
    unknown = sorted(set(cfg.protocol_args) - claimed)
    if unknown:
        valid = sorted({k for n in names for k in options_of(PROTOCOLS[n]) if k not in given})
        raise UserError(f"unknown protocol_args {', '.join(unknown)} for {cfg.protocol}; "
                        f"valid: {', '.join(valid) or '(none)'}")  # fmt: skip
    return built
