"""Label-free quality metrics of an embedding, for monitoring SSL where labels are scarce.

- RankMe (Garrido et al., 2023): exp of the entropy of the normalised singular values; the
  effective number of dimensions the features use (1 when collapsed, up to min(N, D)).
- embedding_std: per-dimension std of L2-normalised features; 1/sqrt(D) spread out, 0 collapsed.
- alignment and uniformity (Wang & Isola, 2020): E||f(x) - f(x+)||^2 over positive pairs (lower is
  better) and log E exp(-2 ||f(x) - f(y)||^2) over all pairs (lower is better), on the sphere.
- silhouette: how well k-means clusters of the features separate (-1..1), via scikit-learn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# RankMe's epsilon (paper: 1e-7) keeps the log finite for zero singular values.
_RANKME_EPS = 1e-7


@torch.no_grad()
def rankme(features: torch.Tensor) -> float:
    singular = torch.linalg.svdvals(features.double())
    p = singular / singular.sum() + _RANKME_EPS
    return float(torch.exp(-(p * torch.log(p)).sum()))


@torch.no_grad()
def embedding_std(features: torch.Tensor) -> float:
    return float(F.normalize(features.float(), dim=1).std(dim=0).mean())


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor) -> float:
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return float((z1 - z2).pow(2).sum(dim=1).mean())


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2.0, max_samples: int = 4096) -> float:
    z = F.normalize(z.float()[:max_samples], dim=1)  # pairwise distances grow as N^2
    return float(torch.pdist(z).pow(2).mul(-t).exp().mean().log())


def silhouette(features: torch.Tensor, clusters: int, seed: int = 0, max_samples: int = 5000):
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = F.normalize(features.float()[:max_samples], dim=1).numpy()
    if clusters < 2 or len(x) <= clusters:
        return None
    labels = KMeans(n_clusters=clusters, n_init=3, random_state=seed).fit_predict(x)
    return float(silhouette_score(x, labels))


def label_free_metrics(features, views=None, clusters: int = 10, seed: int = 0) -> dict:
    """All of the above; alignment only when `views` (features of two augmented views) is given."""
    metrics = {
        "rankme": rankme(features),
        "embedding_std": embedding_std(features),
        "uniformity": uniformity(features),
        "silhouette": silhouette(features, clusters, seed),
        "alignment": alignment(*views) if views is not None else None,
    }
    return metrics
