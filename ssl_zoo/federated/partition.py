"""Split a labeled training set over clients: IID, Dirichlet non-IID, or k classes per client.

Partitions are deterministic in (labels, seed) and cover every sample exactly once. Labels are
used only to shape the split; clients never see them during SSL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ssl_zoo.errors import UserError, unknown_choice

PARTITIONS = ("iid", "dirichlet", "shards")


def partition(
    labels: Sequence[int],
    num_clients: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    labels = np.asarray(labels)
    if scheme not in PARTITIONS:
        raise unknown_choice("partition", scheme, PARTITIONS)
    if num_clients < 1:
        raise UserError(f"num_clients must be >= 1 (got {num_clients})")
    if num_clients > len(labels):
        raise UserError(f"num_clients ({num_clients}) is more than the samples ({len(labels)})")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(len(labels)), num_clients)
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, num_clients, alpha, rng)
    else:
        parts = _shards(labels, num_clients, classes_per_client, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels, num_clients, alpha, rng) -> list[np.ndarray]:
    """Each class is split over clients in proportions drawn from Dirichlet(alpha): small alpha
    gives each client few classes, large alpha approaches IID."""
    if alpha <= 0:
        raise UserError(f"alpha must be > 0 (got {alpha})")
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client] += chunk.tolist()
    return [np.asarray(p, dtype=np.int64) for p in parts]


def _shards(labels, num_clients, classes_per_client, rng) -> list[np.ndarray]:
    """Sort by label, cut into num_clients x classes_per_client shards, deal each client
    classes_per_client shards (McMahan et al., 2017): most clients see that many classes."""
    if classes_per_client < 1:
        raise UserError(f"classes_per_client must be >= 1 (got {classes_per_client})")
    shards = num_clients * classes_per_client
    if shards > len(labels):
        raise UserError(f"{shards} shards need at least as many samples (have {len(labels)})")
    order = np.argsort(labels * len(labels) + rng.permutation(len(labels)), kind="stable")
    pieces = np.array_split(order, shards)
    dealt = rng.permutation(shards)
    return [
        np.concatenate(
            [pieces[s] for s in dealt[c * classes_per_client : (c + 1) * classes_per_client]]
        )
        for c in range(num_clients)
    ]


def class_histograms(
    labels: Sequence[int], parts: list[np.ndarray], num_classes: int
) -> np.ndarray:
    """(clients, classes) counts."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def plot_histograms(histograms: np.ndarray, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients, classes = histograms.shape
    # A bar per client reads well up to a few dozen clients; past that (cross-device: thousands)
    # one bar each would make a figure metres wide of 100,000 patches, so the classes are drawn
    # as stacked bands over the client index instead, in a figure of bounded width.
    many = clients > 64
    fig, ax = plt.subplots(figsize=(12 if many else max(4, 0.5 * clients + 2), 3.5), dpi=100)
    colours = plt.get_cmap("tab10" if classes <= 10 else "tab20")
    if many:
        ax.stackplot(np.arange(clients), histograms.T, step="mid", labels=[str(c) for c in range(classes)],
                     colors=[colours(c % 20) for c in range(classes)])  # fmt: skip
    else:
        bottom = np.zeros(clients)
        for c in range(classes):
            ax.bar(
                range(clients), histograms[:, c], bottom=bottom, color=colours(c % 20), label=str(c)
            )
            bottom += histograms[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    if classes <= 20:
        ax.legend(title="class", fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
