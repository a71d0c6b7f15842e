"""A deterministic synthetic image dataset with real class structure, for offline runs and tests.

Each class is a shape (disk, square, triangle, plus, ring, stripes, checkerboard, target, crescent,
half-disk) drawn with a random colour, position, scale and rotation over a random background with a
colour gradient, occluding clutter and pixel noise. Colour and position carry no class information,
so raw-pixel neighbours are weak and an encoder must learn shape to do well, which is what the SSL
augmentations (crops, colour jitter) push it towards.
"""

from __future__ import annotations

import numpy as np

CLASSES = (
    "disk",
    "square",
    "triangle",
    "plus",
    "ring",
    "stripes",
    "checkerboard",
    "target",
    "crescent",
    "half_disk",
)


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Boolean mask of one class in shape-centred coordinates (u, v), unit size."""
    r = np.sqrt(u**2 + v**2)
    if label == 0:
        return r < 0.9
    if label == 1:
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if label == 2:
        return (v > -0.55) & (v < 0.95 - 1.75 * np.abs(u))
    if label == 3:
        return ((np.abs(u) < 0.27) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.27) & (np.abs(u) < 0.95))
    if label == 4:
        return (r > 0.55) & (r < 0.95)
    if label == 5:
        return (r < 1.0) & (np.sin(u * freq) > 0)
    if label == 6:
        return (np.maximum(np.abs(u), np.abs(v)) < 0.85) & (np.sin(u * freq) * np.sin(v * freq) > 0)
    if label == 7:
        return (r < 0.33) | ((r > 0.62) & (r < 0.95))
    if label == 8:
        return (r < 0.95) & ((u - 0.5) ** 2 + v**2 > 0.75**2)
    if label == 9:
        return (r < 0.95) & (v > 0)
    raise ValueError(f"label {label} out of range")


def generate(
    num_samples: int, image_size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, H, W, 3], labels int64 [N]); identical for identical arguments."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % len(CLASSES)
    rng.shuffle(labels)
    # Render at 2x and average-pool for anti-aliased edges.
    size = 2 * image_size
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    images = np.empty((num_samples, image_size, image_size, 3), dtype=np.uint8)
    chunk = 256
    for start in range(0, num_samples, chunk):
        lab = labels[start : start + chunk]
        n = len(lab)
        bg = rng.uniform(0, 1, (n, 1, 1, 3))
        fg = rng.uniform(0, 1, (n, 1, 1, 3))
        # Keep the shape visible: push foreground away from background where they are close.
        close = np.linalg.norm(fg - bg, axis=-1, keepdims=True) < 0.45
        fg = np.where(close, 1.0 - bg, fg)
        grad_dir = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        grad = (np.cos(grad_dir) * xx + np.sin(grad_dir) * yy)[..., None]
        canvas = bg + 0.25 * grad * rng.uniform(-1, 1, (n, 1, 1, 3))
        for _ in range(1):  # clutter: small rectangles of random colour behind the shape
            cx, cy = rng.uniform(-1, 1, (2, n, 1, 1))
            w, h = rng.uniform(0.05, 0.25, (2, n, 1, 1))
            box = (np.abs(xx - cx) < w) & (np.abs(yy - cy) < h)
            canvas = np.where(box[..., None], rng.uniform(0, 1, (n, 1, 1, 3)), canvas)
        cx, cy = rng.uniform(-0.2, 0.2, (2, n, 1, 1))
        scale = rng.uniform(0.55, 0.8, (n, 1, 1))
        theta = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        freq = rng.uniform(4, 6, (n, 1, 1))
        x0, y0 = (xx - cx) / scale, (yy - cy) / scale
        u = np.cos(theta) * x0 + np.sin(theta) * y0
        v = -np.sin(theta) * x0 + np.cos(theta) * y0
        mask = np.zeros((n, size, size), dtype=bool)
        for label in np.unique(lab):
            sel = lab == label
            mask[sel] = _shape_mask(int(label), u[sel], v[sel], freq[sel])
        canvas = np.where(mask[..., None], fg, canvas)
        canvas = canvas.reshape(n, image_size, 2, image_size, 2, 3).mean(axis=(2, 4))
        canvas = canvas + rng.normal(0, 0.04, canvas.shape)
        images[start : start + n] = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)
