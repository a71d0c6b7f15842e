"""FedBN (Li et al., 2021): BatchNorm layers stay on each client (--fedbn, beside any algorithm).

They are never sent to a client. The server still averages the clients' layers for its own kNN
monitor only: on Flower they travel up in the reply, uncounted in bytes_up (a monitor's cost)."""

from torch.nn.modules.batchnorm import _BatchNorm

from ssl_zoo.federated.algorithms.base import FedAlgorithm, module_keys


class FedBN(FedAlgorithm):
    name = "fedbn"
    paper = "https://arxiv.org/abs/2102.07623"

    def local_keys(self, model):
        return module_keys(model, [m for m in model.modules() if isinstance(m, _BatchNorm)])
