"""Each method's loss equals an independent implementation of its paper's equation.

The methods use lightly's losses; these tests write each equation out again, on fixed tensors.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_zoo.backbones import BackboneSpec
from ssl_zoo.methods import build_method

SPEC = BackboneSpec("timm:resnet10t")
B, D = 6, 8


@pytest.fixture
def z():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)


def criterion(name, **args):
    return build_method(name, args, backbone=SPEC).criterion


def info_nce(z0, z1, tau):
    """SimCLR's NT-Xent: each of the 2B views against its partner, all 2B-2 others negative."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    n = len(z0)
    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        logits = torch.stack([z[i] @ z[k] / tau for k in others])
        total += -(z[i] @ z[partner] / tau - torch.logsumexp(logits, 0))
    return total / (2 * n)


def test_simclr_nt_xent(z):
    assert criterion("simclr", temperature=0.3)(*z).item() == pytest.approx(
        info_nce(*z, 0.3).item(), rel=1e-5
    )


def test_mocov2_infonce_against_the_queue(z):
    loss = criterion("mocov2", temperature=0.2, queue_size=5, proj_dim=D)
    queue = F.normalize(torch.randn(5, D, generator=torch.Generator().manual_seed(1)), dim=1)
    loss.memory_bank.bank = queue.clone()
    q, k = F.normalize(z[0], dim=1), F.normalize(z[1], dim=1)
    expected = 0.0
    for i in range(B):
        logits = torch.cat([(q[i] @ k[i]).view(1), queue @ q[i]]) / 0.2
        expected += -(logits[0] - torch.logsumexp(logits, 0))
    assert loss(*z).item() == pytest.approx(expected.item() / B, rel=1e-5)


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_negative_cosine_similarity(name, z):
    p, t = z
    expected = -sum(p[i] @ t[i] / (p[i].norm() * t[i].norm()) for i in range(B)) / B
    assert criterion(name)(p, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_vicreg_three_terms_with_their_weights(z):
    za, zb = z
    lam, mu, nu, eps = 2.0, 3.0, 0.5, 1e-4

    def variance(x):  # hinge on the std of each dimension, gamma = 1
        return sum(max(0.0, 1 - math.sqrt(x[:, j].var().item() + eps)) for j in range(D)) / D

    def covariance(x):  # squared off-diagonal covariances, divided by the dimension
        c = torch.cov(x.T)
        return (c.pow(2).sum() - c.diagonal().pow(2).sum()).item() / D

    invariance = ((za - zb) ** 2).sum().item() / (B * D)
    # The official code (and lightly) averages the two branches' variance terms.
    expected = (
        lam * invariance
        + mu * (variance(za) + variance(zb)) / 2
        + nu * (covariance(za) + covariance(zb))
    )
    loss = criterion("vicreg", invariance_weight=lam, variance_weight=mu, covariance_weight=nu)
    assert loss(za, zb).item() == pytest.approx(expected, rel=1e-5)


def test_barlow_twins_cross_correlation(z):
    za, zb = z
    lam = 0.1

    def standardise(x):  # batch normalisation without affine parameters
        return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)

    c = standardise(za).T @ standardise(zb) / B
    on = sum((1 - c[i, i]) ** 2 for i in range(D))
    off = sum(c[i, j] ** 2 for i in range(D) for j in range(D) if i != j)
    expected = on + lam * off
    assert criterion("barlowtwins", lambda_param=lam)(za, zb).item() == pytest.approx(
        expected.item(), rel=1e-4
    )


def sinkhorn_knopp(scores, eps, iterations):
    """Equal-partition soft codes: K prototypes x B samples, rows then columns rescaled."""
    q = torch.exp(scores / eps).T
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


def test_swav_swapped_prediction_after_sinkhorn():
    g = torch.Generator().manual_seed(2)
    s0, s1, s_low = (torch.randn(B, 5, generator=g) for _ in range(3))
    tau, eps = 0.1, 0.05

    def predict(scores, codes):  # cross-entropy of the codes under the softmax prediction
        return -(codes * F.log_softmax(scores / tau, dim=1)).sum(1).mean()

    q0, q1 = sinkhorn_knopp(s0, eps, 3), sinkhorn_knopp(s1, eps, 3)
    assert torch.allclose(q0.sum(1), torch.ones(B), atol=1e-5)  # one unit of mass per sample
    # Each high-resolution view's codes are predicted from every other view, low-res ones too.
    expected = (
        (predict(s1, q0) + predict(s_low, q0)) / 2 + (predict(s0, q1) + predict(s_low, q1)) / 2
    ) / 2
    loss = criterion("swav", temperature=tau, sinkhorn_epsilon=eps, sinkhorn_iterations=3)
    assert loss([s0, s1], [s_low]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dino_cross_entropy_with_centering():
    g = torch.Generator().manual_seed(3)
    K, m, t_temp, s_temp = 5, 0.9, 0.04, 0.1
    teacher = [torch.randn(B, K, generator=g) for _ in range(2)]
    student = [torch.randn(B, K, generator=g) for _ in range(3)]
    loss = criterion("dino", output_dim=K, student_temp=s_temp, center_momentum=m)

    def expected(center):
        terms = [
            -(F.softmax((t - center) / t_temp, 1) * F.log_softmax(s / s_temp, 1)).sum(1).mean()
            for ti, t in enumerate(teacher)
            for si, s in enumerate(student)
            if ti != si  # a view is never its own target
        ]
        return sum(terms) / len(terms)

    center = torch.zeros(K)
    assert loss(teacher, student, teacher_temp=t_temp).item() == pytest.approx(
        expected(center).item(), rel=1e-5
    )
    center = m * center + (1 - m) * torch.cat(teacher).mean(0)  # the centre's moving average
    assert loss(teacher, student, teacher_temp=t_temp).item() == pytest.approx(
        expected(center).item(), rel=1e-5
    )
