"""NNCLR (Dwibedi et al., 2021): the positive of each view is its nearest neighbour in a support
set of past embeddings (lightly's NNMemoryBankModule), contrasted with a predictor's output."""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import NNCLRPredictionHead, NNCLRProjectionHead, NNMemoryBankModule

from ssl_zoo.methods.base import SSLMethod, StepOutput


class NNCLR(SSLMethod):
    family = "deep metric learning"
    paper = "https://arxiv.org/abs/2104.14548"
    views = "simclr"
    capabilities = frozenset({"two_views", "predictor"})

    def __init__(
        self,
        temperature: float = 0.5,
        support_set_size: int = 4096,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        pred_hidden_dim: int = 512,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.projection_head = NNCLRProjectionHead(self.feature_dim, proj_hidden_dim, proj_dim)
        self.prediction_head = NNCLRPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.support_set = NNMemoryBankModule(size=(support_set_size, proj_dim))
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def ssl_step(self, views):
        features = self.backbone(torch.cat(views))
        z = self.projection_head(features)
        p0, p1 = self.prediction_head(z).chunk(2)
        z0, z1 = z.detach().chunk(2)
        nn0 = self.support_set(z0, update=False)
        nn1 = self.support_set(z1, update=True)
        loss = 0.5 * (self.criterion(nn0, p1) + self.criterion(nn1, p0))
        return StepOutput(loss, features[: len(p0)], z[: len(p0)])
