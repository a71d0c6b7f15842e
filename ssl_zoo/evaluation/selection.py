"""Which images to label: a budget of training images chosen from the encoder's embeddings.

The label-free rules wrap scikit-activeml's pool strategies (`skactiveml.pool`), given the
L2-normalised embeddings of the pool and a label vector that is missing everywhere: `select`
takes no labels, so no rule can read one before the images are chosen.

- random: a uniform draw from the pool (the honest baseline: it reads no label either).
- typiclust: k-means with one cluster per label, then the most typical image (highest density
  over its 20 nearest neighbours, as in the paper) of each cluster (Hacohen et al., ICML 2022).
- probcover: greedy max coverage of delta-balls; delta is the largest radius whose ball graph
  is 95% pure w.r.t. a k-means clustering into as many clusters as classes (Yehuda et al.,
  NeurIPS 2022; the number of classes is the task's, not any image's label).
- kcenter: CoreSet's farthest-first traversal (Sener & Savarese, ICLR 2018); known to lose to
  random at the smallest budgets, where it picks outliers.
- balanced: the same fraction of every class, drawn at random. It reads the labels, which no
  fleet has before labeling; it is what `--label_fraction` has always drawn, kept as the default
  so earlier tables reproduce, and as an oracle row beside the label-free rules.

A federated encoder's clients each select their share of the budget (proportional to their
images, largest remainder) on their own images: only counts and chosen ids leave a client.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssl_zoo.errors import UserError

RULES = ("balanced", "random", "typiclust", "probcover", "kcenter")
LABEL_FREE = RULES[1:]
TYPICALITY_NEIGHBOURS = 20  # TypiClust's k for typicality
PROBCOVER_PURITY = 0.95  # ProbCover's alpha: the ball graph's purity that fixes delta
PROBCOVER_DELTAS = np.round(np.arange(0.05, 2.0, 0.05), 2)  # radii tried on the unit sphere


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


def balanced_count(labels, budget: int, seed: int = 0) -> list[int]:
    """`budget` indices spread over the classes as evenly as they allow, drawn with `seed`."""
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    if budget < len(classes):
        raise UserError(f"--select balanced needs at least one label per class: --labels "
                        f"{budget} is fewer than the {len(classes)} classes")  # fmt: skip
    rng = np.random.default_rng(seed)
    members = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    counts = dict.fromkeys(classes, 0)
    for _ in range(budget):  # one more to the class with the fewest picks that has images left
        open_ = [c for c in classes if counts[c] < len(members[c])]
        counts[min(open_, key=lambda c: (counts[c], rng.random()))] += 1
    return sorted(int(i) for c in classes for i in members[c][: counts[c]])


def _strategy(rule: str, seed: int, num_classes: int):
    from skactiveml.pool import CoreSet, ProbCover, RandomSampling, TypiClust

    if rule == "random":
        return RandomSampling(random_state=seed)
    if rule == "typiclust":
        return TypiClust(random_state=seed, k=TYPICALITY_NEIGHBOURS,
                         cluster_algo_dict={"n_init": 1})  # fmt: skip
    if rule == "probcover":
        return ProbCover(n_classes=max(num_classes, 2), deltas=PROBCOVER_DELTAS,
                         alpha=PROBCOVER_PURITY, random_state=seed,
                         cluster_algo_dict={"n_init": 1})  # fmt: skip
    return CoreSet(random_state=seed)


def check_typiclust(budget: int, pool: int) -> None:
    if budget > pool // 2:
        raise UserError(f"typiclust clusters the pool into one cluster per label: {budget} "
                        f"labels need a pool of at least {2 * budget} images (have {pool})")  # fmt: skip


def select(features, budget: int, rule: str, seed: int = 0, num_classes: int = 2) -> list[int]:
    """Indices of `budget` images of the pool whose embeddings are `features` (n, d), chosen by
    a label-free `rule` with `seed`. No labels are passed in: none can be read."""
    if rule not in LABEL_FREE:
        raise UserError(f"select() takes a label-free rule ({', '.join(LABEL_FREE)}), not {rule}")
    x = np.asarray(features, dtype=np.float32)
    if not 1 <= budget <= len(x):
        raise UserError(f"a budget of {budget} labels does not fit a pool of {len(x)} images")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if rule == "typiclust":
        check_typiclust(budget, len(x))
    missing = np.full(len(x), np.nan)  # every label missing: the strategies see none
    with warnings.catch_warnings():
        # ProbCover warns when no radius reaches the purity; it then takes the smallest, as said.
        warnings.filterwarnings("ignore", message=".*maximum purity.*")
        chosen = _strategy(rule, seed, num_classes).query(x, missing, batch_size=budget)
    return sorted(int(i) for i in chosen)


def client_shares(sizes: list[int], budget: int) -> list[int]:
    """The budget split over clients in proportion to their images (largest remainder, ties to
    the lower client index), never more than a client holds."""
    total = sum(sizes)
    if budget > total:
        raise UserError(f"a budget of {budget} labels does not fit a pool of {total} images")
    exact = np.asarray(sizes, dtype=float) * budget / total
    shares = np.floor(exact).astype(int)
    for client in np.argsort(-(exact - shares), kind="stable")[: budget - shares.sum()]:
        shares[client] += 1
    return [int(s) for s in shares]


def select_per_client(features, clients: list[np.ndarray], budget: int, rule: str,
                      seed: int = 0, num_classes: int = 2) -> tuple[list[int], list[int]]:  # fmt: skip
    """Each client selects its share on its own images' embeddings with the same rule (its own
    seed); returns the chosen pool indices and each client's count. A client sends only those.
    A client asked for more than half its images cannot make a typiclust cluster per label: it
    draws its share at random."""
    x = np.asarray(features)
    shares = client_shares([len(c) for c in clients], budget)
    chosen: list[int] = []
    for client, (members, share) in enumerate(zip(clients, shares, strict=True)):
        if share == 0:
            continue
        rule_here = "random" if rule == "typiclust" and share > len(members) // 2 else rule
        picks = select(x[members], share, rule_here, seed + client, num_classes)
        chosen += np.asarray(members)[picks].tolist()
    return sorted(chosen), shares


def file_hash(path: str | Path) -> str:
    """sha256 of a checkpoint's bytes (first 16 hex digits): which encoder chose a selection."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def write_selection(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1))


def read_selection(path: str | Path, dataset: str, ids: list[str]) -> tuple[list[int], dict]:
    """The pool indices of a selection.json made for this dataset and pool; one line otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        wanted = record["ids"]
    except FileNotFoundError:
        raise UserError(f"--selection {path}: file not found") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(
            f"--selection {path} is not a selection.json written by evaluate.py"
        ) from None
    if record.get("dataset") != dataset:
        raise UserError(f"--selection {path} was made for dataset {record.get('dataset')}, "
                        f"not {dataset}")  # fmt: skip
    where = {image_id: index for index, image_id in enumerate(ids)}
    absent = [i for i in wanted if i not in where]
    if absent or record.get("pool") != len(ids):
        raise UserError(f"--selection {path} was made for another pool ({record.get('pool')} "
                        f"images; {len(absent)} of its {len(wanted)} ids are not in this "
                        f"{len(ids)}-image pool, e.g. {absent[:1]})")  # fmt: skip
    return sorted(where[i] for i in wanted), record


def selection_plot(features, chosen: list[int], images: list, path: Path, title: str) -> Path:
    """The chosen images as a grid (at most 50) beside a PCA projection of the pool's embeddings
    with the picks marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    xy = PCA(n_components=2, random_state=0).fit_transform(x)
    shown = images[:50]
    cols = min(10, max(1, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig = plt.figure(figsize=(6 + 0.8 * cols, max(4.0, 0.8 * rows + 1)))
    grid = fig.add_gridspec(rows, cols + 8)
    ax = fig.add_subplot(grid[:, :7])
    ax.scatter(xy[:, 0], xy[:, 1], s=2, c="#bbbbbb", label=f"pool ({len(x)})")
    ax.scatter(xy[chosen, 0], xy[chosen, 1], s=18, c="#d62728", label=f"chosen ({len(chosen)})")
    ax.set_title("embeddings (PCA)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    for k, image in enumerate(shown):
        cell = fig.add_subplot(grid[k // cols, 8 + k % cols])
        cell.imshow(np.asarray(image))
        cell.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def federated_clients(run_dir: str | Path, pool_ids: list[str]) -> list[np.ndarray]:
    """Each client's images of a federated run (its config.yaml: data, partition, seed), as
    indices of this evaluation's pool. The partition is rebuilt as the federation made it; a
    federation that trained on other images is refused."""
    import yaml

    from ssl_zoo.data import dataset_labels, image_ids, load_splits
    from ssl_zoo.federated.partition import partition

    config = Path(run_dir) / "config.yaml"
    try:
        fed = yaml.safe_load(config.read_text())
        keys = ("dataset", "data_dir", "train_samples", "num_clients", "partition", "alpha",
                "classes_per_client", "seed")  # fmt: skip
        dataset, data_dir, samples, clients, scheme, alpha, per_client, seed = map(fed.get, keys)
        if clients is None or scheme is None:
            raise KeyError("num_clients")
    except FileNotFoundError:
        raise UserError(f"--federated_selection {run_dir}: no config.yaml there (a federate.py "
                        "run directory has one)") from None  # fmt: skip
    except (yaml.YAMLError, AttributeError, KeyError):
        raise UserError(f"--federated_selection {run_dir}: its config.yaml is not a federate.py "
                        "run's") from None  # fmt: skip
    train = load_splits(dataset, data_dir, None, samples, 1, seed).train
    where = {image_id: index for index, image_id in enumerate(pool_ids)}
    fed_ids = image_ids(train, data_dir)
    if len(fed_ids) != len(pool_ids) or any(i not in where for i in fed_ids):
        raise UserError(f"--federated_selection {run_dir}: the federation trained on "
                        f"{len(fed_ids)} images of {dataset} that are not this evaluation's "
                        f"{len(pool_ids)}-image pool")  # fmt: skip
    parts = partition(dataset_labels(train), clients, scheme, alpha, per_client, seed)
    return [np.asarray([where[fed_ids[i]] for i in part], dtype=np.int64) for part in parts]


def check_budget(cfg, ids: list[str], labels) -> None:
    """The labeling options against the pool, before any feature is computed: one line for a
    budget larger than the pool, fewer labels than classes for a rule that needs one per class,
    or a --selection file made for another dataset or pool, or by an earlier version of the
    evaluated checkpoint."""
    if cfg.selection:
        _, record = read_selection(cfg.selection, cfg.dataset, ids)
        # Another encoder may reuse a selection (the same labels for every backbone); the same
        # checkpoint file with other bytes is a retrained run whose selection is stale.
        made_by, now = str(record.get("encoder", "")), cfg.encoder_id()
        if made_by != now and made_by.split(" (sha256")[0] == now.split(" (sha256")[0]:
            raise UserError(f"--selection {cfg.selection} was made by {made_by}, an earlier "
                            f"version of {now}: select again, or pass a copy of that encoder")  # fmt: skip
        return
    budget = cfg.labels or max(1, round(cfg.label_fraction * len(ids)))
    if budget > len(ids):
        raise UserError(f"--labels {budget} is more than the {len(ids)} training images")
    classes = len(np.unique(np.asarray(labels)[np.asarray(labels) >= 0]))
    if cfg.select == "balanced" and cfg.labels and cfg.labels < classes:
        raise UserError(f"--select balanced needs at least one label per class: --labels "
                        f"{cfg.labels} is fewer than the {classes} classes")  # fmt: skip
    if cfg.select == "typiclust":
        check_typiclust(budget, len(ids))


@dataclass
class Pool:
    """The training images a selection chooses from."""

    ids: list[str]  # their names in selection.json (data.image_ids)
    digests: list[str]  # hashes of their bytes: the order the rules see (data.image_digests)
    features: Any  # the encoder's embeddings, (n, d)
    labels: np.ndarray  # read by --select balanced alone
    num_classes: int
    image_of: Callable[[int], Any] | None = None  # an image to draw in selection.png


def choose_labeled(cfg, pool: Pool, encoder: str, out_dir: Path) -> tuple[list[int], dict]:
    """The labeled images of an evaluation as pool indices, and the selection record, written
    to out_dir/selection.json (and selection.png when cfg.plot and pool.image_of are given).

    From --selection FILE, or chosen by --select RULE: --labels N images, or --label_fraction
    of the pool (balanced: of each class, as before there were rules)."""
    ids, features, labels, num_classes = pool.ids, pool.features, pool.labels, pool.num_classes
    if cfg.selection:
        indices, record = read_selection(cfg.selection, cfg.dataset, ids)
        record = {**record, "reused_from": str(cfg.selection)}
    else:
        tic = time.time()
        budget = cfg.labels or max(1, round(cfg.label_fraction * len(ids)))
        shares = None
        if cfg.select == "balanced":
            indices = (balanced_count(labels, cfg.labels, cfg.seed) if cfg.labels
                       else balanced_subset(labels, cfg.label_fraction, cfg.seed))  # fmt: skip
        else:
            # The rules see the pool in the order of its images' bytes, not in the dataset's,
            # which an image folder sorts by class: neither folders nor labels steer a pick.
            order = np.argsort(np.asarray(pool.digests), kind="stable")
            x = np.asarray(features)[order]
            if cfg.federated_selection:
                rank = np.argsort(order)  # pool index -> position in the id order
                clients = [
                    np.sort(rank[c]) for c in federated_clients(cfg.federated_selection, ids)
                ]
                picks, shares = select_per_client(x, clients, budget, cfg.select, cfg.seed,
                                                  num_classes)  # fmt: skip
            else:
                picks = select(x, budget, cfg.select, cfg.seed, num_classes)
            indices = sorted(int(i) for i in order[picks])
        record = {
            "rule": cfg.select,
            "labels": len(indices),
            "seed": cfg.seed,
            "dataset": cfg.dataset,
            "data_dir": cfg.data_dir,
            "pool": len(ids),
            "encoder": encoder,
            "federated_selection": cfg.federated_selection,
            "client_shares": shares,
            "seconds": round(time.time() - tic, 2),
            "ids": [ids[i] for i in indices],
        }
    write_selection(out_dir / "selection.json", record)
    if cfg.plot and pool.image_of is not None:
        title = f"{record['rule']}: {len(indices)} of {len(ids)} images ({encoder})"
        selection_plot(features, indices, [pool.image_of(i) for i in indices[:50]],
                       out_dir / "selection.png", title)  # fmt: skip
    return indices, record
