"""Augmentation views, configured in one place: which lightly transform each method uses, sized and
normalised for the dataset, plus the deterministic transform used for kNN and probes.

A view pipeline maps one PIL image to a list of tensors. Two-view methods get two; multi-crop
methods (DINO, SwAV) get their global crops first, then the smaller local crops.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torchvision.transforms as T
from lightly.transforms import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
    DINOTransform,
    SimCLRTransform,
    SimCLRViewTransform,
    SwaVTransform,
    VICRegTransform,
)

from ssl_zoo.errors import UserError, unknown_choice


@dataclass(frozen=True)
class ViewPipeline:
    """How to build one kind of views: the lightly class whose options users may set, how the
    dataset's image size and normalisation enter it, and which two-view option names it also
    understands, so that one data-level setting (no blur on 32 px, a crop floor) fits every method."""

    options_of: type
    build: Callable[..., Callable]  # (image_size, normalize, **options) -> transform
    sized_by: tuple[str, ...] = ("input_size",)
    aliases: tuple[str, ...] = ()


def _byol(size, normalize, **options):
    # BYOL's two views differ (blur 1.0 vs 0.1, solarisation 0 vs 0.2); options set both.
    view1 = BYOLView1Transform(input_size=size, normalize=normalize, **options)
    view2 = BYOLView2Transform(input_size=size, normalize=normalize, **options)
    return BYOLTransform(view1, view2)


def _dino(size, normalize, min_scale=None, **options):
    # Local crops at half the global size keep lightly's 224/96 ratio roughly for small images.
    options.setdefault("local_crop_size", max(size // 2, 8))
    if min_scale is not None:  # the two-view crop floor applies to the global crops
        options["global_crop_scale"] = (min_scale, 1.0)
    if isinstance(options.get("gaussian_blur"), int | float):  # one probability for all crops
        options["gaussian_blur"] = (options["gaussian_blur"],) * 3
    return DINOTransform(global_crop_size=size, normalize=normalize, **options)


def _swav(size, normalize, min_scale=None, **options):
    options.setdefault("crop_sizes", (size, max(size // 2, 8)))
    if min_scale is not None:  # the two-view crop floor applies to the high-resolution crops
        floors = list(options.get("crop_min_scales", (0.14, 0.05)))
        options["crop_min_scales"] = (min_scale, *floors[1:])
    return SwaVTransform(normalize=normalize, **options)


class SingleView:
    """One SimCLR-style view: RotNet makes its four rotations itself, so its labels are exact."""

    def __init__(self, **options):
        self.transform = SimCLRViewTransform(**options)

    def __call__(self, image):
        return [self.transform(image)]


def _simple(cls):
    return lambda size, normalize, **options: cls(input_size=size, normalize=normalize, **options)


PIPELINES: dict[str, ViewPipeline] = {
    "simclr": ViewPipeline(SimCLRTransform, _simple(SimCLRTransform)),
    "byol": ViewPipeline(BYOLView1Transform, _byol),
    "vicreg": ViewPipeline(VICRegTransform, _simple(VICRegTransform)),
    "dino": ViewPipeline(DINOTransform, _dino, ("global_crop_size",), ("min_scale",)),
    "swav": ViewPipeline(SwaVTransform, _swav, (), ("min_scale",)),
    "rotation": ViewPipeline(SimCLRViewTransform, _simple(SingleView)),
}


def build_views(kind: str, image_size: int, normalize: dict, options: dict | None = None):
    """The training transform: a PIL image -> a list of augmented view tensors."""
    if kind not in PIPELINES:
        raise unknown_choice("view pipeline", kind, PIPELINES)
    pipeline = PIPELINES[kind]
    options = dict(options or {})
    accepted = set(inspect.signature(pipeline.options_of).parameters)
    accepted = (accepted | set(pipeline.aliases)) - {"self", "normalize"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(
            f"unknown views option(s) {', '.join(unknown)} for the {kind} views; "
            f"valid: {', '.join(sorted(accepted))}"
        )
    # The crop size defaults to the images' own; a smaller one trains faster, and a network
    # trained on random-resized crops sees objects larger than a centre view shows them, so it
    # can test best at a higher resolution than it trained at (Touvron et al., 2019, FixRes).
    size = options.pop(pipeline.sized_by[0], image_size) if pipeline.sized_by else image_size
    if not isinstance(size, int) or size < 1:
        raise UserError(
            f"views {pipeline.sized_by[0]} must be a positive number of pixels, not {size!r}"
        )
    try:
        return pipeline.build(size, normalize, **options)
    except (ValueError, TypeError) as err:
        raise bad_views_options(options, err) from None


def bad_views_options(options: dict, err: Exception) -> UserError:
    """lightly's and torchvision's transforms check most values themselves (a probability above
    1, a negative jitter strength): their own reason, in one line, with the options given."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return UserError(
        f"the views cannot be made with the options {options} ({reason}); check their values "
        "(scales and probabilities lie in [0, 1], a minimum below its maximum)"
    )


class RepeatedViews:
    """Draw the views of a pipeline `n` times: the candidates of Hard View Selection."""

    def __init__(self, transform: Callable, n: int):
        self.transform, self.n = transform, n

    def __call__(self, image):
        return [view for _ in range(self.n) for view in self.transform(image)]


def eval_transform(image_size: int, normalize: dict) -> T.Compose:
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean=normalize["mean"], std=normalize["std"]),
        ]
    )
