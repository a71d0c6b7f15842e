"""Weighted kNN classification on L2-normalised features (InstDisc / lightly's monitor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict


@torch.no_grad()
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
    """Top-1 and top-5 accuracy (fractions) of `query` against a labeled memory `bank`.

    Queries are processed in chunks so the similarity matrix never exceeds chunk_size x len(bank).
    """
    query, bank = F.normalize(query.float(), dim=1), F.normalize(bank.float(), dim=1)
    bank_t = bank.t().contiguous()
    k = min(k, len(bank))
    top1 = top5 = 0
    for start in range(0, len(query), chunk_size):
        q, y = query[start : start + chunk_size], query_labels[start : start + chunk_size]
        ranked = knn_predict(q, bank_t, bank_labels, num_classes, k, temperature)
        top1 += (ranked[:, 0] == y).sum().item()
        top5 += (ranked[:, :5] == y[:, None]).any(dim=1).sum().item()
    return top1 / len(query), top5 / len(query)
