"""The method zoo: name -> LightningModule class, each in its own file."""

from __future__ import annotations

from ssl_zoo.methods.barlowtwins import BarlowTwins
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.methods.byol import BYOL
from ssl_zoo.methods.dino import DINO
from ssl_zoo.methods.mocov2 import MoCoV2
from ssl_zoo.methods.nnclr import NNCLR
from ssl_zoo.methods.rotnet import RotNet
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.methods.simsiam import SimSiam
from ssl_zoo.methods.swav import SwAV
from ssl_zoo.methods.vicreg import VICReg
from ssl_zoo.registry import build, options_of

METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "mocov2": MoCoV2,
    "nnclr": NNCLR,
    "byol": BYOL,
    "simsiam": SimSiam,
    "dino": DINO,
    "vicreg": VICReg,
    "barlowtwins": BarlowTwins,
    "swav": SwAV,
    "rotnet": RotNet,
}


def method_options(name: str) -> dict[str, object]:
    """The method's own hyper-parameters and their defaults."""
    return options_of(METHODS[name])


def build_method(name: str, method_args: dict | None = None, **shared) -> SSLMethod:
    return build("method", METHODS, name, method_args, **shared)
