"""Federated SSL algorithms: each update rule against its equation on hand-made models, the loss
terms against direct computations, method checks, and resume keeping each algorithm's state.
(Both engines giving the same weights for every algorithm: test_federated.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from torch import nn

from ssl_zoo.errors import UserError
from ssl_zoo.federated.aggregate import state_bytes
from ssl_zoo.federated.algorithms.base import target_keys
from ssl_zoo.federated.algorithms.fedema import FedEMA
from ssl_zoo.federated.algorithms.fedu import FedU
from ssl_zoo.federated.algorithms.fedx import fedx_terms
from ssl_zoo.federated.algorithms.fusion import fusion_loss, matching_loss
from ssl_zoo.federated.algorithms.ldawa import LayerCosineMean
from ssl_zoo.jobs.federate import main as federate_main


class TinyBYOL(nn.Module):
    """The parts of a BYOL-style method the client-side algorithms touch."""

    def __init__(self):
        super().__init__()
        self.backbone, self.projection_head = nn.Linear(2, 2), nn.Linear(2, 2)
        self.prediction_head = nn.Linear(2, 2)
        self.target_backbone, self.target_projection_head = nn.Linear(2, 2), nn.Linear(2, 2)

    def momentum_pairs(self):
        return [(self.backbone, self.target_backbone),
                (self.projection_head, self.target_projection_head)]  # fmt: skip


ONLINE = ["backbone.weight", "backbone.bias", "projection_head.weight", "projection_head.bias"]
PREDICTOR = ["prediction_head.weight", "prediction_head.bias"]


def shifted(state, keys, distance):
    """`state` with `keys` moved so that their Euclidean distance to `state` is `distance`."""
    count = sum(state[k].numel() for k in keys)
    return {
        k: v + distance / math.sqrt(count) if k in keys else v.clone() for k, v in state.items()
    }


def start(algorithm, model, global_state, private):
    model.load_state_dict(global_state)
    decided = algorithm.client_start(model, global_state, private, {}, client=0) or {}
    return model.state_dict(), decided


def test_fedema_merges_by_divergence_with_lambda_fixed_at_the_first_merge():
    torch.manual_seed(0)
    model, fedema = TinyBYOL(), FedEMA(tau=0.7)
    assert fedema.local_keys(model) == {
        f"{m}.{p}"
        for m in ("target_backbone", "target_projection_head")
        for p in ("weight", "bias")
    }
    g1 = {k: v.clone() for k, v in model.state_dict().items()}
    # First round of a client: the global model as it is.
    assert all(torch.equal(v, g1[k]) for k, v in start(fedema, model, g1, {})[0].items())

    own = shifted(g1, ONLINE + PREDICTOR, 3.0)  # the predictor's share does not count
    own = shifted(own, ONLINE, 0.0)
    private = {f"fedema/w.{k}": own[k] for k in ONLINE + PREDICTOR}
    divergence = math.sqrt(sum(float((own[k] - g1[k]).pow(2).sum()) for k in ONLINE))
    merged, decided = start(fedema, model, g1, private)
    assert float(private["fedema/lambda"]) == pytest.approx(0.7 / divergence)
    assert decided["fedema_mu"] == pytest.approx(0.7)  # the first merge uses tau
    assert decided["fedema_divergence"] == pytest.approx(divergence)
    for k in ONLINE + PREDICTOR:
        assert torch.allclose(merged[k], 0.7 * own[k] + 0.3 * g1[k], atol=1e-6), k

    # Later merges keep lambda: half the divergence, half of tau; far away, mu clips at 1.
    g2 = {k: v.clone() for k, v in own.items()}
    g2 = shifted(g2, ONLINE, divergence / 2)
    merged, decided = start(fedema, model, g2, private)
    assert decided["fedema_mu"] == pytest.approx(0.35)
    assert torch.allclose(
        merged[ONLINE[0]], 0.35 * own[ONLINE[0]] + 0.65 * g2[ONLINE[0]], atol=1e-6
    )
    g3 = shifted(own, ONLINE, divergence * 5)
    merged, decided = start(fedema, model, g3, private)
    assert decided["fedema_mu"] == 1.0
    assert all(torch.allclose(merged[k], own[k]) for k in ONLINE + PREDICTOR)


@pytest.mark.parametrize("distance, keeps_own", [(0.3, False), (0.5, True)])
def test_fedu_takes_the_global_predictor_only_below_the_threshold(distance, keeps_own):
    torch.manual_seed(1)
    model, fedu = TinyBYOL(), FedU(threshold=0.4)
    g = {k: v.clone() for k, v in model.state_dict().items()}
    own = shifted(shifted(g, PREDICTOR, distance), ONLINE, 2.0)
    private = {f"fedu/pred.{k}": own[k] for k in PREDICTOR}
    state, decided = start(fedu, model, g, private)
    assert decided["fedu_divergence"] == pytest.approx(distance)
    assert decided["fedu_global_predictor"] == float(not keeps_own)
    for k in PREDICTOR:
        assert torch.equal(state[k], own[k] if keeps_own else g[k])
    assert all(torch.equal(state[k], g[k]) for k in ONLINE)  # the online network is always global
    assert set(fedu.client_end(model, g)) == {f"fedu/pred.{k}" for k in PREDICTOR}


def test_ldawa_weights_each_layer_by_its_cosine_to_the_global_layer():
    g = {"w": torch.tensor([1.0, 0.0]), "b": torch.zeros(2), "mean": torch.zeros(2)}
    a = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([1.0, 2.0]), "mean": torch.ones(2)}
    b = {
        "w": torch.tensor([0.0, 2.0]),
        "b": torch.tensor([3.0, 0.0]),
        "mean": torch.full((2,), 4.0),
    }
    mean = LayerCosineMean(g, layers={"w", "b"})
    mean.add(a, 30)
    mean.add(b, 10)
    out = mean.result()
    # cos(a.w, g.w) = 1/sqrt(2), cos(b.w, g.w) = 0, over the K = 2 clients (not by samples).
    assert torch.allclose(out["w"], torch.tensor([1.0, 1.0]) / math.sqrt(2) / 2)
    assert torch.allclose(out["b"], torch.tensor([2.0, 1.0]))  # an all-zero global layer: delta 1
    assert torch.allclose(out["mean"], torch.full((2,), (30 * 1.0 + 10 * 4.0) / 40))  # buffers


def direct_ntxent(u, v, t):
    z = F.normalize(torch.cat([u, v]), dim=1)
    n, total = len(z), 0.0
    for i in range(n):
        pos = (i + n // 2) % n
        den = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(n) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / den)
    return total / n


def direct_relation_js(u, v, anchors, t=0.1):
    def dist(x, i):
        sims = [float(F.cosine_similarity(x[i], anchors[j], dim=0)) / t for j in range(len(x))]
        den = sum(math.exp(s) for j, s in enumerate(sims) if j != i)
        return [math.exp(s) / den for j, s in enumerate(sims) if j != i]

    total = 0.0
    for i in range(len(u)):
        p, q = dist(u, i), dist(v, i)
        m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
        total += 0.5 * sum(
            a * math.log(a / c) + b * math.log(b / c) for a, b, c in zip(p, q, m, strict=True)
        )
    return total / len(u)


def test_fedx_terms_match_a_direct_computation():
    torch.manual_seed(2)
    z0, z1, p0, p1, g0, g1 = (torch.randn(5, 3) for _ in range(6))
    terms = fedx_terms(z0, z1, p0, p1, g0, g1)
    assert float(terms["global_contrast"]) == pytest.approx(direct_ntxent(p0, g1, 0.1), rel=1e-5)
    assert float(terms["global_relation"]) == pytest.approx(
        direct_relation_js(p0, p1, g0), rel=1e-4
    )
    assert float(terms["local_relation"]) == pytest.approx(direct_relation_js(z0, z1, z0), rel=1e-4)
    assert float(fedx_terms(z0, z0, p0, p0, g0, g1)["local_relation"]) == pytest.approx(0, abs=1e-6)


def test_fedx_on_moco_trains_the_query_side_and_keeps_the_queue():
    """MoCo's pair is (query, key): FedX's terms reach the encoder and its predictor through the
    query, never the momentum key encoder, and the queue advances by MoCo's own step only."""
    from ssl_zoo.backbones import BackboneSpec
    from ssl_zoo.federated.algorithms.fedx import FedX
    from ssl_zoo.methods import build_method

    torch.manual_seed(0)
    args = {"proj_hidden_dim": 32, "proj_dim": 16, "queue_size": 16}
    model = build_method("mocov2", args, backbone=BackboneSpec("timm:resnet10t"))
    fedx = FedX()
    fedx.prepare(model)
    fedx.client_start(model, model.state_dict(), {}, {}, client=0)
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    out = model.ssl_step(views)
    queue = model.criterion.memory_bank.bank.clone()
    loss = fedx.client_loss(model, views, out, out.loss)
    assert torch.equal(model.criterion.memory_bank.bank, queue)  # FedX enqueued nothing
    assert float(loss) > float(out.loss)  # three non-negative terms, not all zero
    loss.backward()
    assert all(p.grad is None for p in model.key_backbone.parameters())
    assert sum(p.grad.abs().sum() for p in model.backbone.parameters() if p.grad is not None) > 0
    assert all(p.grad is not None for p in model.fedx_predictor.parameters())


def test_feature_fusion_adds_remote_negatives_to_ntxent_as_computed_by_hand():
    torch.manual_seed(3)
    z0, z1, remote = torch.randn(3, 4), torch.randn(3, 4), F.normalize(torch.randn(2, 4), dim=1)
    z = torch.cat([z0, z1])
    # With no remote features it is SimCLR's own loss (lightly's NT-Xent).
    assert float(fusion_loss(z, None, 0.5)) == pytest.approx(
        float(NTXentLoss(0.5)(z0, z1)), rel=1e-5
    )
    zn, n, t, total = F.normalize(z, dim=1), 6, 0.5, 0.0
    for i in range(n):
        den = sum(math.exp(float(zn[i] @ zn[j]) / t) for j in range(n) if j != i)
        den += sum(math.exp(float(zn[i] @ r) / t) for r in remote)
        total += -math.log(math.exp(float(zn[i] @ zn[(i + 3) % n]) / t) / den)
    fused = float(fusion_loss(z, remote, t))
    assert fused == pytest.approx(total / n, rel=1e-5) and fused > float(fusion_loss(z, None, t))
    # Neighbourhood matching: cross-entropy to the other view's sharpened remote neighbourhood.
    expected = 0.0
    for i in range(n):
        target = torch.softmax(zn[(i + 3) % n] @ remote.T / (t / 2), dim=0)
        expected += -float((target * torch.log_softmax(zn[i] @ remote.T / t, dim=0)).sum())
    assert float(matching_loss(z, remote, t)) == pytest.approx(expected / n, rel=1e-5)


TINY = ["--dataset", "synthetic", "--train_samples", "96", "--test_samples", "40",
        "--backbone", "timm:resnet10t", "--batch_size", "16", "--num_workers", "0", "--knn_k", "10",
        "--num_clients", "2", "--partition", "iid", "--optimizer", "adamw", "--lr", "1e-3"]  # fmt: skip


@pytest.mark.parametrize(
    "algorithm, method, supported",
    [("fedema", "simclr", "nnclr, byol, simsiam"), ("fusion", "byol", "simclr"),
     ("fedx", "vicreg", "simclr, mocov2, byol, simsiam")],
)  # fmt: skip
def test_an_algorithm_refuses_a_method_it_does_not_fit_in_one_line(
    tmp_path, algorithm, method, supported
):
    with pytest.raises(
        UserError,
        match=rf"^--fed_algorithm {algorithm} works with {supported} \(methods with .+\), not {method}$",
    ):
        federate_main(
            [*TINY, "--method", method, "--fed_algorithm", algorithm, "--output_dir", str(tmp_path)]
        )


class Killed(Exception):
    pass


@pytest.mark.parametrize("algorithm, method", [("fedema", "byol"), ("fusion", "simclr")])
def test_resume_keeps_each_algorithms_client_and_server_state(tmp_path, algorithm, method):
    """A run stopped after round 1 of 2 and resumed ends where the uninterrupted run ends: round 2
    is the first to use FedEMA's per-client models and fusion's shared features, which only the
    checkpoint carries across the stop."""
    from ssl_zoo.config import parse_config
    from ssl_zoo.federated.config import FedConfig
    from ssl_zoo.federated.federation import build_federation
    from ssl_zoo.federated.loop import load_state, run_rounds

    args = [*TINY, "--method", method, "--fed_algorithm", algorithm, "--rounds", "2"]
    full = federate_main([*args, "--output_dir", str(tmp_path / "full")])

    def stop_after_round_1(row):
        if row["round"] == 1:
            raise Killed

    cut = tmp_path / "cut"
    cut.mkdir()
    cfg = parse_config(FedConfig, [*args, "--output_dir", str(cut)], prog="test")
    parts, clients, stack = build_federation(cfg)
    with pytest.raises(Killed):
        run_rounds(cfg, parts, stack, clients, cut, on_round=stop_after_round_1)
    saved = load_state(cut / "fed_state.pt")
    if algorithm == "fedema":
        assert all(any(k.startswith("fedema/w.") for k in saved.private[c]) for c in (0, 1))
    else:
        assert set(saved.algorithm["fusion"]["features"]) == {0, 1}
    resumed = federate_main([*args, "--output_dir", str(cut), "--resume"])
    assert resumed["knn_top1_per_round"] == full["knn_top1_per_round"]
    if algorithm == "fedema":  # the resumed round merged with the saved models, at mu = tau
        rows = (cut / "rounds.csv").read_text().splitlines()
        header, last = rows[0].split(","), rows[-1].split(",")
        assert float(last[header.index("fedema_mu")]) == pytest.approx(0.7)
    a = torch.load(tmp_path / "full" / "fed_state.pt", weights_only=False)["global_state"]
    b = torch.load(cut / "fed_state.pt", weights_only=False)["global_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    if algorithm == "fedema":  # the clients' target networks stay on the clients, both ways
        kept = target_keys(parts.model)
        online = state_bytes({k: v for k, v in a.items() if k not in kept})
        assert (
            kept and full["bytes_up"] == full["bytes_down"] == 2 * 2 * online
        )  # 2 clients, 2 rounds
        initial = build_federation(cfg)[0].model.state_dict()  # seeded: the run's first model
        assert all(torch.equal(a[k], initial[k]) for k in kept)  # never uploaded nor averaged


def test_shared_moments_take_the_parameters_memory_layout():
    """Moments arrive contiguous (Flower's records); a channels_last weight must get them in its
    own layout, or a fused AdamW step pairs each weight with another element's moment."""
    from types import SimpleNamespace

    from ssl_zoo.federated.algorithms.shared_optimizer import load_optimizer_tensors

    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(conv.parameters(), fused=True)
    moment = torch.randn(4, 3, 3, 3)
    load_optimizer_tensors(SimpleNamespace(optimizers=[optimizer]), {
        "optimizer/0.0.exp_avg": moment, "optimizer/0.0.exp_avg_sq": moment.abs(),
        "optimizer/0.0.step": torch.tensor(3.0)})  # fmt: skip
    state = optimizer.state[conv.weight]
    assert state["exp_avg"].stride() == conv.weight.stride() != moment.stride()
    assert torch.equal(state["exp_avg"], moment) and float(state["step"]) == 3.0
    assert conv.bias not in optimizer.state  # no entries for it: it starts fresh
