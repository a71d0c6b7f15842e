"""FeatureBench: an encoder's features of a labeled dataset's train (the bank) and test images,
computed once for every protocol that scores them, and the labeled subset where one is asked for
(--labels, --select, --selection, or a protocol that trains on few labels)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssl_zoo.config import inference_device
from ssl_zoo.data import (
    DATASETS,
    Transformed,
    dataset_labels,
    image_digests,
    image_ids,
    load_splits,
)
from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.knn import topk_accuracy
from ssl_zoo.evaluation.label_free import label_free_metrics
from ssl_zoo.evaluation.linear import train_linear_probe
from ssl_zoo.evaluation.plots import embedding_plot
from ssl_zoo.evaluation.selection import Pool, check_budget, choose_labeled
from ssl_zoo.views import build_views, eval_transform


@torch.no_grad()
def extract_features(model: nn.Module, dataset, cfg, device, desc: str):
    """Features of a dataset in batches (or of each view, for multi-view transforms)."""
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    features, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False):
        if isinstance(images, list):
            features.append(torch.stack([model(v.to(device)).float().cpu() for v in images]))
        else:
            features.append(model(images.to(device)).float().cpu())
        labels.append(targets)
    dim = 1 if features[0].ndim == 3 else 0
    return torch.cat(features, dim=dim), torch.cat(labels)


class FeatureBench:
    def __init__(self, cfg, model: nn.Module, meta: dict, out_dir: Path, labeling: bool):
        self.cfg, self.model, self.out_dir = cfg, model, out_dir
        splits = load_splits(cfg.dataset, cfg.data_dir, cfg.image_size or meta.get("image_size"),
                             cfg.train_samples, cfg.test_samples, cfg.seed)  # fmt: skip
        if splits.bank is None:
            raise UserError(f"{cfg.dataset} at {cfg.data_dir} has no labeled train and test splits")
        self.splits = splits
        self.device = inference_device(cfg.accelerator)
        self.normalize = DATASETS[cfg.dataset].normalize
        self.transform = eval_transform(splits.image_size, self.normalize)
        pool_ids = image_ids(splits.bank, cfg.data_dir)
        if labeling:
            check_budget(cfg, pool_ids, dataset_labels(splits.bank))
        self.seconds: dict[str, float] = {}
        tic = time.time()
        self.train_x, self.train_y = self.features(model, splits.bank, "train features")
        self.test_x, self.test_y = self.features(model, splits.test, "test features")
        self.seconds["features"] = time.time() - tic
        # The labeled subset (indices into the bank) and how it was chosen, where one is asked for.
        self.labeled: list[int] | None = None
        self.selection: dict | None = None
        if labeling:
            pool = Pool(pool_ids, image_digests(splits.bank), self.train_x, self.train_y.numpy(),
                        splits.num_classes, lambda i: splits.bank[i][0])  # fmt: skip
            self.labeled, selection = choose_labeled(cfg, pool, cfg.encoder_id(), out_dir)
            self.selection = {k: selection[k] for k in ("rule", "labels")}
            self.seconds["selection"] = selection.get("seconds", 0.0)

    def features(self, model: nn.Module, images, desc: str, transform=None):
        """A model's outputs on a split's images (the evaluation transform unless given)."""
        dataset = Transformed(images, transform or self.transform)
        return extract_features(model, dataset, self.cfg, self.device, desc)

    def accuracy(self, logits: torch.Tensor) -> dict[str, float]:
        """Top-1 and top-5 of scores over the test images."""
        return dict(zip(("top1", "top5"), topk_accuracy(logits, self.test_y), strict=True))

    def tested(self, classifier: nn.Module, desc: str) -> dict[str, float]:
        """Top-1 and top-5 of a whole classifier (encoder and head) on the test images."""
        return self.accuracy(self.features(classifier, self.splits.test, desc)[0])

    def linear_probe(self, x: torch.Tensor, y: torch.Tensor, epochs: int):
        """A probe on these training features: (classifier, mean, std) and its test accuracy."""
        probe = train_linear_probe(x, y, self.splits.num_classes, epochs, seed=self.cfg.seed)
        classifier, mean, std = probe
        with torch.no_grad():
            return probe, self.accuracy(classifier((self.test_x - mean) / std))

    def label_free(self) -> dict:
        """Label-free metrics on the test features; alignment needs two augmented views of each
        image."""
        tic = time.time()
        pair_views = build_views("simclr", self.splits.image_size, self.normalize,
                                 {"gaussian_blur": 0.0})  # fmt: skip
        views, _ = self.features(self.model, self.splits.test, "view pairs", pair_views)
        found = label_free_metrics(self.test_x, (views[0], views[1]), self.splits.num_classes,
                                   self.cfg.seed)  # fmt: skip
        self.seconds["label_free"] = time.time() - tic
        return found

    def plot(self) -> str | None:
        """embedding.png: t-SNE of the test features coloured by class."""
        if not self.cfg.plot:
            return None
        title = f"{self.cfg.checkpoint} on {self.cfg.dataset} (test split)"
        return str(embedding_plot(self.test_x, self.test_y, self.out_dir / "embedding.png", title,
                                  self.cfg.seed))  # fmt: skip
