"""FedBN (Li et al., 2021): BatchNorm layers stay on each client (--fedbn, beside any algorithm).

The server still averages them, for its own kNN monitor only; they are neither sent nor counted."""

from torch.nn.modules.batchnorm import _BatchNorm

from ssl_zoo.federated.algorithms.base import FedAlgorithm, module_keys


class FedBN(FedAlgorithm):
    name = "fedbn"
    paper = "https://arxiv.org/abs/2102.07623"

    def local_keys(self, model):
        return module_keys(model, [m for m in model.modules() if isinstance(m, _BatchNorm)])
