"""Batched views draw their parameters as lightly's PIL views do, and each op matches torchvision."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

from ssl_zoo.batch_views import (
    BatchViews,
    ViewParams,
    color_jitter,
    crop_boxes,
    gaussian_blur,
    params_of,
    resized_crops,
)
from ssl_zoo.data import SSLDataModule, load_splits
from ssl_zoo.errors import UserError
from ssl_zoo.views import build_views, eval_transform

NORMALIZE = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


def test_parameters_are_read_off_the_lightly_transforms():
    simclr = BatchViews.from_lightly(build_views("simclr", 32, NORMALIZE, {"min_scale": 0.3}))
    p = simclr.views[0].p
    assert len(simclr.views) == 2 and p.size == 32 and p.scale == (0.3, 1.0)
    assert p.jitter == 0.8 and p.brightness == pytest.approx((0.2, 1.8))
    assert p.hue == pytest.approx((-0.2, 0.2)) and p.grayscale == 0.2 and p.hflip == 0.5
    assert p.blur == 0.5 and p.solarize == 0.0 and p.mean == (0.5, 0.4, 0.3)
    byol = BatchViews.from_lightly(build_views("byol", 32, NORMALIZE))
    assert [v.p.blur for v in byol.views] == [1.0, 0.1]
    assert [v.p.solarize for v in byol.views] == [0.0, 0.2]
    dino = BatchViews.from_lightly(build_views("dino", 32, NORMALIZE))
    assert [v.p.size for v in dino.views] == [32, 32] + [16] * 6
    assert dino.views[2].p.scale == (0.05, 0.4) and dino.views[0].p.interpolation == "bicubic"
    swav = BatchViews.from_lightly(build_views("swav", 32, NORMALIZE))
    assert swav.views[0].p.jitter == 0.8  # its extra range-less ColorJitter is an identity
    rotation = BatchViews.from_lightly(build_views("rotation", 32, NORMALIZE))
    assert len(rotation.views) == 1


def test_unsupported_step_is_a_clear_error():
    with pytest.raises(UserError, match="cannot run RandomPosterize; use --augment pil"):
        params_of(T.Compose([T.RandomResizedCrop(32), T.RandomPosterize(4)]))


def _cdf_gap(a, b) -> float:
    grid = np.quantile(np.concatenate([a, b]), np.linspace(0, 1, 201))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


@pytest.mark.parametrize("size,scale", [((32, 32), (0.08, 1.0)), ((40, 24), (0.3, 1.0))])
def test_crop_boxes_follow_torchvision_random_resized_crop(size, scale):
    torch.manual_seed(0)
    ratio = (3 / 4, 4 / 3)
    n = 20000
    ours = crop_boxes(n, *size, scale, ratio, "cpu").numpy()
    image = torch.zeros(3, *size)
    theirs = np.array([T.RandomResizedCrop.get_params(image, scale, ratio) for _ in range(n)])
    for column in range(4):  # top, left, height, width
        assert _cdf_gap(ours[:, column], theirs[:, column]) < 0.03, column
    area = lambda b: b[:, 2] * b[:, 3] / (size[0] * size[1])  # noqa: E731
    assert _cdf_gap(area(ours), area(theirs)) < 0.03
    assert (ours[:, 0] + ours[:, 2] <= size[0]).all() and (ours[:, 1] + ours[:, 3] <= size[1]).all()


def test_resized_crop_matches_torchvision_and_flips():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    whole = torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 2)
    no, yes = torch.tensor([False, False]), torch.tensor([True, True])
    assert torch.allclose(resized_crops(x, whole, 32, no, "bilinear"), x, atol=1e-6)
    assert torch.allclose(resized_crops(x, whole, 32, yes, "bilinear"), x.flip(3), atol=1e-6)
    box = torch.tensor([[4.0, 8.0, 16.0, 20.0]] * 2)  # top, left, h, w: upsampled 2x and 1.6x
    ours = resized_crops(x, box, 32, no, "bilinear")
    theirs = TF.resized_crop(x, 4, 8, 16, 20, [32, 32], antialias=False)
    assert (ours - theirs).abs().mean() < 0.02


def test_color_ops_equal_torchvision_per_image():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    for name, fn in (("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast),
                     ("saturation", TF.adjust_saturation), ("hue", TF.adjust_hue)):  # fmt: skip
        low, high = (-0.3, 0.3) if name == "hue" else (0.3, 1.7)
        torch.manual_seed(1)
        out = color_jitter(x.clone(), ViewParams(size=8, **{name: (low, high)}))
        torch.manual_seed(1)
        factors = torch.empty(6).uniform_(low, high)  # the draw color_jitter makes first
        expected = torch.stack([fn(img, float(f)) for img, f in zip(x, factors, strict=True)])
        assert torch.allclose(out, expected, atol=1e-5), name


def test_jitter_applies_its_operations_in_a_random_order_per_image():
    torch.manual_seed(0)
    n = 400
    x = torch.rand(n, 3, 4, 4)
    p = ViewParams(size=4, brightness=(0.3, 1.7), contrast=(0.3, 1.7))
    torch.manual_seed(1)
    out = color_jitter(x.clone(), p)
    torch.manual_seed(1)
    b, c = torch.empty(n).uniform_(0.3, 1.7), torch.empty(n).uniform_(0.3, 1.7)  # its draws
    b_first = torch.stack([TF.adjust_contrast(TF.adjust_brightness(img, float(fb)), float(fc))
                           for img, fb, fc in zip(x, b, c, strict=True)])  # fmt: skip
    c_first = torch.stack([TF.adjust_brightness(TF.adjust_contrast(img, float(fc)), float(fb))
                           for img, fb, fc in zip(x, b, c, strict=True)])  # fmt: skip
    is_b_first = (out - b_first).flatten(1).abs().amax(1) < 1e-5
    is_c_first = (out - c_first).flatten(1).abs().amax(1) < 1e-5
    assert bool((is_b_first | is_c_first).all())  # every image got both, in one of the orders
    only_b_first = (is_b_first & ~is_c_first).float().mean().item()
    only_c_first = (is_c_first & ~is_b_first).float().mean().item()
    assert only_b_first > 0.3 and only_c_first > 0.3, (only_b_first, only_c_first)


def test_views_with_the_same_parameters_are_made_together_but_drawn_apart():
    views = BatchViews.from_lightly(build_views("simclr", 32, NORMALIZE), repeats=2)
    assert [positions for _, positions in views.groups] == [[0, 1, 2, 3]]
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    made = views(images)
    assert [tuple(v.shape) for v in made] == [(8, 3, 32, 32)] * 4
    assert all(not torch.equal(made[0], other) for other in made[1:])
    dino = BatchViews.from_lightly(build_views("dino", 32, NORMALIZE))
    assert [positions for _, positions in dino.groups] == [[0], [1], list(range(2, 8))]
    # k copies are sampled from one grid k crops tall: the same as the images stacked k times.
    local = dino.groups[2][0]
    torch.manual_seed(5)
    together = local(images.float() / 255, copies=3)
    torch.manual_seed(5)
    stacked = local(images.float().repeat(3, 1, 1, 1) / 255)
    assert together.shape == (24, 3, *stacked.shape[2:])
    assert torch.allclose(together, stacked, atol=1e-6)


def test_jitter_factors_are_uniform_in_lightlys_ranges():
    torch.manual_seed(0)
    gray = torch.full((20000, 3, 1, 1), 0.25)
    p = ViewParams(size=1, brightness=(0.2, 1.8))
    factors = (color_jitter(gray.clone(), p)[:, 0, 0, 0] / 0.25).numpy()
    assert factors.min() >= 0.2 - 1e-5 and factors.max() <= 1.8 + 1e-5
    assert _cdf_gap(factors, np.random.default_rng(0).uniform(0.2, 1.8, 20000)) < 0.02


def test_gaussian_blur_has_the_drawn_sigma():
    delta = torch.zeros(2, 3, 31, 31)
    delta[:, :, 15, 15] = 1.0
    out = gaussian_blur(delta, torch.tensor([0.8, 1.6]))
    for image, sigma in zip(out, (0.8, 1.6), strict=True):
        profile = image[0].sum(0)  # marginal along the width
        t = torch.arange(31.0) - 15
        assert image.sum().item() == pytest.approx(3.0, abs=1e-4)
        assert (profile * t**2).sum().sqrt().item() == pytest.approx(sigma, rel=0.05)


def test_each_step_fires_with_its_probability():
    torch.manual_seed(0)
    images = torch.full((4000, 3, 4, 4), 200, dtype=torch.uint8)
    images[:, 0] = 50  # coloured, bright in two channels: grayscale and solarisation both show
    only = lambda **kw: BatchViews([ViewParams(size=4, scale=(1, 1), ratio=(1, 1), **kw)])  # noqa: E731
    (gray,) = only(grayscale=0.2)(images)
    changed = (gray[:, 0] != gray[:, 1]).flatten(1).any(1).float().mean().item()
    assert changed == pytest.approx(0.8, abs=0.03)  # 20% made gray, their channels equal
    (solar,) = only(solarize=0.3)(images)
    assert (solar[:, 1, 0, 0] < 0.5).float().mean().item() == pytest.approx(0.3, abs=0.03)
    (flipped,) = BatchViews([ViewParams(size=4, scale=(1, 1), ratio=(1, 1), hflip=0.5)])(
        torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(4000, 3, 4, 4).contiguous()
    )
    assert (flipped[:, 0, 0, 0] > flipped[:, 0, 0, 3]).float().mean().item() == pytest.approx(
        0.5, abs=0.03
    )


def test_views_are_seeded_and_normalised():
    views = BatchViews.from_lightly(build_views("simclr", 32, NORMALIZE), repeats=2)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(3)
    first = views(images)
    torch.manual_seed(3)
    again = views(images)
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    lowest = (0 - torch.tensor(NORMALIZE["mean"])) / torch.tensor(NORMALIZE["std"])
    assert torch.all(first[0].amin(dim=(0, 2, 3)) >= lowest - 1e-5)


def test_datamodule_serves_batched_views_and_monitor_batches_like_the_pil_path():
    splits = load_splits("synthetic", train_samples=64, test_samples=16)
    views = BatchViews.from_lightly(build_views("simclr", 32, NORMALIZE))
    dm = SSLDataModule(splits, views, NORMALIZE, batch_size=16, num_workers=0)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32) and len(labels) == 16

    class Stage:  # what the data module reads of its Trainer
        training = True
        world_size, global_rank = 1, 0

    dm.trainer = Stage()
    pair, labels = dm.on_after_batch_transfer((images, labels), 0)
    assert [v.shape for v in pair] == [(16, 3, 32, 32)] * 2 and pair[0].dtype == torch.float32
    Stage.training = False
    test_images, test_labels = next(iter(dm.val_dataloader()[1]))
    normalised, _ = dm.on_after_batch_transfer((test_images, test_labels), 1)
    reference = eval_transform(32, NORMALIZE)
    expected = torch.stack([reference(splits.test[i][0]) for i in range(len(normalised))])
    assert torch.allclose(normalised, expected, atol=1e-5)
    assert test_labels.tolist() == [splits.test[i][1] for i in range(len(test_labels))]


@pytest.mark.parametrize(
    ("kind", "option"), [("simclr", "input_size"), ("dino", "global_crop_size")]
)
def test_crops_can_be_smaller_than_the_images_on_both_paths(kind, option):
    transform = build_views(kind, 32, NORMALIZE, {option: 24})
    image, _ = load_splits("synthetic", train_samples=4, test_samples=4).train[0]
    pil_shapes = [tuple(v.shape) for v in transform(image)]
    batched = BatchViews.from_lightly(transform)(torch.zeros(5, 3, 32, 32, dtype=torch.uint8))
    assert pil_shapes[:2] == [(3, 24, 24)] * 2
    assert [tuple(v.shape[1:]) for v in batched] == pil_shapes


def test_a_crop_size_below_one_pixel_is_a_clear_error():
    with pytest.raises(UserError, match="views input_size must be a positive number of pixels"):
        build_views("simclr", 32, NORMALIZE, {"input_size": 0})
