"""Weighted kNN classification on L2-normalised features (InstDisc / lightly's monitor)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from torchmetrics.functional.classification import multiclass_accuracy

from ssl_zoo.evaluation.protocol import Protocol


@torch.no_grad()
def knn_scores(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (N, C) of each query from its k nearest bank entries, best class highest.

    Queries go in chunks, so memory holds at most chunk_size x len(bank) similarities at once
    (1024 x 50,000 floats: 200 MB) whatever the size of the query set.
    """
    query, bank = F.normalize(query.float(), dim=1), F.normalize(bank.float(), dim=1)
    bank_t = bank.t().contiguous()
    k = min(k, len(bank))
    scores = torch.empty(len(query), num_classes)
    rank_values = torch.arange(num_classes, 0, -1, dtype=torch.float)  # best class: C, then C-1...
    for start in range(0, len(query), chunk_size):
        ranked = knn_predict(
            query[start : start + chunk_size], bank_t, bank_labels, num_classes, k, temperature
        )
        chunk = torch.empty(len(ranked), num_classes)
        chunk.scatter_(1, ranked.cpu(), rank_values.expand(len(ranked), -1))
        scores[start : start + len(ranked)] = chunk
    return scores


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (fractions); top-5 is top-C when there are fewer classes."""
    num_classes = scores.shape[1]
    labels = labels.cpu()

    def acc(k: int) -> float:
        return float(
            multiclass_accuracy(scores.cpu(), labels, num_classes, average="micro", top_k=k)
        )

    return acc(1), acc(min(5, num_classes))


def knn_accuracy(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (fractions) of `query` against a labeled memory `bank`."""
    scores = knn_scores(query, bank, bank_labels, num_classes, k, temperature, chunk_size)
    return topk_accuracy(scores, query_labels)


class KNN(Protocol):
    """The test images' classes voted by their nearest bank images."""

    name = "knn"

    def __init__(self, knn_k: int = 200, knn_t: float = 0.1):
        self.k, self.t = knn_k, knn_t

    def run(self, bench) -> dict:
        tic = time.time()
        scores = knn_scores(bench.test_x, bench.train_x, bench.train_y, bench.splits.num_classes,
                            self.k, self.t)  # fmt: skip
        bench.seconds["knn"] = time.time() - tic
        return bench.accuracy(scores)
