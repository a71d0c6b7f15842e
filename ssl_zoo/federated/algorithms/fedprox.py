"""FedProx (Li et al., 2020): a proximal term mu/2 * ||w - w_global||^2 keeps each client near the
global model. Applied as its gradient after each backward (--fedprox_mu, beside any algorithm)."""

import lightning.pytorch as L
import torch

from ssl_zoo.federated.algorithms.base import FedAlgorithm


class ProximalGradient(L.Callback):
    def __init__(self, mu: float, global_state: dict[str, torch.Tensor]):
        self.mu, self.global_state = mu, global_state

    def on_after_backward(self, trainer, pl_module) -> None:
        for name, param in pl_module.named_parameters():
            if param.grad is not None and name in self.global_state:
                anchor = self.global_state[name].to(param.device)
                param.grad.add_(param.detach() - anchor, alpha=self.mu)


class FedProx(FedAlgorithm):
    name = "fedprox"
    paper = "https://arxiv.org/abs/1812.06127"

    def __init__(self, mu: float):
        super().__init__()
        self.mu = mu

    def callbacks(self, global_state):
        return [ProximalGradient(self.mu, global_state)]
