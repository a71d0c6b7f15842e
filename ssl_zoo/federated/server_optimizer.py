"""The server's step on the clients' averaged update (Reddi et al., 2021, "Adaptive Federated
Optimization"; Hsu et al., 2019, FedAvgM), with the update rules and defaults of Flower's FedAvgM,
FedAdam and FedYogi strategies, so a run on either engine means the same thing.

With x the global model and a the clients' sample-weighted average, the pseudo-gradient is
d = a - x. `sgd` with lr 1 and momentum 0 is plain FedAvg (x <- a); other settings are FedAvgM:
v <- momentum * v + d (v = d in the first round), x <- x + lr * v. `adam` and `yogi` keep
m <- b1 * m + (1 - b1) * d and a second moment v (Adam: v <- b2 v + (1 - b2) d^2; Yogi:
v <- v - (1 - b2) d^2 sign(v - d^2)) and step x <- x + lr' * m / (sqrt(v) + tau), where Adam's lr' is
bias-corrected as in Flower's FedAdam.

Why a server learning rate: K clients that each take s local steps from the same global model
return updates that each look like s steps; their average is still about s steps long (less noisy,
not longer), while a centralized run with the same compute takes K * s steps. For IID clients and
SGD this is large-batch training, whose linear scaling rule asks for lr x K on the averaged update.

The rule is applied to the model's parameters (momentum networks included). Buffers, i.e.
BatchNorm's running statistics, are averages of data statistics, not optimisation variables:
they take the clients' average as it is (an extrapolated variance could turn negative).
"""

from __future__ import annotations

import math

import torch

SERVER_OPTIMIZERS = ("sgd", "adam", "yogi")


class ServerOptimizer:
    def __init__(self, name: str, lr: float, momentum: float, keys: set[str],
                 beta2: float = 0.99, tau: float = 1e-3):  # fmt: skip
        self.name, self.lr, self.momentum, self.keys = name, lr, momentum, keys
        self.beta2, self.tau = beta2, tau
        self.steps = 0
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    @property
    def is_fedavg(self) -> bool:
        return self.name == "sgd" and self.lr == 1.0 and self.momentum == 0.0

    def step(self, current: dict[str, torch.Tensor], averaged: dict[str, torch.Tensor]):
        """The new global state from the current one and the clients' average."""
        # Keys no client uploads (a momentum network kept on the clients) keep their values.
        new = {**current, **averaged}
        if self.is_fedavg:
            return new
        self.steps += 1
        for key in self.keys:
            x = current[key].float()
            d = averaged[key].float() - x
            if self.name == "sgd":
                v = self.v[key].mul_(self.momentum).add_(d) if key in self.v else d
                if self.momentum:
                    self.v[key] = v
                step = v.mul(self.lr)
            else:
                m = self.m.setdefault(key, torch.zeros_like(d)).mul_(self.momentum)
                m.add_(d, alpha=1 - self.momentum)
                v = self.v.setdefault(key, torch.zeros_like(d))
                if self.name == "adam":
                    v.mul_(self.beta2).addcmul_(d, d, value=1 - self.beta2)
                    t = self.steps + 1  # Flower's FedAdam counts from server round + 1
                    lr = self.lr * math.sqrt(1 - self.beta2**t) / (1 - self.momentum**t)
                else:
                    d2 = d * d
                    v.sub_(d2.mul_(torch.sign(v - d2)).mul_(1 - self.beta2))
                    lr = self.lr
                step = m / (v.sqrt() + self.tau) * lr
            new[key] = (x + step).to(current[key].dtype)
        return new

    def state_dict(self) -> dict:
        return {"steps": self.steps, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.m, self.v = state["steps"], state["m"], state["v"]
