"""ssl_zoo: centralized and federated self-supervised learning with PyTorch Lightning."""

__version__ = "0.1.0"
