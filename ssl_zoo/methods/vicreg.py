"""VICReg (Bardes et al., 2022): invariance, variance and covariance terms on an expander MLP."""

from __future__ import annotations

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead

from ssl_zoo.methods.base import SSLMethod, StepOutput


class VICReg(SSLMethod):
    family = "canonical correlation"
    paper = "https://arxiv.org/abs/2105.04906"
    views = "vicreg"
    capabilities = frozenset({"two_views"})

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.projection_head = VICRegProjectionHead(self.feature_dim, proj_hidden_dim, proj_dim)
        self.criterion = VICRegLoss(
            lambda_param=invariance_weight,
            mu_param=variance_weight,
            nu_param=covariance_weight,
            gather_distributed=True,  # under DDP: variance and covariance over all devices' batches
        )

    def ssl_step(self, views):
        features = self.backbone(torch.cat(views))
        z0, z1 = self.projection_head(features).chunk(2)
        return StepOutput(self.criterion(z0, z1), features[: len(z0)], z0)
