"""Datasets by name and the LightningDataModule that serves SSL views and labeled evaluation splits.

Every dataset is reduced to the same three splits of (PIL image, label) pairs:
- `train`: images the SSL method learns from (labels may be -1 when unknown);
- `bank`: labeled training images, the kNN monitor's memory bank (None when there are no labels);
- `test`: labeled held-out images the monitor and the probes are scored on (None when absent).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    Subset,
)
from tqdm.auto import tqdm

from ssl_zoo import scenes, synthetic
from ssl_zoo.errors import UserError, unknown_choice
from ssl_zoo.views import eval_transform

IMAGENET_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CIFAR10_NORMALIZE = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
CIFAR100_NORMALIZE = {"mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]}
SYNTHETIC_NORMALIZE = {"mean": [0.5, 0.5, 0.5], "std": [0.29, 0.29, 0.29]}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class DatasetInfo:
    normalize: dict
    image_size: int | None  # None: read off the first image


DATASETS = {
    "synthetic": DatasetInfo(SYNTHETIC_NORMALIZE, 32),
    "scenes": DatasetInfo(SYNTHETIC_NORMALIZE, 128),
    "cifar10": DatasetInfo(CIFAR10_NORMALIZE, 32),
    "cifar100": DatasetInfo(CIFAR100_NORMALIZE, 32),
    "stl10": DatasetInfo(IMAGENET_NORMALIZE, 96),
    "imagefolder": DatasetInfo(IMAGENET_NORMALIZE, None),
    "coco": DatasetInfo(IMAGENET_NORMALIZE, None),
}

SYNTHETIC_SIZES = {"train": 5000, "test": 1000}


@dataclass
class Splits:
    train: Dataset
    bank: Dataset | None
    test: Dataset | None
    num_classes: int
    image_size: int


class ArrayImages(Dataset):
    """uint8 images held in memory (N, H, W, 3), served as PIL images for torchvision/lightly."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index]), int(self.labels[index])


class ImageFiles(Dataset):
    """Image files with labels; an unreadable file is reported by its path."""

    def __init__(self, paths: list[Path], labels: list[int]):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except Exception as err:
            raise UserError(f"cannot read image {path}: {err}") from None
        return image, self.labels[index]


class Transformed(Dataset):
    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.transform(image), label


class Unlabeled(Dataset):
    """A split with its labels hidden (-1): what a federated client may see."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.base[index][0], -1


def _subsample(dataset: Dataset | None, limit: int | None, seed: int) -> Dataset | None:
    if dataset is None or limit is None or limit >= len(dataset):
        return dataset
    keep = np.random.default_rng(seed).permutation(len(dataset))[:limit]
    return Subset(dataset, np.sort(keep).tolist())


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def unlabeled_images(folder: Path, option: str = "--data_dir") -> ImageFiles:
    """Every image file under `folder`, labels unknown (-1)."""
    paths = _list_images(folder) if folder.is_dir() else []
    if not paths:
        what = "found under" if folder.is_dir() else "found: no folder"
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) {what} {folder} ({option})")
    return ImageFiles(paths, [-1] * len(paths))


def _image_folder_split(folder: Path, classes: list[str]) -> ImageFiles:
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = _list_images(folder / name)
        paths += found
        labels += [label] * len(found)
    return ImageFiles(paths, labels)


def _load_imagefolder(data_dir: Path) -> tuple[Dataset, Dataset | None, Dataset | None, int]:
    if not data_dir.is_dir():
        raise UserError(
            f"imagefolder directory not found: {data_dir}; expected DIR/train/<class>/*.jpg "
            "(and DIR/test/<class>/*.jpg), or a folder of unlabeled images"
        )
    train_dir, test_dir = data_dir / "train", data_dir / "test"
    if not train_dir.is_dir():
        return unlabeled_images(data_dir), None, None, 0
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"no class folders in {train_dir}; expected {train_dir}/<class>/*.jpg")
    train = _image_folder_split(train_dir, classes)
    if len(train) == 0:
        raise UserError(f"no images found in the class folders of {train_dir}")
    test = None
    if test_dir.is_dir():
        test_classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
        if not set(test_classes) <= set(classes):
            extra = sorted(set(test_classes) - set(classes))
            raise UserError(f"{test_dir} has classes missing from {train_dir}: {', '.join(extra)}")
        test = _image_folder_split(test_dir, classes)
    return train, train, test, len(classes)


def _load_coco(data_dir: Path) -> tuple[Dataset, Dataset, Dataset, int]:
    """The photos of a COCO detection layout (DIR/annotations, DIR/train, DIR/val) for SSL: the
    boxes are never trained on; each photo's label is its largest object's class, which only
    the kNN monitor and a non-IID partition (a stand-in for vehicles that see other roads) read."""
    from ssl_zoo.detection.data import largest_object_classes, load_coco_split

    train, classes = load_coco_split(data_dir, "train", None)
    val, _ = load_coco_split(data_dir, "val", classes)
    files = [ImageFiles(list(split.images), largest_object_classes(split).tolist())
             for split in (train, val)]  # fmt: skip
    return files[0], files[0], files[1], len(classes)


def _load_torchvision(name: str, data_dir: Path):
    import torchvision.datasets as tvd

    def get(cls, **kwargs):
        try:
            return cls(str(data_dir), download=False, **kwargs)
        except RuntimeError:
            pass
        try:
            return cls(str(data_dir), download=True, **kwargs)
        except Exception as err:
            raise UserError(
                f"{name} not found under {data_dir} and the download failed ({type(err).__name__}); "
                f"run once online, or place torchvision's {name} files in {data_dir}, "
                "or use --dataset synthetic"
            ) from None

    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        train, test = get(cls, train=True), get(cls, train=False)
        images = ArrayImages(train.data, train.targets)
        return images, images, ArrayImages(test.data, test.targets), len(train.classes)
    # STL-10: learn from train+unlabeled (105k images), monitor with the labeled 5k train split.
    nhwc = lambda d: ArrayImages(d.data.transpose(0, 2, 3, 1), d.labels)  # noqa: E731
    ssl = get(tvd.STL10, split="train+unlabeled")
    train, test = get(tvd.STL10, split="train"), get(tvd.STL10, split="test")
    return nhwc(ssl), nhwc(train), nhwc(test), 10


def load_splits(
    dataset: str,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    train_samples: int | None = None,
    test_samples: int | None = None,
    seed: int = 0,
    extra_images: Sequence[str | Path] = (),
) -> Splits:
    """The dataset's splits; `extra_images`: folders whose images join `train` unlabeled (the
    bank stays the dataset's own labeled images)."""
    if dataset not in DATASETS:
        raise unknown_choice("dataset", dataset, DATASETS)
    data_dir = Path(data_dir) if data_dir else Path("data")
    if dataset == "synthetic":
        # The data seed is fixed so that every run, whatever its training seed, sees the same images.
        train_x, train_y = synthetic.generate(train_samples or SYNTHETIC_SIZES["train"], 32, seed=0)
        test_x, test_y = synthetic.generate(test_samples or SYNTHETIC_SIZES["test"], 32, seed=1)
        train, test = ArrayImages(train_x, train_y), ArrayImages(test_x, test_y)
        splits = (train, train, test, len(synthetic.CLASSES))
    elif dataset == "scenes":
        # Street scenes, labeled by their largest object for the kNN monitor; their boxes serve
        # the detection protocol (ssl_zoo/detection).
        parts = [ArrayImages(images, scenes.largest_object_labels(boxes, labels))
                 for images, boxes, labels in scenes.generate_splits(train_samples, test_samples)]  # fmt: skip
        splits = (parts[0], parts[0], parts[1], len(scenes.CLASSES))
    elif dataset == "imagefolder":
        splits = _load_imagefolder(data_dir)
    elif dataset == "coco":
        splits = _load_coco(data_dir)
    else:
        splits = _load_torchvision(dataset, data_dir)
    train, bank, test, num_classes = splits
    same = bank is train
    train = _subsample(train, train_samples, seed)
    bank = train if same else _subsample(bank, train_samples, seed)
    test = _subsample(test, test_samples, seed)
    if image_size is None:
        image_size = DATASETS[dataset].image_size or min(train[0][0].size)
    if test is None:
        bank = None  # a memory bank without queries measures nothing
    if extra_images:
        extra = [unlabeled_images(Path(d), "--extra_images") for d in extra_images]
        train = ConcatDataset([train, *extra])
    return Splits(train, bank, test, num_classes, image_size)


def image_ids(dataset: Dataset, root: str | Path | None = None) -> list[str]:
    """A stable id per image of a split, to name a selection across runs: the file's path
    relative to `root` (the data_dir), or '#N' for the N-th image of an in-memory dataset."""
    if isinstance(dataset, Subset):
        parent = image_ids(dataset.dataset, root)
        return [parent[i] for i in dataset.indices]
    paths = getattr(dataset, "paths", None)
    if paths is None:
        return [f"#{i}" for i in range(len(dataset))]
    base = Path(root).resolve() if root else None

    def relative(path: Path) -> str:
        path = Path(path).resolve()
        return (
            path.relative_to(base).as_posix() if base and path.is_relative_to(base) else path.name
        )

    return [relative(p) for p in paths]


def image_digests(dataset: Dataset) -> list[str]:
    """A hash of each image's bytes (its file's, or its pixels'): an order of the images that
    neither their folders nor their labels decide (label selection sees the pool in it)."""
    if isinstance(dataset, Subset):
        parent = image_digests(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    sources = getattr(dataset, "paths", None)
    if sources is None:
        sources = getattr(dataset, "images", None)
    if sources is None:
        sources = [np.asarray(dataset[i][0]) for i in range(len(dataset))]

    def digest(source) -> str:
        data = (
            Path(source).read_bytes() if isinstance(source, Path) else np.asarray(source).tobytes()
        )
        return hashlib.sha1(data).hexdigest()

    return [digest(s) for s in sources]


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Labels of a split without decoding its images."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, ArrayImages | ImageFiles):
        return np.asarray(dataset.labels, dtype=np.int64)
    if isinstance(dataset, Unlabeled):
        return np.full(len(dataset), -1, dtype=np.int64)
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_labels(d) for d in dataset.datasets])
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)


MAX_IN_MEMORY_BYTES = 16 * 2**30


def uint8_images(dataset: Dataset, size: int) -> torch.Tensor:
    """A split as one uint8 tensor (N, 3, size, size), decoded once and cached on the dataset.

    Images of another size are resized (shorter side) and centre-cropped, as the evaluation
    transform does, so the cache also serves the kNN monitor unchanged."""
    if isinstance(dataset, Subset):
        return uint8_images(dataset.dataset, size)[torch.as_tensor(dataset.indices)]
    if isinstance(dataset, Unlabeled):
        return uint8_images(dataset.base, size)
    if isinstance(dataset, ConcatDataset):
        return torch.cat([uint8_images(d, size) for d in dataset.datasets])
    cache = dataset.__dict__.setdefault("_uint8", {})
    if size in cache:
        return cache[size]
    if isinstance(dataset, ArrayImages) and dataset.images.shape[1:3] == (size, size):
        cache[size] = torch.from_numpy(dataset.images).permute(0, 3, 1, 2)  # a view, no copy
        return cache[size]
    needed = len(dataset) * 3 * size * size
    if needed > MAX_IN_MEMORY_BYTES:
        raise UserError(
            f"{len(dataset)} images of {size} px need {needed / 2**30:.1f} GiB in memory for "
            "batched augmentation; use --augment pil"
        )
    fit = T.Compose([T.Resize(size), T.CenterCrop(size)])
    out = torch.empty(len(dataset), 3, size, size, dtype=torch.uint8)
    for i in tqdm(range(len(dataset)), desc="decoding images", unit="img", mininterval=2,
                  disable=len(dataset) < 5000):  # fmt: skip
        image = dataset[i][0]
        if image.size != (size, size):
            image = fit(image)
        out[i] = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    cache[size] = out
    return out


class EpochBatchSampler(BatchSampler):
    """Batches of an epoch-seeded sampler (Lightning's set_epoch is passed on, so each epoch's
    order comes from (seed, epoch)); in a run resumed from a checkpoint taken mid-epoch, the
    batches that epoch had already trained on are skipped, so the next one is the batch the
    interrupted run would have taken."""

    epoch = 0
    resume_at: tuple[int, int] | None = None  # (epoch, batches done): see resume_mid_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        resume, self.resume_at = self.resume_at, None
        skip = resume[1] if resume and resume[0] == self.epoch else 0
        yield from itertools.islice(super().__iter__(), skip, None)


def resume_mid_epoch(loader: DataLoader, epoch: int, batches: int) -> None:
    """Make a resumed run's training loader skip the `batches` of `epoch` a checkpoint taken
    mid-epoch had trained on. Called before the loader's first batch; with DataLoader workers
    (--augment pil, --num_workers > 0) the first batches' indices are already drawn by then,
    so the resumed epoch starts its order over, as Lightning's own loaders do.

    (Lightning's stateful-loader protocol cannot do it: a method's configure_optimizers asks for
    the steps to schedule, which builds the loaders before the checkpoint is restored, and
    Lightning loads a loader's state only when it builds it.)"""
    for sampler in (loader.batch_sampler, loader.sampler):
        if isinstance(sampler, EpochBatchSampler):
            sampler.resume_at = (epoch, batches)


class IndexedBatches(Dataset):
    """Whole batches out of in-memory tensors: indexed by a list of indices (a BatchSampler)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        self.images, self.labels = images, torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices):
        index = torch.as_tensor(indices)
        return self.images[index].contiguous(), self.labels[index]


def collate_views(batch):
    """(list of views, label) pairs -> (list of view batches, label batch)."""
    views, labels = zip(*batch, strict=True)
    return [torch.stack(v) for v in zip(*views, strict=True)], torch.tensor(labels)


class SSLDataModule(L.LightningDataModule):
    """Serves augmented views for training and, when labels exist, [bank, test] for validation.

    With batched views (ssl_zoo.batch_views) every split is held in memory as uint8 and batches
    are augmented (training) or normalised (validation) after they reach the training device;
    with lightly's PIL views, DataLoader workers augment image by image."""

    def __init__(self, splits: Splits, views, normalize: dict, batch_size: int, num_workers: int,
                 seed: int = 0):  # fmt: skip
        super().__init__()
        self.seed = seed  # of the data order across DDP ranks, which must agree on it
        self.splits, self.views, self.batch_size, self.num_workers = (
            splits,
            views,
            batch_size,
            num_workers,
        )
        if batch_size > len(splits.train):
            raise UserError(
                f"batch_size {batch_size} is larger than the training set ({len(splits.train)} "
                "images); lower --batch_size"
            )
        self.normalize = normalize
        self.batched = getattr(views, "batched", False)

    @property
    def has_monitor(self) -> bool:
        return self.splits.bank is not None and self.splits.num_classes > 0

    def _order(self, dataset: Dataset, train: bool):
        """Which images this process sees, in which order. Under DDP each rank its share, made
        here because Lightning's own sampler replacement (off: train.py) cannot reach inside the
        batched loader's BatchSampler. Unshuffled shares are padded to equal length and
        interleaved (rank r: images r, r + world, ...), which the kNN monitor undoes.
        One process shuffles the same way, with a world of one: the order is drawn from
        (seed, epoch) alone, never from the global random stream, so a run resumed mid-epoch
        can take up the epoch's order where it stopped."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        # DistributedSampler seeds each epoch with seed + epoch: spread the seeds so that seed s's
        # epoch e + 1 is not seed s + 1's epoch e.
        return DistributedSampler(dataset, world, rank, shuffle=train,
                                  seed=self.seed * 1_000_003, drop_last=train)  # fmt: skip

    def _loader(self, dataset: Dataset, train: bool, collate=None) -> DataLoader:
        if self.batched:
            images = uint8_images(dataset, self.splits.image_size)
            batches = IndexedBatches(images, dataset_labels(dataset))
            return DataLoader(
                batches,
                sampler=EpochBatchSampler(self._order(batches, train), self.batch_size, train),
                batch_size=None,
                pin_memory=torch.cuda.is_available(),
            )
        return DataLoader(
            dataset,
            batch_sampler=EpochBatchSampler(self._order(dataset, train), self.batch_size, train),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        if self.batched:
            return self._loader(self.splits.train, True)
        return self._loader(Transformed(self.splits.train, self.views), True, collate_views)

    def val_dataloader(self) -> list[DataLoader]:
        if not self.has_monitor:
            return []
        if self.batched:
            return [self._loader(self.splits.bank, False), self._loader(self.splits.test, False)]
        transform = eval_transform(self.splits.image_size, self.normalize)
        return [
            self._loader(Transformed(self.splits.bank, transform), False),
            self._loader(Transformed(self.splits.test, transform), False),
        ]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not self.batched:
            return batch
        images, labels = batch
        self.views.to(images.device)
        if self.trainer is not None and self.trainer.training:
            return self.views(images), labels
        return normalized(images, self.normalize), labels


def normalized(images: torch.Tensor, normalize: dict) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, normalised as the evaluation transform does."""
    mean = torch.tensor(normalize["mean"], device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(normalize["std"], device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std
