"""Barlow Twins (Zbontar et al., 2021): the cross-correlation matrix of the two views' embeddings
is pushed towards the identity (invariance on the diagonal, redundancy reduction off it)."""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from ssl_zoo.methods.base import SSLMethod, StepOutput


class BarlowTwins(SSLMethod):
    family = "canonical correlation"
    paper = "https://arxiv.org/abs/2103.03230"
    views = "byol"
    capabilities = frozenset({"two_views"})

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        lambda_param: float = 5e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.projection_head = BarlowTwinsProjectionHead(
            self.feature_dim, proj_hidden_dim, proj_dim
        )
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_param, gather_distributed=True)

    def ssl_step(self, views):
        features = self.backbone(torch.cat(views))
        z0, z1 = self.projection_head(features).chunk(2)
        return StepOutput(self.criterion(z0, z1), features[: len(z0)], z0)
