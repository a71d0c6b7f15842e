"""SimCLR (Chen et al., 2020): two views, an MLP projector, the NT-Xent contrastive loss."""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from ssl_zoo.methods.base import SSLMethod, StepOutput


class SimCLR(SSLMethod):
    family = "deep metric learning"
    paper = "https://arxiv.org/abs/2002.05709"
    views = "simclr"
    capabilities = frozenset({"two_views", "pair", "ntxent"})

    def __init__(
        self, temperature: float = 0.5, proj_hidden_dim: int = 512, proj_dim: int = 128, **kwargs
    ):
        super().__init__(**kwargs)
        self.projection_head = SimCLRProjectionHead(self.feature_dim, proj_hidden_dim, proj_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def ssl_step(self, views):
        features = self.backbone(torch.cat(views))
        z0, z1 = self.projection_head(features).chunk(2)
        return StepOutput(self.criterion(z0, z1), features[: len(z0)], z0, (z0, z1))
