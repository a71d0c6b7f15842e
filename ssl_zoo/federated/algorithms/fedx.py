"""FedX (Han et al., ECCV 2022, "FedX: Unsupervised Federated Learning with Cross Knowledge
Distillation"), client side: the frozen global model distils into the local one.

With z the local projector's embedding, p a 2-layer predictor on it (added to the model and
averaged like the rest), z_G the frozen global model's embedding, x and x' the two views:

    L = L_method(x, x')                        (SimCLR: NTXent(z(x), z(x')))
      + NTXent(p(x), z_G(x'))                  global contrastive distillation
      + JS(p(x), p(x'); z_G(a))                global relational distillation
      + JS(z(x), z(x'); z(a))                  local relational distillation

JS(u, v; a) is the Jensen-Shannon divergence between the rows of softmax(cos(u, a) / T) and
softmax(cos(v, a) / T): how each image relates to the anchors a, seen from either view. The
anchors are the other images of the batch (first view; an image is not its own anchor), embedded
without gradient. T = 0.1 throughout, as in the paper.

MoCo v2: z(x') is the key, from the momentum encoder without gradient, as in MoCo's own loss; the
terms train the query side (encoder and predictor), and the queue stays MoCo's.
"""

import copy

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from torch import Tensor, nn

from ssl_zoo.federated.algorithms.base import FedAlgorithm

TEMPERATURE = 0.1


def relations(u: Tensor, anchors: Tensor) -> Tensor:
    """log softmax over anchors of cos(u_i, a_j) / T, an image never its own anchor."""
    logits = F.normalize(u, dim=1) @ F.normalize(anchors, dim=1).T / TEMPERATURE
    own = torch.eye(len(u), dtype=torch.bool, device=u.device)
    return logits.masked_fill(own, float("-inf")).log_softmax(dim=1)


def js_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Mean over rows of JS(P, Q) = (KL(P || M) + KL(Q || M)) / 2 with M = (P + Q) / 2."""
    p, q = log_p.exp(), log_q.exp()
    log_m = ((p + q) / 2).clamp_min(1e-30).log()
    kl = lambda log_a, a: (a * (log_a.clamp_min(-1e30) - log_m)).sum(dim=1)  # noqa: E731
    return (0.5 * (kl(log_p, p) + kl(log_q, q))).mean()


def fedx_terms(z0, z1, p0, p1, g0, g1) -> dict[str, Tensor]:
    """FedX's three added terms from the local (z, p) and global (g) embeddings of both views."""
    return {
        "global_contrast": NTXentLoss(temperature=TEMPERATURE)(p0, g1),
        "global_relation": js_divergence(relations(p0, g0), relations(p1, g0)),
        "local_relation": js_divergence(relations(z0, z0.detach()), relations(z1, z0.detach())),
    }


class FedX(FedAlgorithm):
    name = "fedx"
    paper = "https://arxiv.org/abs/2207.09158"
    requires = frozenset({"pair"})

    def prepare(self, model):
        dim = [m for m in model.projection_head.modules() if isinstance(m, nn.Linear)][-1]
        dim = dim.out_features
        model.fedx_predictor = nn.Sequential(
            nn.Linear(dim, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, dim)
        )

    def client_start(self, model, global_state, private, received, client):
        # The global encoder only (backbone + projector), not a copy of the whole module with
        # its target networks and the Trainer it refers to.
        parts = {"backbone": model.backbone, "projection_head": model.projection_head}
        self.global_model = nn.ModuleDict({k: copy.deepcopy(m) for k, m in parts.items()})
        self.global_model.load_state_dict({k: v for k, v in global_state.items()
                                           if k.split(".", 1)[0] in parts})  # fmt: skip
        self.global_model.requires_grad_(False)

    def client_loss(self, model, views, out, loss):
        z0, z1 = out.pair
        with torch.no_grad():
            g = self.global_model.to(z0.device)
            g0, g1 = g["projection_head"](g["backbone"](torch.cat(views))).chunk(2)
        p0, p1 = model.fedx_predictor(torch.cat([z0, z1])).chunk(2)
        return loss + sum(fedx_terms(z0, z1, p0, p1, g0, g1).values())

    def client_end(self, model, global_state):
        self.global_model = None  # not kept between rounds
        return {}
