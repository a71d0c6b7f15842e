"""What a federated SSL algorithm may change, hook by hook; the defaults are FedAvg.

A round, as both engines run it:
  server: broadcast()                        anything sent to every sampled client besides weights
  client: model <- global state, then the client's own keys (local_keys) from its last round
          client_start(model, global, private, received)   merge the global state into its own
          fit the method's LightningModule, minimising client_loss(model, out, loss) with callbacks()
          client_end(model, global)           what the algorithm keeps on the client till next time
          upload(model, images)               anything sent to the server besides weights
  server: aggregator(global) averages the weights; receive(client, upload) keeps the uploads.

Private entries an algorithm keeps on a client are named "<algorithm>/<what>" so they never meet a
state-dict key. Server state (`self.server_state`) is checkpointed with the federation. An
algorithm's own options are its constructor's keyword arguments (--fed_algorithm_args; a
modifier takes the value of its own federate.py option).
"""

from __future__ import annotations

from typing import ClassVar

import lightning.pytorch as L
from torch import Tensor, nn

from ssl_zoo.errors import UserError
from ssl_zoo.federated.aggregate import WeightedMean
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.base import CAPABILITIES


class FedAlgorithm:
    name: ClassVar[str] = "fedavg"
    paper: ClassVar[str] = "https://arxiv.org/abs/1602.05629"
    # What it needs of a method (keys of ssl_zoo.methods.base.CAPABILITIES); empty: any method.
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self):
        self.server_state: dict = {}

    def check(self, method: str) -> None:
        if self.requires <= METHODS[method].capabilities:
            return
        fitting = [name for name, cls in METHODS.items() if self.requires <= cls.capabilities]
        needs = " and ".join(CAPABILITIES[c] for c in sorted(self.requires))
        raise UserError(f"--fed_algorithm {self.name} works with {', '.join(fitting)} (methods "
                        f"with {needs}), not {method}")  # fmt: skip

    def prepare(self, model: nn.Module) -> None:
        """Change the model once, before its initial state becomes the global one."""

    def local_keys(self, model: nn.Module) -> set[str]:
        """State-dict keys each client keeps its own values of (never loaded from the server)."""
        return set()

    # ---- client --------------------------------------------------------------------------------
    def client_start(
        self, model, global_state: dict, private: dict, received: dict, client: int
    ) -> dict[str, float] | None:
        """After the global state and the client's local keys are loaded, before fitting;
        `received` is what broadcast() sent, `private` may be amended (it is kept). Returns what
        it decided, if anything (FedEMA's mu): rounds.csv logs the mean over the round's clients."""

    def callbacks(self, global_state: dict) -> list[L.Callback]:
        return []

    def client_loss(self, model, views: list[Tensor], out, loss: Tensor) -> Tensor:
        """The loss the client minimises, given the views, the method's StepOutput and the loss
        so far (the method's own, or what the algorithms before this one made of it)."""
        return loss

    def client_end(self, model, global_state: dict) -> dict[str, Tensor]:
        """Private entries kept on the client until its next round."""
        return {}

    def upload(self, model, images) -> dict[str, Tensor]:
        """Tensors sent to the server besides the weights; `images()` gives the client's images,
        normalised as for evaluation."""
        return {}

    # ---- server --------------------------------------------------------------------------------
    def aggregator(self, global_state: dict) -> WeightedMean:
        return WeightedMean()

    def receive(self, client: int, upload: dict[str, Tensor]) -> None:
        """A client's upload reaches the server."""

    def broadcast(self) -> dict[str, Tensor]:
        return {}


def split_entries(tensors: dict[str, Tensor]) -> tuple[dict, dict]:
    """(state-dict entries, algorithms' entries): an algorithm names its tensors "name/...", which
    no state-dict key can be, so they can share a dict (a client's private state, a Flower
    ArrayRecord) with the model's."""
    own = {k: v for k, v in tensors.items() if "/" in k}
    return {k: v for k, v in tensors.items() if k not in own}, own


def module_keys(model: nn.Module, modules: list[nn.Module]) -> set[str]:
    """state_dict keys of the given submodules of `model`."""
    wanted = {id(m) for m in modules}
    keys = set()
    for name, module in model.named_modules():
        if id(module) in wanted:
            keys |= {f"{name}.{k}" for k in module.state_dict()}
    return keys


def target_keys(model: nn.Module) -> set[str]:
    """state_dict keys of the momentum networks (BYOL's target, MoCo's key encoder)."""
    return module_keys(model, [ema for _, ema in model.momentum_pairs()])


class LocalTarget(FedAlgorithm):
    """FedEMA and FedU: for methods with a predictor; the target network stays on the client."""

    requires = frozenset({"predictor"})

    def local_keys(self, model):
        return target_keys(model)


def distance(a: dict[str, Tensor], b: dict[str, Tensor], keys) -> float:
    """Euclidean distance between two models over `keys`."""
    total = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys)
    return total**0.5


def floats(state: dict[str, Tensor], keys) -> list[str]:
    return sorted(k for k in keys if state[k].is_floating_point())


class Stack:
    """The chosen algorithm and the modifiers given beside it (--fedprox_mu, --fedbn): every
    hook runs each in turn; the first (the chosen one) aggregates."""

    def __init__(self, algorithms: list[FedAlgorithm]):
        self.algorithms = algorithms
        self.main = algorithms[0]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.algorithms]

    def check(self, method: str) -> None:
        for a in self.algorithms:
            a.check(method)

    def prepare(self, model) -> None:
        for a in self.algorithms:
            a.prepare(model)

    def local_keys(self, model) -> set[str]:
        return set().union(*(a.local_keys(model) for a in self.algorithms))

    def client_start(self, model, global_state, private, received, client) -> dict[str, float]:
        metrics = {}
        for a in self.algorithms:
            metrics |= a.client_start(model, global_state, private, received, client) or {}
        return metrics

    def callbacks(self, global_state) -> list[L.Callback]:
        return [c for a in self.algorithms for c in a.callbacks(global_state)]

    def client_loss(self, model, views, out) -> Tensor:
        loss = out.loss
        for a in self.algorithms:
            loss = a.client_loss(model, views, out, loss)
        return loss

    def client_end(self, model, global_state) -> dict[str, Tensor]:
        return {k: v for a in self.algorithms for k, v in a.client_end(model, global_state).items()}

    def upload(self, model, images) -> dict[str, Tensor]:
        return {k: v for a in self.algorithms for k, v in a.upload(model, images).items()}

    def aggregator(self, global_state) -> WeightedMean:
        return self.main.aggregator(global_state)

    def receive(self, client: int, upload: dict[str, Tensor]) -> None:
        for a in self.algorithms:
            a.receive(client, upload)

    def broadcast(self) -> dict[str, Tensor]:
        return {k: v for a in self.algorithms for k, v in a.broadcast().items()}

    def state_dict(self) -> dict:
        return {a.name: a.server_state for a in self.algorithms}

    def load_state_dict(self, state: dict) -> None:
        for a in self.algorithms:
            a.server_state = state.get(a.name, {})
