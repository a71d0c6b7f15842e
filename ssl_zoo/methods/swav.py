"""SwAV (Caron et al., 2020): swapped prediction of Sinkhorn-Knopp cluster assignments over
multi-crop views, with learnable prototypes and an optional queue of past high-resolution
embeddings (used once full) that stabilises the assignments for small batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.loss.memory_bank import MemoryBankModule
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from torch import nn

from ssl_zoo.methods.base import SSLMethod, StepOutput


class SwAV(SSLMethod):
    family = "canonical correlation"
    paper = "https://arxiv.org/abs/2006.09882"
    views = "swav"

    def __init__(
        self,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        n_prototypes: int = 512,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        freeze_prototypes_steps: int = 0,
        queue_length: int = 0,
        high_resolution_views: int = 2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.projection_head = SwaVProjectionHead(self.feature_dim, proj_hidden_dim, proj_dim)
        self.prototypes = SwaVPrototypes(proj_dim, n_prototypes, freeze_prototypes_steps)
        # Under DDP Sinkhorn balances the prototypes over all devices' batches, as the paper's.
        self.criterion = SwaVLoss(temperature, sinkhorn_iterations, sinkhorn_epsilon,
                                  sinkhorn_gather_distributed=True)  # fmt: skip
        self.high_resolution_views = high_resolution_views
        self.queues = nn.ModuleList(
            MemoryBankModule((queue_length, proj_dim), feature_dim_first=False)
            for _ in range(high_resolution_views if queue_length > 0 else 0)
        )
        self._queued = 0

    def ssl_step(self, views):
        self.prototypes.normalize()
        features = [self.backbone(v) for v in views]
        z = [F.normalize(self.projection_head(f), dim=1) for f in features]
        scores = [self.prototypes(e, self.global_step) for e in z]
        high, low = scores[: self.high_resolution_views], scores[self.high_resolution_views :]
        queue_scores = None
        if len(self.queues) > 0:
            banks = [q(e.detach(), update=True)[1] for q, e in zip(self.queues, z, strict=False)]
            full = self._queued >= self.queues[0].size[0]
            self._queued += len(z[0])
            if full:
                with torch.no_grad():
                    queue_scores = [
                        self.prototypes(b.to(z[0].device), self.global_step) for b in banks
                    ]
        loss = self.criterion(high, low, queue_scores).reshape(())  # lightly returns shape (1,)
        return StepOutput(loss, features[0], z[0])
