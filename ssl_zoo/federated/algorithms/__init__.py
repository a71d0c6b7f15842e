"""Federated SSL algorithms, one file each, as hooks on FedAlgorithm (base.py): --fed_algorithm
picks one; FedProx (--fedprox_mu), FedBN (--fedbn) and a shared optimizer state
(--share_optimizer_state) apply beside any of them."""

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

ALGORITHMS: dict[str, type[FedAlgorithm]] = {
    a.name: a for a in (FedAvg, FedEMA, FedU, LDAWA, FedX, Fusion)
}


def build_algorithm(cfg) -> Stack:
    chosen = [ALGORITHMS[cfg.fed_algorithm](cfg)]
    if cfg.fedprox_mu > 0:
        chosen.append(FedProx(cfg))
    if cfg.fedbn:
        chosen.append(FedBN(cfg))
    if cfg.share_optimizer_state:
        chosen.append(SharedOptimizerState(cfg))
    return Stack(chosen)
