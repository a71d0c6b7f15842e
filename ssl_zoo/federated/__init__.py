"""Federated SSL: clients train the very same LightningModules as train.py; the federated
algorithms (FedAvg, FedEMA, FedU, L-DAWA, FedX, feature fusion) are hooks around that training."""
