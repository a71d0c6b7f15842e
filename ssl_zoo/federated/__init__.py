"""Federated SSL: FedAvg over clients that train the very same LightningModules as train.py."""
