"""MoCo v2 (Chen et al., 2020): a momentum key encoder and a queue of negative keys.

The queue is lightly's memory bank inside NTXentLoss: each step's keys are enqueued (the queue
advances by the batch size) and the oldest are dropped. Keys are computed with shuffled
BatchNorm, as in the paper, so the batch statistics cannot leak which key matches which query.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle

from ssl_zoo.methods.base import SSLMethod, StepOutput


class MoCoV2(SSLMethod):
    family = "deep metric learning"
    paper = "https://arxiv.org/abs/2003.04297"
    views = "simclr"
    capabilities = frozenset({"two_views", "pair"})

    def __init__(
        self,
        temperature: float = 0.1,
        queue_size: int = 4096,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        momentum_start: float = 0.99,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.projection_head = MoCoProjectionHead(self.feature_dim, proj_hidden_dim, proj_dim)
        self.key_backbone = self.frozen_copy(self.backbone)
        self.key_projection_head = self.frozen_copy(self.projection_head)
        self.momentum_start = momentum_start
        # Under DDP every device's keys enter the queue, as MoCo's concat_all_gather does.
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(queue_size, proj_dim),
                                    gather_distributed=True)  # fmt: skip

    def momentum_pairs(self):
        return [
            (self.backbone, self.key_backbone),
            (self.projection_head, self.key_projection_head),
        ]

    def ssl_step(self, views):
        x_query, x_key = views
        features = self.backbone(x_query)
        query = self.projection_head(features)
        with torch.no_grad():
            shuffled, order = batch_shuffle(x_key)
            key = self.key_projection_head(self.key_backbone(shuffled))
            key = batch_unshuffle(key, order)
        return StepOutput(self.criterion(query, key), features, query, (query, key))
