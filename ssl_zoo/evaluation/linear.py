"""Linear probe: a linear classifier on frozen, precomputed features.

Features are standardised with the training split's mean and std (features nearly constant on
it take the median std), then a linear layer is trained
with AdamW (lr 1e-3, cosine decay, no weight decay) for `epochs` passes of mini-batches of 512
over the training features; no augmentation, since the features are computed once.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ssl_zoo.evaluation.protocol import Protocol


def train_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Returns (classifier, mean, std); classify new features as classifier((x - mean) / std)."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    # A feature (nearly) constant over few labeled images, yet not over the rest, would be
    # scaled by up to 1e6: the probe's logits and fine-tuning from it blow up (10 labels of a
    # ReLU network: dozens of such features). Those take the typical scale instead.
    typical = std.median()
    std = torch.where(std < 0.01 * typical, typical, std)
    x = (train_x - mean) / std
    classifier = nn.Linear(x.shape[1], num_classes)
    steps = epochs * max(1, -(-len(x) // batch_size))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in tqdm(range(epochs), desc="linear probe", unit="epoch", leave=False):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(x[idx]), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return classifier.eval(), mean, std


class Linear(Protocol):
    """A linear probe on the bank's features: on every label, or on the labeled subset where
    one is asked for (--labels, --select, --selection)."""

    name = "linear"

    def __init__(self, linear_epochs: int = 100):
        self.epochs = linear_epochs

    def run(self, bench) -> dict:
        tic = time.time()
        chosen = bench.labeled if bench.cfg.few_labels else slice(None)
        _, found = bench.linear_probe(bench.train_x[chosen], bench.train_y[chosen], self.epochs)
        bench.seconds["linear"] = time.time() - tic
        return found
