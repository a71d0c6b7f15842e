"""Shared optimizer state (--share_optimizer_state, beside any algorithm): every client starts a
round from the mean of the optimizer states (AdamW's moments and step count, SGD's momentum) that
the previous round's clients ended with, instead of an optimizer built from nothing.

Why: a client's fit builds a new optimizer, so each round AdamW restarts its moment estimates and
bias correction: its first steps move every weight by about the learning rate whatever its
gradient's noise, and short rounds are made mostly of such steps. A centralized run keeps its
moments. With the clients' mean, a round continues the moments a centralized run of the same
steps would have, up to the spread between clients. The cost is the state itself on the wire:
AdamW keeps two tensors per parameter, so a round sends about three times the weights' bytes each
way (counted in bytes_up / bytes_down).
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import Tensor

from ssl_zoo.federated.algorithms.base import FedAlgorithm

PREFIX = "optimizer/"


def parameters(trainer: L.Trainer):
    """(optimizer index, parameter index, optimizer, parameter): the order names the state."""
    for o, optimizer in enumerate(trainer.optimizers):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for i, param in enumerate(params):
            yield o, i, optimizer, param


def optimizer_tensors(trainer: L.Trainer) -> dict[str, Tensor]:
    """The optimizers' per-parameter state as named tensors: optimizer/<opt>.<param>.<key>."""
    out = {}
    for o, i, optimizer, param in parameters(trainer):
        for key, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value):
                out[f"{PREFIX}{o}.{i}.{key}"] = value.detach().cpu().clone()
    return out


def load_optimizer_tensors(trainer: L.Trainer, tensors: dict[str, Tensor]) -> None:
    for o, i, optimizer, param in parameters(trainer):
        head = f"{PREFIX}{o}.{i}."
        state = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
        if state:
            optimizer.state[param] = {k: like(param, v) for k, v in state.items()}


def like(param: Tensor, value: Tensor) -> Tensor:
    """A state tensor as the optimizer would have made it. Moments take the parameter's memory
    layout: a fused step reads the moment and the weight element by element in memory order, so
    a channels_last weight with a contiguous moment (as they arrive through Flower's records)
    pairs each weight with another element's moment. The step count stays a float scalar on the
    parameter's device."""
    if value.shape == param.shape:
        return torch.empty_like(param, dtype=value.dtype).copy_(value)
    return value.to(param.device).clone()


class CarryOptimizerState(L.Callback):
    def __init__(self, algorithm: SharedOptimizerState):
        self.algorithm = algorithm

    def on_train_start(self, trainer, pl_module) -> None:
        load_optimizer_tensors(trainer, self.algorithm.start_state)

    def on_train_end(self, trainer, pl_module) -> None:
        self.algorithm.end_state = optimizer_tensors(trainer)


class SharedOptimizerState(FedAlgorithm):
    name = "shared_optimizer_state"
    # The nearest reference, not the source: adaptive optimizers in FL (Reddi et al., 2021).
    # Averaging the clients' own moments is this project's lever, measured in docs/.
    paper = "https://arxiv.org/abs/2003.00295"

    def __init__(self):
        super().__init__()
        self.start_state: dict[str, Tensor] = {}
        self.end_state: dict[str, Tensor] = {}

    # ---- client --------------------------------------------------------------------------------
    def client_start(self, model, global_state, private, received, client):
        self.start_state = {k: v for k, v in received.items() if k.startswith(PREFIX)}

    def callbacks(self, global_state):
        return [CarryOptimizerState(self)]

    def upload(self, model, images):
        state, self.end_state = self.end_state, {}
        return state

    # ---- server --------------------------------------------------------------------------------
    def receive(self, client, upload):
        """A running sum over the round's clients (memory flat in their number)."""
        mine = {k: v for k, v in upload.items() if k.startswith(PREFIX)}
        if not mine:
            return
        pending = self.server_state.setdefault("sum", {})
        for key, value in mine.items():
            pending[key] = pending[key] + value.double() if key in pending else value.double()
        self.server_state["clients"] = self.server_state.get("clients", 0) + 1

    def broadcast(self):
        """Called once at the start of a round: the last round's sum becomes the mean sent."""
        if self.server_state.get("clients"):
            count = self.server_state.pop("clients")
            self.server_state["mean"] = {
                k: (v / count).float() for k, v in self.server_state.pop("sum").items()
            }
        return dict(self.server_state.get("mean", {}))
