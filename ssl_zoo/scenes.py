"""Synthetic street scenes with exact boxes, for the offline detection protocol and its tests.

Each scene has a sky, a horizon, a road with lane marks, buildings (clutter, not objects) and one
to four objects of three classes: cars (body, cabin, two wheels), people (head, torso, legs) and
signs (pole and round or triangular plate), in random colours and sizes, not overlapping. An
object's box is the bounding box of the pixels it painted, so boxes are exact. Deterministic per
seed. Without their boxes the scenes are unlabeled pretraining data (`--dataset scenes`, each
labeled by its largest object for the kNN monitor).
"""

from __future__ import annotations

import numpy as np

CLASSES = ("car", "person", "sign")
MAX_OBJECTS = 4
SIZES = {
    "train": 2000,
    "test": 500,
}  # seeds 0 and 1: pretraining and detection share the train split


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _object_parts(label: int, h: int, w: int, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mask, colour) parts of one object in its own h x w box, painted in order."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paint = rng.uniform(30, 230, 3)
    dark = np.array([25.0, 25.0, 25.0])
    if label == 0:  # car: body, cabin with windows, two wheels
        body = (yy >= 0.35 * h) & (yy < 0.8 * h)
        cabin = (yy < 0.4 * h) & (xx >= 0.2 * w) & (xx < 0.75 * w)
        window = (yy >= 0.08 * h) & (yy < 0.35 * h) & (xx >= 0.26 * w) & (xx < 0.69 * w)
        wheels = _ellipse(yy, xx, 0.8 * h, 0.22 * w, 0.2 * h, 0.1 * w) | _ellipse(
            yy, xx, 0.8 * h, 0.78 * w, 0.2 * h, 0.1 * w
        )
        return [(body | cabin, paint), (window, np.array([150.0, 190.0, 220.0])), (wheels, dark)]
    if label == 1:  # person: head, torso, two legs
        head = _ellipse(yy, xx, 0.1 * h, 0.5 * w, 0.1 * h, 0.28 * w)
        torso = (yy >= 0.2 * h) & (yy < 0.6 * h) & (xx >= 0.1 * w) & (xx < 0.9 * w)
        legs = (yy >= 0.6 * h) & (
            ((xx >= 0.15 * w) & (xx < 0.45 * w)) | ((xx >= 0.55 * w) & (xx < 0.85 * w))
        )
        skin = rng.uniform([150, 100, 70], [240, 200, 170])
        return [(head, skin), (torso, paint), (legs, rng.uniform(20, 120, 3))]
    if label == 2:  # sign: pole and a round or triangular plate
        pole = (yy >= 0.4 * h) & (np.abs(xx - 0.5 * w) < max(0.08 * w, 0.6))
        if rng.random() < 0.5:
            plate = _ellipse(yy, xx, 0.22 * h, 0.5 * w, 0.22 * h, 0.5 * w)
        else:
            plate = (yy < 0.45 * h) & (np.abs(xx - 0.5 * w) <= 0.5 * w * yy / (0.45 * h))
        colour = np.array([[200, 30, 30], [30, 60, 190], [230, 200, 40]][rng.integers(3)], float)
        return [(pole, np.array([120.0, 120.0, 120.0])), (plate, colour)]
    raise ValueError(f"label {label} out of range")


# (height range as a fraction of the image, width / height)
_SHAPES = {0: ((0.12, 0.3), 2.2), 1: ((0.2, 0.45), 0.38), 2: ((0.2, 0.4), 0.4)}


def _background(size: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    horizon = rng.uniform(0.3, 0.5)
    sky_top, sky_low = rng.uniform([60, 110, 170], [140, 190, 250]), rng.uniform(170, 240, 3)
    sky = sky_top + (sky_low - sky_top) * (yy / horizon)[..., None]
    road = rng.uniform(60, 130) + 25 * (yy[..., None] - horizon)
    image = np.where((yy < horizon)[..., None], sky, road)
    for _ in range(rng.integers(2, 6)):  # buildings on the horizon
        x0, width = rng.uniform(-0.1, 1.0), rng.uniform(0.08, 0.3)
        top = horizon - rng.uniform(0.05, 0.25)
        block = (xx >= x0) & (xx < x0 + width) & (yy >= top) & (yy < horizon)
        image[block] = rng.uniform(70, 200, 3)
    lane = (np.abs(xx - 0.5 - 0.6 * (yy - horizon)) < 0.01 + 0.02 * (yy - horizon)) & (
        np.sin(yy * size * 0.6) > 0
    )
    image[lane & (yy > horizon)] = 235.0
    return image


def generate(num: int, size: int = 128, seed: int = 0, objects: bool = True):
    """(images uint8 [N, size, size, 3], boxes: N arrays [k, 4] of x0, y0, x1, y1 in pixels,
    labels: N arrays [k] of indices into CLASSES). Scene i depends only on (seed, i), so fewer
    scenes are a prefix of more; objects=False renders the same scenes without their objects."""
    images = np.empty((num, size, size, 3), np.uint8)
    all_boxes, all_labels = [], []
    for i in range(num):
        rng = np.random.default_rng([seed, i])
        image = _background(size, rng)
        taken = np.zeros((size, size), bool)
        boxes, labels = [], []
        for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
            label = int(rng.integers(len(CLASSES)))
            (low, high), aspect = _SHAPES[label]
            h = max(8, int(rng.uniform(low, high) * size))
            w = max(6, min(size - 1, int(h * aspect * rng.uniform(0.85, 1.15))))
            for _try in range(20):  # a free place, or the object is left out
                y0 = int(rng.integers(int(0.25 * size), size - h + 1))
                x0 = int(rng.integers(0, size - w + 1))
                if not taken[y0 : y0 + h, x0 : x0 + w].any():
                    break
            else:
                continue
            painted = np.zeros((h, w), bool)
            # Without objects the same draws are made (later scenes stay the same) into scratch.
            region = image[y0 : y0 + h, x0 : x0 + w] if objects else np.empty((h, w, 3))
            for mask, colour in _object_parts(label, h, w, rng):
                region[mask] = colour
                painted |= mask
            rows, cols = np.flatnonzero(painted.any(1)), np.flatnonzero(painted.any(0))
            boxes.append([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1])
            labels.append(label)
            taken[y0 : y0 + h, x0 : x0 + w] = True
        image += np.random.default_rng([seed, i, 1]).normal(0, 6, image.shape)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
        all_boxes.append(
            np.asarray(boxes, np.float32).reshape(-1, 4)
            if objects
            else np.zeros((0, 4), np.float32)
        )
        all_labels.append(np.asarray(labels if objects else [], np.int64))
    return images, all_boxes, all_labels


def generate_splits(train_samples: int | None = None, test_samples: int | None = None):
    """The training (seed 0) and test (seed 1) scenes, as generate() returns them: the SSL data
    (`--dataset scenes`) and the detection protocol share them."""
    return [generate(count or SIZES[split], seed=seed)
            for seed, split, count in ((0, "train", train_samples), (1, "test", test_samples))]  # fmt: skip


def largest_object_labels(boxes: list[np.ndarray], labels: list[np.ndarray]) -> np.ndarray:
    """Each scene's label for classification (the kNN monitor): the class of its largest object."""
    out = np.empty(len(boxes), np.int64)
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        out[i] = lab[np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))]
    return out
