"""Augmentation views, configured in one place: which lightly transform each method uses, sized and
normalised for the dataset, plus the deterministic transform used for kNN and probes."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torchvision.transforms as T
from lightly.transforms import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
    SimCLRTransform,
    VICRegTransform,
)

from ssl_zoo.errors import UserError, unknown_choice


def _byol(**kwargs) -> BYOLTransform:
    # BYOL's two views differ (blur 1.0 vs 0.1, solarisation 0 vs 0.2); options set both.
    return BYOLTransform(BYOLView1Transform(**kwargs), BYOLView2Transform(**kwargs))


def _signature_of(factory: Callable) -> Callable:
    return BYOLView1Transform if factory is _byol else factory


VIEW_FACTORIES: dict[str, Callable] = {
    "simclr": SimCLRTransform,
    "byol": _byol,
    "vicreg": VICRegTransform,
}


def build_views(kind: str, image_size: int, normalize: dict, options: dict | None = None):
    """The training transform: a PIL image -> a list of augmented view tensors."""
    if kind not in VIEW_FACTORIES:
        raise unknown_choice("view pipeline", kind, VIEW_FACTORIES)
    factory = VIEW_FACTORIES[kind]
    options = dict(options or {})
    accepted = set(inspect.signature(_signature_of(factory)).parameters) - {
        "input_size",
        "normalize",
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(
            f"unknown views option(s) {', '.join(unknown)} for the {kind} views; "
            f"valid: {', '.join(sorted(accepted))}"
        )
    return factory(input_size=image_size, normalize=normalize, **options)


def eval_transform(image_size: int, normalize: dict) -> T.Compose:
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean=normalize["mean"], std=normalize["std"]),
        ]
    )
