"""lightly's view transforms, run as batched tensor operations on whole uint8 batches.

A `BatchViews` is compiled from the lightly transform that `ssl_zoo.views.build_views` makes, so
both paths share one source of parameters: crop scale and ratio, flip, 90-degree rotation, colour
jitter ranges (applied in a random order per image, as torchvision does), grayscale, Gaussian blur
sigmas, solarisation and normalisation are read off the lightly objects. Every image draws its
own parameters. It runs wherever the batch is: in DataLoader workers, or on the GPU after transfer.

Deviations from the PIL path, kept because they are small and cheap: crops are resampled with one
`grid_sample` (no antialiasing when a crop is shrunk), and blur is an exact Gaussian of the drawn
sigma where PIL approximates one with box filters.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.transforms.multi_view_transform import MultiViewTransform
from torch import Tensor

from ssl_zoo.errors import UserError

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, rounded as torchvision does


@dataclass
class ViewParams:
    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    hflip: float = 0.0
    vflip: float = 0.0
    rotate: float = 0.0
    rotate_quarters: int = 1
    jitter: float = 0.0
    brightness: tuple[float, float] | None = None
    contrast: tuple[float, float] | None = None
    saturation: tuple[float, float] | None = None
    hue: tuple[float, float] | None = None
    grayscale: float = 0.0
    blur: float = 0.0
    blur_sigmas: tuple[float, float] = (0.1, 2.0)
    solarize: float = 0.0
    solarize_threshold: float = 128 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


def _pair(value) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


LEAVES = ("RandomApply", "ToTensor", "Normalize", "RandomResizedCrop")


def _steps(transform):
    """The flat list of steps inside nested Compose objects and lightly's view wrappers."""
    if type(transform).__name__ in LEAVES:
        yield transform
    elif isinstance(getattr(transform, "transforms", None), list | tuple):
        for inner in transform.transforms:
            yield from _steps(inner)
    elif callable(getattr(transform, "transform", None)) and not inspect.ismethod(
        transform.transform
    ):
        yield from _steps(transform.transform)
    else:
        yield transform


def params_of(view) -> ViewParams:
    """Read one lightly view transform (a Compose of torchvision and lightly steps)."""
    found: dict = {}
    for step in _steps(view):
        kind = type(step).__name__
        if kind == "RandomResizedCrop":
            size = step.size if isinstance(step.size, int) else step.size[0]
            interpolation = getattr(step.interpolation, "value", str(step.interpolation))
            found.update(size=int(size), scale=_pair(step.scale), ratio=_pair(step.ratio),
                         interpolation=str(interpolation).lower())  # fmt: skip
        elif kind == "RandomHorizontalFlip":
            found["hflip"] = float(step.p)
        elif kind == "RandomVerticalFlip":
            found["vflip"] = float(step.p)
        elif kind == "RandomRotate":
            if step.angle % 90:
                raise UserError(
                    f"batched views rotate by multiples of 90 degrees, not {step.angle}"
                )
            found.update(rotate=float(step.prob), rotate_quarters=int(step.angle // 90) % 4)
        elif kind == "RandomApply" and [type(t).__name__ for t in step.transforms] == [
            "ColorJitter"
        ]:
            jitter = step.transforms[0]
            found.update(jitter=float(step.p), brightness=_pair(jitter.brightness),
                         contrast=_pair(jitter.contrast), saturation=_pair(jitter.saturation),
                         hue=_pair(jitter.hue))  # fmt: skip
        elif kind == "ColorJitter":  # always applied; SwaV's views hold one with no ranges
            ranges = [_pair(getattr(step, name)) for name, _ in JITTERS]
            if any(ranges):
                found.update(jitter=1.0, **dict(zip([n for n, _ in JITTERS], ranges, strict=True)))
        elif kind == "RandomGrayscale":
            found["grayscale"] = float(step.p)
        elif kind == "GaussianBlur" and hasattr(step, "sigmas"):
            found.update(blur=float(step.prob), blur_sigmas=_pair(step.sigmas))
        elif kind == "RandomSolarization":
            found.update(solarize=float(step.prob), solarize_threshold=step.threshold / 255)
        elif kind == "Normalize":
            found.update(mean=tuple(map(float, step.mean)), std=tuple(map(float, step.std)))
        elif kind != "ToTensor":
            raise UserError(
                f"batched views cannot run {kind}; use --augment pil for this view pipeline"
            )
    if "size" not in found:
        raise UserError("batched views need a RandomResizedCrop in every view; use --augment pil")
    return ViewParams(**found)


def crop_boxes(n: int, height: int, width: int, scale, ratio, device, attempts: int = 10) -> Tensor:
    """(n, 4) boxes (top, left, h, w) drawn as torchvision's RandomResizedCrop.get_params does:
    up to 10 tries of area ~ U(scale) and log-ratio ~ U(log ratio), else a centre crop."""
    area = height * width
    target = area * torch.empty(n, attempts, device=device).uniform_(*scale)
    log_ratio = torch.empty(n, attempts, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1])
    )
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = ok.float().argmax(dim=1)  # index of the first valid try
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    # Fallback: the whole image, its aspect ratio clamped into the range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    none = ~ok.any(dim=1)
    w = torch.where(none, torch.full_like(w, fw), w)
    h = torch.where(none, torch.full_like(h, fh), h)
    top = torch.floor(torch.rand(n, device=device) * (height - h + 1))
    left = torch.floor(torch.rand(n, device=device) * (width - w + 1))
    top = torch.where(none, (height - h).div(2).floor(), top)
    left = torch.where(none, (width - w).div(2).floor(), left)
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(images: Tensor, boxes: Tensor, size: int, flip: Tensor, mode: str) -> Tensor:
    """Crop each image to its box and resize it to size x size, mirrored where `flip`, in one
    grid_sample (align_corners=False maps pixel edges to +-1, as PIL crops do). With k times as
    many boxes as images, row j * N + i of the result is the j-th crop of image i.

    The crops are axis-aligned, so the sampling grid is an outer product of one row of x and one
    column of y per crop; building it so costs a tenth of affine_grid's batched matmul. The k
    crops of an image are sampled as one grid k crops tall, so the images are never copied k times
    (DINO's six local crops of 224-px images would take 0.9 GB more at batch 256)."""
    n, channels, height, width = images.shape
    k = len(boxes) // n
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    centres = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) / size
    u = torch.where(flip[:, None], 1 - centres, centres)  # mirrored crops read right to left
    x = (2 * (left[:, None] + w[:, None] * u) / width - 1).view(k * n, 1, size, 1)
    y = (2 * (top[:, None] + h[:, None] * centres) / height - 1).view(k * n, size, 1, 1)
    grid = torch.cat([x.expand(-1, size, size, 1), y.expand(-1, size, size, 1)], dim=3)
    grid = grid.view(k, n, size, size, 2).transpose(0, 1).reshape(n, k * size, size, 2)
    mode = "bicubic" if mode == "bicubic" else "bilinear"
    out = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)
    out = (
        out.view(n, channels, k, size, size)
        .permute(2, 0, 1, 3, 4)
        .reshape(k * n, channels, size, size)
    )
    return out.clamp_(0, 1) if mode == "bicubic" else out


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x, f):
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, _gray(x), f)


def _hue(x: Tensor, f: Tensor) -> Tensor:
    """Rotate the HSV hue by f (in turns) keeping value and saturation: the same result as
    torchvision's adjust_hue, from max, min and chroma directly, without a full HSV round trip."""
    r, g, b = x.unbind(1)
    top, bottom = x.amax(1), x.amin(1)
    chroma = top - bottom
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # Hue in sixths of a turn, in [-1, 5); float remainder is slow on CPU, so wrap with floor.
    h = torch.where(
        top == r,
        (g - b) / safe,
        torch.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    h = h + 6 * f.view(-1, 1, 1)
    h = h - 6 * torch.floor(h / 6)
    # hsv -> rgb: channel n takes top - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    k = HUE_OFFSETS.to(x) + h.unsqueeze(1)
    k = k - 6 * (k >= 6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return top.unsqueeze(1) - chroma.unsqueeze(1) * ramp


HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)


JITTERS = (("brightness", _brightness), ("contrast", _contrast),
           ("saturation", _saturation), ("hue", _hue))  # fmt: skip


def color_jitter(x: Tensor, p: ViewParams) -> Tensor:
    """torchvision's ColorJitter per image: each factor ~ U(range), the four in a random order.

    At each position of the order the images are regrouped by the operation they are due, so that
    every operation runs once on a contiguous slice: one gather per position instead of a gather
    and a scatter per position and operation (docs/performance.md)."""
    n = len(x)
    ranges = [(fn, r) for name, fn in JITTERS if (r := getattr(p, name))]
    if not ranges:
        return x
    factors = torch.stack([torch.empty(n, device=x.device).uniform_(*r) for _, r in ranges], 1)
    order = torch.rand(n, len(ranges), device=x.device).argsort(dim=1)
    at = torch.arange(n, device=x.device)  # at[i]: the image now in row i
    for position in range(len(ranges)):
        regroup = order[at, position].argsort()
        at, x = at[regroup], x[regroup]
        due = order[at, position]
        start = 0
        for op, count in enumerate(torch.bincount(due, minlength=len(ranges)).tolist()):
            if count:
                rows = slice(start, start + count)
                x[rows] = ranges[op][0](x[rows], factors[at[rows], op])
                start += count
    return torch.empty_like(x).index_copy_(0, at, x)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one sigma per image (reflect padding), as a grouped conv."""
    n, c, height, width = x.shape
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), min(height, width) - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, k)
    y = F.pad(x.reshape(1, n * c, height, width), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c)
    return y.reshape(n, c, height, width)


def _chance(n: int, p: float, device) -> Tensor:
    """Indices of the images a step with probability p applies to."""
    if p <= 0:
        return torch.empty(0, dtype=torch.long, device=device)
    return (torch.rand(n, device=device) < p).nonzero().squeeze(1)


class BatchView(torch.nn.Module):
    """One view: float images in [0, 1], (N, 3, H, W) -> normalised (N, 3, size, size)."""

    def __init__(self, params: ViewParams):
        super().__init__()
        self.p = params
        self.register_buffer("mean", torch.tensor(params.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(params.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor, copies: int = 1) -> Tensor:
        """`copies` views of every image, copy-major (row j * N + i: copy j of image i)."""
        p, n, device = self.p, copies * len(images), images.device
        boxes = crop_boxes(n, images.shape[2], images.shape[3], p.scale, p.ratio, device)
        flip = torch.rand(n, device=device) < p.hflip
        x = resized_crops(images, boxes, p.size, flip, p.interpolation)
        if (idx := _chance(n, p.vflip, device)).numel():
            x[idx] = x[idx].flip(2)
        if (idx := _chance(n, p.rotate, device)).numel():
            x[idx] = torch.rot90(x[idx], p.rotate_quarters, dims=(2, 3))  # counter-clockwise
        if (idx := _chance(n, p.jitter, device)).numel():
            x[idx] = color_jitter(x[idx], p)
        if (idx := _chance(n, p.grayscale, device)).numel():
            x[idx] = _gray(x[idx]).expand(-1, 3, -1, -1)
        if (idx := _chance(n, p.blur, device)).numel():
            sigma = torch.empty(len(idx), device=device).uniform_(*p.blur_sigmas)
            x[idx] = gaussian_blur(x[idx], sigma)
        if (idx := _chance(n, p.solarize, device)).numel():
            part = x[idx]
            x[idx] = torch.where(part >= p.solarize_threshold, 1 - part, part)
        return (x - self.mean) / self.std


class BatchViews(torch.nn.Module):
    """uint8 images (N, 3, H, W) -> the list of view batches a method trains on.

    Views with the same parameters (SimCLR's two, the repeats of Hard View Selection, DINO's local
    crops) are made in one call, k views of every image: each view still draws its own
    parameters, and the fixed cost of the ~150 small tensor ops per call is paid once."""

    batched = True

    def __init__(self, views: list[ViewParams], repeats: int = 1):
        super().__init__()
        self.views = torch.nn.ModuleList(BatchView(p) for p in views)
        params = [p for _ in range(repeats) for p in views]  # the output list, view by view
        distinct = [p for i, p in enumerate(params) if params.index(p) == i]
        # (the view that makes them, the positions in the output list of views with its parameters)
        self.groups = [(self.views[views.index(p)], [i for i, q in enumerate(params) if q == p])
                       for p in distinct]  # fmt: skip

    @classmethod
    def from_lightly(cls, transform, repeats: int = 1) -> BatchViews:
        """Compile a lightly MultiViewTransform (or one view transform) into batched views."""
        views = transform.transforms if isinstance(transform, MultiViewTransform) else [transform]
        return cls([params_of(v) for v in views], repeats)

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        x = images.float().div_(255)
        out: list[Tensor] = [x] * sum(len(positions) for _, positions in self.groups)
        for view, positions in self.groups:
            k = len(positions)
            made = view(x, copies=k).chunk(k)
            for position, batch in zip(positions, made, strict=True):
                out[position] = batch
        return out
