"""Shared helpers: tiny real runs of the entry points on synthetic or temporary image data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-12k"

# A run small enough for seconds on 2 CPU cores, but a real Trainer, real lightly losses and views.
TINY = [
    "--dataset", "synthetic", "--train_samples", "64", "--test_samples", "40",
    "--backbone", "timm:resnet10t", "--batch_size", "16", "--max_epochs", "1",
    "--num_workers", "0", "--knn_k", "10",
]  # fmt: skip


def tiny_args(output_dir: Path, *extra: str) -> list[str]:
    return [*TINY, "--output_dir", str(output_dir), *extra]


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 600):
    """Run an entry point as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def write_image_folder(root: Path, classes=("a", "b", "c"), per_class=6, size=32) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                pixels[..., i % 3] = 255  # a class colour, so the classes differ
                Image.fromarray(pixels).save(folder / f"{j}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")
