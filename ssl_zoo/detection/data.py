"""Labeled detection data: COCO detection JSON (any COCO-format export, e.g. ZOD's devkit) and the
synthetic street scenes. Items are (uint8 image tensor [3, H, W], {"boxes": x0 y0 x1 y1 in pixels,
"labels": 1..K}); label 0 is torchvision's background."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssl_zoo import scenes
from ssl_zoo.errors import UserError


@dataclass
class DetectionSplits:
    train: Dataset
    val: Dataset
    classes: list[str]


class DetectionImages(Dataset):
    """Images (arrays in memory or files) with their boxes and labels."""

    def __init__(self, images, boxes: list[np.ndarray], labels: list[np.ndarray]):
        self.images, self.boxes, self.labels = images, boxes, labels

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> np.ndarray:
        image = self.images[index]
        if isinstance(image, Path):
            try:
                with Image.open(image) as img:
                    return np.array(img.convert("RGB"))  # writable, as torch wants
            except Exception as err:
                raise UserError(f"cannot read image {image}: {err}") from None
        return image

    def target(self, index: int) -> dict[str, torch.Tensor]:
        return {"boxes": torch.as_tensor(self.boxes[index], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.as_tensor(self.labels[index], dtype=torch.int64) + 1}  # fmt: skip

    def __getitem__(self, index: int):
        image = torch.from_numpy(np.ascontiguousarray(self.image(index))).permute(2, 0, 1)
        return image, self.target(index)

    @property
    def paths(self) -> list[Path] | None:
        """The image files, where the images are files (as ssl_zoo.data.ImageFiles has them)."""
        return self.images if self.images and isinstance(self.images[0], Path) else None

    def subset(self, indices) -> DetectionImages:
        pick = lambda items: [items[i] for i in indices]  # noqa: E731
        return DetectionImages(pick(self.images), pick(self.boxes), pick(self.labels))


def load_scenes(train_samples: int | None, test_samples: int | None) -> DetectionSplits:
    """The synthetic street scenes: the training split is the pretraining data of `--dataset
    scenes` (seed 0), validation is a split of its own (seed 1)."""
    splits = [
        DetectionImages(list(images), boxes, labels)
        for images, boxes, labels in scenes.generate_splits(train_samples, test_samples)
    ]
    return DetectionSplits(*splits, list(scenes.CLASSES))


def load_coco_split(data_dir: Path, split: str, classes: list[str] | None):
    """One split of a COCO layout: DIR/annotations/instances_SPLIT.json and DIR/SPLIT/*.jpg.
    Boxes are converted from x, y, w, h to corners; crowd regions and degenerate boxes are
    dropped; images with none of the chosen classes stay as negatives."""
    path = data_dir / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        raise UserError(f"COCO annotations not found: {path} (expected DIR/annotations/"
                        f"instances_{{train,val}}.json beside DIR/train and DIR/val)")  # fmt: skip
    try:
        coco = json.loads(path.read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        images, annotations = coco["images"], coco["annotations"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{path} is not COCO detection JSON ({type(err).__name__}: {err})"
        ) from None
    chosen = classes or list(dict.fromkeys(names.values()))
    unknown = [c for c in chosen if c not in names.values()]
    if unknown:
        raise UserError(f"unknown class(es) {', '.join(unknown)} in {path}; it has: "
                        f"{', '.join(names.values())}")  # fmt: skip
    index = {name: i for i, name in enumerate(chosen)}
    per_image: dict[int, list] = {image["id"]: [] for image in images}
    for a in annotations:
        name = names.get(a["category_id"])
        x, y, w, h = a["bbox"]
        if name in index and not a.get("iscrowd", 0) and w > 1 and h > 1:
            per_image.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], index[name]))
    files, boxes, labels = [], [], []
    for image in images:
        file = data_dir / split / image["file_name"]
        if not file.is_file():
            raise UserError(
                f"{path} lists {image['file_name']}, which is not in {data_dir / split}"
            )
        found = per_image[image["id"]]
        files.append(file)
        boxes.append(np.asarray([b for b, _ in found], np.float32).reshape(-1, 4))
        labels.append(np.asarray([c for _, c in found], np.int64))
    return DetectionImages(files, boxes, labels), chosen


def load_detection(dataset: str, data_dir: str | None, classes: list[str] | None,
                   train_samples: int | None = None, test_samples: int | None = None):  # fmt: skip
    if dataset == "scenes":
        splits = load_scenes(train_samples, test_samples)
        unknown = [c for c in classes or [] if c not in splits.classes]
        if unknown:
            raise UserError(f"unknown class(es) {', '.join(unknown)}; scenes has "
                            f"{', '.join(splits.classes)}")  # fmt: skip
        return splits if not classes else _only(splits, classes)
    if dataset != "coco":
        raise UserError(f"--protocol detection needs --dataset scenes or coco, not {dataset}")
    if not data_dir:
        raise UserError("--dataset coco needs --data_dir DIR (DIR/annotations, DIR/train, DIR/val)")
    train, chosen = load_coco_split(Path(data_dir), "train", classes)
    val, _ = load_coco_split(Path(data_dir), "val", chosen)
    return DetectionSplits(at_most(train, train_samples), at_most(val, test_samples), chosen)


def at_most(data: DetectionImages, limit: int | None) -> DetectionImages:
    """At most `limit` images, a seeded draw kept in order (as ssl_zoo.data subsamples)."""
    if limit is None or limit >= len(data):
        return data
    return data.subset(np.sort(np.random.default_rng(0).permutation(len(data))[:limit]).tolist())


def _only(splits: DetectionSplits, classes: list[str]) -> DetectionSplits:
    """The scenes with only some classes kept as objects (the others become background)."""
    keep = [splits.classes.index(c) for c in classes]
    remap = {old: new for new, old in enumerate(keep)}

    def filtered(data: DetectionImages) -> DetectionImages:
        boxes, labels = [], []
        for b, lab in zip(data.boxes, data.labels, strict=True):
            mask = np.isin(lab, keep)
            boxes.append(b[mask])
            labels.append(np.asarray([remap[x] for x in lab[mask]], np.int64))
        return DetectionImages(data.images, boxes, labels)

    return DetectionSplits(filtered(splits.train), filtered(splits.val), list(classes))


def labeled_subset_indices(count: int, fraction: float, seed: int) -> list[int]:
    """A seeded `fraction` of `count` images (at least one), as sorted indices."""
    size = max(1, round(fraction * count))
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False)).tolist()


def largest_object_classes(data: DetectionImages) -> np.ndarray:
    """Each image's class by its largest box (-1 without boxes): what --select balanced
    balances over, as the scenes' kNN monitor labels an image."""
    classes = np.full(len(data), -1, dtype=np.int64)
    for i, (boxes, labels) in enumerate(zip(data.boxes, data.labels, strict=True)):
        if len(labels):
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            classes[i] = labels[int(np.argmax(areas))]
    return classes


def concatenated(first: DetectionImages, second: DetectionImages) -> DetectionImages:
    return DetectionImages(list(first.images) + list(second.images), first.boxes + second.boxes,
                           first.labels + second.labels)  # fmt: skip
