"""BYOL (Grill et al., 2020): an online network with a predictor regresses a momentum target.

The target (backbone + projector) is an exponential moving average of the online network; its
momentum follows a cosine schedule from `momentum_start` to 1 over training progress. The target
receives no gradient; the loss is the symmetrised negative cosine similarity.
"""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from ssl_zoo.methods.base import SSLMethod, StepOutput


class BYOL(SSLMethod):
    family = "self-distillation"
    paper = "https://arxiv.org/abs/2006.07733"
    views = "byol"
    capabilities = frozenset({"two_views", "pair", "predictor"})

    def __init__(
        self,
        proj_hidden_dim: int = 1024,
        proj_dim: int = 256,
        pred_hidden_dim: int = 1024,
        momentum_start: float = 0.99,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.projection_head = BYOLProjectionHead(self.feature_dim, proj_hidden_dim, proj_dim)
        self.prediction_head = BYOLPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.target_backbone = self.frozen_copy(self.backbone)
        self.target_projection_head = self.frozen_copy(self.projection_head)
        self.momentum_start = momentum_start
        self.criterion = NegativeCosineSimilarity()

    def momentum_pairs(self):
        return [
            (self.backbone, self.target_backbone),
            (self.projection_head, self.target_projection_head),
        ]

    def ssl_step(self, views):
        x = torch.cat(views)
        features = self.backbone(x)
        z = self.projection_head(features)
        p0, p1 = self.prediction_head(z).chunk(2)
        with torch.no_grad():
            t0, t1 = self.target_projection_head(self.target_backbone(x)).chunk(2)
        loss = 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))
        return StepOutput(loss, features[: len(p0)], z[: len(p0)], z.chunk(2))
