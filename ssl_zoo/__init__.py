"""ssl_zoo: centralized and federated self-supervised learning with PyTorch Lightning."""

__version__ = "0.1.0"

import warnings

# Lightning 2.6 on torch 2.14 warns about a torch pytree API on every fit; it is not ours to fix.
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
