"""SimSiam (Chen & He, 2021): a predictor and a stop-gradient, no momentum and no negatives."""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from ssl_zoo.methods.base import SSLMethod, StepOutput


class SimSiam(SSLMethod):
    family = "self-distillation"
    paper = "https://arxiv.org/abs/2011.10566"
    views = "simclr"
    capabilities = frozenset({"two_views", "pair", "predictor"})

    def __init__(
        self, proj_hidden_dim: int = 512, proj_dim: int = 512, pred_hidden_dim: int = 128, **kwargs
    ):
        super().__init__(**kwargs)
        self.projection_head = SimSiamProjectionHead(self.feature_dim, proj_hidden_dim, proj_dim)
        self.prediction_head = SimSiamPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.criterion = NegativeCosineSimilarity()

    def ssl_step(self, views):
        features = self.backbone(torch.cat(views))
        z = self.projection_head(features)
        p0, p1 = self.prediction_head(z).chunk(2)
        z0, z1 = z.detach().chunk(2)  # the stop-gradient
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return StepOutput(loss, features[: len(p0)], z[: len(p0)], z.chunk(2))
