"""docs/extending.md's paths, walked as written: a toy method, a toy federated algorithm and a toy
evaluation protocol, each one class and one registry line (the method also a YAML), run through
the entry points."""

import csv

import torch
import torch.nn.functional as F
from conftest import tiny_args
from torch import nn

from ssl_zoo.evaluation.protocol import Protocol
from ssl_zoo.evaluation.protocols import PROTOCOLS
from ssl_zoo.federated.algorithms import ALGORITHMS
from ssl_zoo.federated.algorithms.base import FedAlgorithm
from ssl_zoo.jobs.evaluate import main as evaluate_main
from ssl_zoo.jobs.federate import main as federate_main
from ssl_zoo.jobs.train import main as train_main
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.base import SSLMethod, StepOutput


class Toy(SSLMethod):
    """Two views, a linear projector, and their misalignment as the loss (it would collapse in a
    long run; a toy)."""

    family = "toy"
    paper = "https://example.org/toy"
    views = "simclr"
    capabilities = frozenset({"two_views", "pair"})

    def __init__(self, proj_dim: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.projection_head = nn.Linear(self.feature_dim, proj_dim)

    def ssl_step(self, views):
        features = self.backbone(torch.cat(views))
        z0, z1 = F.normalize(self.projection_head(features), dim=1).chunk(2)
        loss = (2 - 2 * (z0 * z1).sum(dim=1)).mean()
        return StepOutput(loss, features[: len(z0)], z0, (z0, z1))


class Spread(FedAlgorithm):
    """FedAvg plus a term that keeps the clients' two views' embeddings apart from the batch's
    mean, with its weight as its own option."""

    name = "spread"
    requires = frozenset({"pair"})

    def __init__(self, weight: float = 0.1):
        super().__init__()
        self.weight = weight

    def client_start(self, model, global_state, private, received, client):
        return {"spread_weight": self.weight}  # rounds.csv logs what an algorithm decided

    def client_loss(self, model, views, out, loss):
        z = torch.cat(out.pair)
        return loss + self.weight * z.mean(dim=0).pow(2).sum()


class Centroid(Protocol):
    """Each test image takes the class of the nearest mean of a class's bank features."""

    name = "centroid"

    def __init__(self, normalized: bool = True, knn_k: int = 200):
        self.normalized = normalized
        self.knn_k = knn_k  # named like an evaluate.py option: takes its value

    def run(self, bench):
        x, test = bench.train_x, bench.test_x
        if self.normalized:
            x, test = F.normalize(x, dim=1), F.normalize(test, dim=1)
        classes = range(bench.splits.num_classes)
        means = torch.stack([x[bench.train_y == c].mean(dim=0).nan_to_num() for c in classes])
        return {**bench.accuracy(test @ means.T), "normalized": self.normalized, "k": self.knn_k}


def test_a_toy_method_algorithm_and_protocol_run_through_the_entry_points(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Toy)  # the registry lines
    monkeypatch.setitem(ALGORITHMS, "spread", Spread)
    monkeypatch.setitem(PROTOCOLS, "centroid", Centroid)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("method: toy\nmethod_args:\n  proj_dim: 8\noptimizer: adamw\nlr: 1.0e-3\n")

    trained = train_main(["--config", str(recipe), *tiny_args(tmp_path / "central")])
    assert trained["method"] == "toy" and 0 <= trained["knn_top1"] <= 1
    assert torch.load(tmp_path / "central" / "backbone.pt", weights_only=False)["spec"]

    federated = federate_main(
        ["--config", str(recipe), *tiny_args(tmp_path / "fleet"), "--num_clients", "2",
         "--partition", "iid", "--rounds", "1", "--fed_algorithm", "spread",
         "--fed_algorithm_args.weight", "0.5"]
    )  # fmt: skip
    assert federated["method"] == "toy" and 0 <= federated["knn_top1"] <= 1
    with (tmp_path / "fleet" / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["spread_weight"]) == 0.5  # its option reached every client

    evaluated = evaluate_main(
        ["--checkpoint", str(tmp_path / "central" / "backbone.pt"), "--protocol", "centroid",
         "--protocol_args.normalized", "false", "--knn_k", "7", "--dataset", "synthetic",
         "--train_samples", "64", "--test_samples", "40", "--num_workers", "0", "--plot", "false",
         "--track_energy", "false"]
    )  # fmt: skip
    found = evaluated["results"]["centroid"]
    assert (found["normalized"], found["k"]) == (False, 7) and evaluated["top1"] == found["top1"]
    assert 0 <= found["top1"] <= found["top5"] <= 1
