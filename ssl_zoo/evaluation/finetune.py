"""Fine-tuning with few labels: the whole network on a class-balanced, seeded subset of the
training labels, with light augmentation (random resized crop from 50%, horizontal flip)."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, Subset

from ssl_zoo.cost import StepFlops
from ssl_zoo.data import Transformed
from ssl_zoo.errors import UserError


def balanced_subset(labels, fraction: float, seed: int = 0) -> list[int]:
    """Indices of `fraction` of each class's samples (at least one per class), drawn with `seed`."""
    if not 0 < fraction <= 1:
        raise UserError(f"label_fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        count = max(1, round(fraction * len(members)))
        chosen += rng.choice(members, size=count, replace=False).tolist()
    return sorted(chosen)


class FineTuner(L.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, lr: float):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(feature_dim, num_classes)
        self.lr = lr

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("finetune/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        total = self.trainer.estimated_stepping_batches
        return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)]


def train_transform(image_size: int, normalize: dict) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.5, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean=normalize["mean"], std=normalize["std"]),
        ]
    )


def finetune(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    train_set,
    labels,
    fraction: float,
    image_size: int,
    normalize: dict,
    epochs: int = 30,
    lr: float = 0.05,
    batch_size: int = 128,
    num_workers: int = 2,
    seed: int = 0,
    accelerator: str = "auto",
) -> tuple[FineTuner, int, int]:
    """Fine-tune a copy of `backbone`; returns the trained classifier, the number of labels and
    the training FLOPs (the first step's count times the steps)."""
    indices = balanced_subset(labels, fraction, seed)
    subset = Transformed(Subset(train_set, indices), train_transform(image_size, normalize))
    loader = DataLoader(
        subset,
        batch_size=min(batch_size, len(subset)),
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    model = FineTuner(copy.deepcopy(backbone), feature_dim, num_classes, lr)
    L.seed_everything(seed, verbose=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[flops := StepFlops()],
    )
    trainer.fit(model, loader)
    return model.eval(), len(indices), flops.total(trainer.global_step)
