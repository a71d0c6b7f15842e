"""L-DAWA (Rehman et al., ICCV 2023, "L-DAWA: Layer-wise Divergence Aware Weight Aggregation in
Federated Self-Supervised Visual Representation Learning"), server side, for any method.

Each client's layer l is weighted by its cosine similarity to the previous global model's,

    delta_k^l = cos(w_k^l, w_g^l),   w_g^l <- (1/K) * sum_k delta_k^l * w_k^l,

over the K clients of the round, so a layer that has turned away from the global model counts
less (and shrinks the average). A layer is one parameter tensor. A layer whose global weights are
all zero (a bias before its first update) has no direction to compare against: it takes
delta = 1. Buffers (BatchNorm statistics) are averaged by sample counts, as in FedAvg.
"""

import torch
import torch.nn.functional as F

from ssl_zoo.federated.aggregate import WeightedMean
from ssl_zoo.federated.algorithms.base import FedAlgorithm


def layer_cosine(local: torch.Tensor, global_: torch.Tensor) -> float:
    a, b = local.double().flatten(), global_.double().flatten()
    if not a.norm() or not b.norm():
        return 1.0
    return float(F.cosine_similarity(a, b, dim=0))


class LayerCosineMean(WeightedMean):
    def __init__(self, global_state: dict[str, torch.Tensor], layers: set[str]):
        super().__init__()
        self.global_state, self.layers = global_state, layers
        self._layer_sums: dict[str, torch.Tensor] = {}

    def add(self, state, weight):
        if weight <= 0:
            return
        super().add({k: v for k, v in state.items() if k not in self.layers}, weight)
        for key in self.layers & state.keys():  # a momentum network kept local is not sent
            value = state[key].detach().cpu()
            delta = layer_cosine(value, self.global_state[key])
            if key in self._layer_sums:
                self._layer_sums[key].add_(value, alpha=delta)
            else:
                self._layer_sums[key] = value.to(torch.float64, copy=True).mul_(delta)

    def result(self):
        out = super().result()
        for key, total in self._layer_sums.items():
            out[key] = (total / self.clients).to(self.global_state[key].dtype)
        return out


class LDAWA(FedAlgorithm):
    name = "ldawa"
    paper = "https://arxiv.org/abs/2307.07393"

    def prepare(self, model):
        self.layers = {n for n, p in model.named_parameters() if p.is_floating_point()}

    def aggregator(self, global_state):
        return LayerCosineMean(global_state, self.layers)
