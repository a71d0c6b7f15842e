"""Federated SSL algorithms, one file each, as hooks on FedAlgorithm (base.py): --fed_algorithm
picks one, with its own options in --fed_algorithm_args; modifiers (FedProx, FedBN, a shared
optimizer state) apply beside any of them, each switched on by its own federate.py option."""

from ssl_zoo.federated.algorithms.base import FedAlgorithm, Stack
from ssl_zoo.federated.algorithms.fedavg import FedAvg
from ssl_zoo.federated.algorithms.fedbn import FedBN
from ssl_zoo.federated.algorithms.fedema import FedEMA
from ssl_zoo.federated.algorithms.fedprox import FedProx
from ssl_zoo.federated.algorithms.fedu import FedU
from ssl_zoo.federated.algorithms.fedx import FedX
from ssl_zoo.federated.algorithms.fusion import Fusion
from ssl_zoo.federated.algorithms.ldawa import LDAWA
from ssl_zoo.federated.algorithms.shared_optimizer import SharedOptimizerState
from ssl_zoo.registry import build

ALGORITHMS: dict[str, type[FedAlgorithm]] = {
    a.name: a for a in (FedAvg, FedEMA, FedU, LDAWA, FedX, Fusion)
}
# federate.py option -> the modifier it switches on; a value other than true is its argument.
MODIFIERS: dict[str, type[FedAlgorithm]] = {
    "fedprox_mu": FedProx,
    "fedbn": FedBN,
    "share_optimizer_state": SharedOptimizerState,
}


def build_algorithm(cfg) -> Stack:
    chosen = [build("fed_algorithm", ALGORITHMS, cfg.fed_algorithm, cfg.fed_algorithm_args)]
    for option, modifier in MODIFIERS.items():
        value = getattr(cfg, option)
        if value:
            chosen.append(modifier() if value is True else modifier(value))
    return Stack(chosen)
