"""FedAvg (McMahan et al., 2017): clients start from the global model, the server takes the
sample-weighted mean of their weights. Every hook of FedAlgorithm is FedAvg's."""

from ssl_zoo.federated.algorithms.base import FedAlgorithm


class FedAvg(FedAlgorithm):
    name = "fedavg"
