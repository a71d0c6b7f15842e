"""A 2-D picture of an embedding (t-SNE), coloured by class."""

from __future__ import annotations

from pathlib import Path

import torch


def embedding_plot(
    features: torch.Tensor, labels: torch.Tensor, path: str | Path, title: str, seed: int = 0,
    max_points: int = 2000,
) -> Path:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(features), generator=generator)[:max_points]
    x = torch.nn.functional.normalize(features[keep].float(), dim=1).numpy()
    y = labels[keep].numpy()
    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
    points = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed
    ).fit_transform(x)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    scatter = ax.scatter(points[:, 0], points[:, 1], c=y, cmap="tab10", s=6)
    ax.legend(*scatter.legend_elements(), title="class", fontsize=7, loc="best", markerscale=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
