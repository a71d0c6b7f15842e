import numpy as np
import pytest
import torch
from conftest import write_image_folder

from ssl_zoo import synthetic
from ssl_zoo.data import SSLDataModule, Transformed, dataset_labels, load_splits, uint8_images
from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.knn import knn_accuracy
from ssl_zoo.views import build_views


def test_synthetic_is_deterministic_per_seed_and_balanced():
    a_x, a_y = synthetic.generate(60, seed=3)
    b_x, b_y = synthetic.generate(60, seed=3)
    c_x, _ = synthetic.generate(60, seed=4)
    assert a_x.dtype == np.uint8 and a_x.shape == (60, 32, 32, 3)
    assert np.array_equal(a_x, b_x) and np.array_equal(a_y, b_y)
    assert not np.array_equal(a_x, c_x)
    assert np.bincount(a_y).tolist() == [6] * 10


def _edge_features(images: np.ndarray) -> torch.Tensor:
    """Colour-free shape features: gradient magnitude of the per-image standardised grey image."""
    grey = images.astype(np.float32).mean(-1)
    grey = (grey - grey.mean((1, 2), keepdims=True)) / (grey.std((1, 2), keepdims=True) + 1e-6)
    gy, gx = np.gradient(grey, axis=(1, 2))
    return torch.from_numpy(np.hypot(gx, gy).reshape(len(images), -1))


def test_synthetic_classes_are_shapes_not_colours():
    """Raw pixels (colour, position) say little about the class; shape features say more."""
    train_x, train_y = synthetic.generate(2000, seed=0)
    test_x, test_y = synthetic.generate(500, seed=1)
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)
    pixels = lambda x: torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))  # noqa: E731
    centred = pixels(train_x).mean(0)
    raw, _ = knn_accuracy(pixels(test_x) - centred, test_y, pixels(train_x) - centred, train_y, 10)
    shape, _ = knn_accuracy(_edge_features(test_x), test_y, _edge_features(train_x), train_y, 10)
    print(raw, shape)
    assert raw < 0.3, raw
    assert shape > raw + 0.05, (shape, raw)


def test_image_folder_splits(image_folder):
    splits = load_splits("imagefolder", image_folder)
    assert splits.num_classes == 3 and splits.image_size == 32
    assert len(splits.train) == 18 and len(splits.test) == 18
    image, label = splits.test[17]
    assert image.size == (32, 32) and label == 2


def test_flat_folder_is_unlabeled(image_folder):
    splits = load_splits("imagefolder", image_folder / "train")
    assert splits.num_classes == 0 and splits.bank is None and splits.test is None
    assert len(splits.train) == 18 and splits.train[0][1] == -1


def test_extra_images_join_training_unlabeled(image_folder, tmp_path):
    """Another folder's photos (here larger) join the images the method learns from, unlabeled;
    the monitor's bank stays the dataset's own labeled images."""
    extra = write_image_folder(tmp_path / "public", classes=("x",), per_class=5, size=48)
    splits = load_splits("imagefolder", image_folder, extra_images=[extra])
    assert len(splits.train) == 18 + 10 and len(splits.bank) == 18 and splits.image_size == 32
    assert dataset_labels(splits.train).tolist() == dataset_labels(splits.bank).tolist() + [-1] * 10
    pixels = uint8_images(splits.train, 32)
    assert pixels.shape == (28, 3, 32, 32)
    assert torch.equal(pixels[:18], uint8_images(splits.bank, 32))
    with pytest.raises(
        UserError, match=r"no images .*found: no folder .*nowhere \(--extra_images\)"
    ):
        load_splits("imagefolder", image_folder, extra_images=[tmp_path / "nowhere"])


def test_unreadable_image_names_its_path(image_folder):
    bad = image_folder / "train" / "a" / "broken.jpg"
    bad.write_bytes(b"not an image")
    splits = load_splits("imagefolder", image_folder)
    index = splits.train.paths.index(bad)
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        splits.train[index]


@pytest.mark.parametrize(
    ("dataset", "folder", "message"),
    [
        ("imagefolder", "images", "imagefolder directory not found: .*images; expected DIR/train"),
        ("cifar10", "cifar", "cifar10 not found under .*cifar and the download failed"),
        (
            "mnist",
            "x",
            "unknown dataset 'mnist'; valid choices: cifar10, cifar100, coco, imagefolder",
        ),
    ],
)
def test_missing_or_unknown_data_is_one_clear_error(tmp_path, dataset, folder, message):
    with pytest.raises(UserError, match=message):
        load_splits(dataset, tmp_path / folder)


def test_train_samples_subsamples_deterministically(image_folder):
    a = load_splits("imagefolder", image_folder, train_samples=5, seed=1)
    b = load_splits("imagefolder", image_folder, train_samples=5, seed=1)
    assert len(a.train) == 5 and a.train.indices == b.train.indices


def test_datamodule_serves_views_and_monitor_splits():
    splits = load_splits("synthetic", train_samples=40, test_samples=20)
    normalize = {"mean": [0.5] * 3, "std": [0.3] * 3}
    views = build_views("simclr", 32, normalize, {"gaussian_blur": 0.0})
    dm = SSLDataModule(splits, views, normalize, batch_size=8, num_workers=0)
    (v0, v1), labels = next(iter(dm.train_dataloader()))
    assert v0.shape == v1.shape == (8, 3, 32, 32) and labels.shape == (8,)
    assert not torch.equal(v0, v1)  # two different augmentations
    bank, test = dm.val_dataloader()
    assert len(bank.dataset) == 40 and len(test.dataset) == 20
    with pytest.raises(UserError, match="batch_size 64 is larger than the training set"):
        SSLDataModule(splits, views, normalize, batch_size=64, num_workers=0)


def test_unknown_view_option_lists_valid_ones():
    with pytest.raises(
        UserError, match="unknown views option.*blur_amount.*valid: .*gaussian_blur"
    ):
        build_views("simclr", 32, {"mean": [0.5] * 3, "std": [0.3] * 3}, {"blur_amount": 1})


def test_byol_views_differ_in_blur_and_solarization():
    transform = build_views("byol", 32, {"mean": [0.5] * 3, "std": [0.3] * 3})
    image, _ = load_splits("synthetic", train_samples=10, test_samples=10).train[0]
    views = Transformed([(image, 0)], transform)[0][0]
    assert len(views) == 2 and views[0].shape == (3, 32, 32)
    view1, view2 = transform.transforms
    assert view1.transform is not view2.transform
