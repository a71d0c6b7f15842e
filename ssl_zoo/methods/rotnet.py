"""RotNet (Gidaris et al., 2018), the pretext baseline: predict which of 0/90/180/270 degrees an
image was rotated by. Every image is shown at all four rotations, as in the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.methods.base import SSLMethod, StepOutput


class RotNet(SSLMethod):
    family = "pretext task"
    paper = "https://arxiv.org/abs/1803.07728"
    views = "rotation"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rotation_head = nn.Linear(self.feature_dim, 4)

    def ssl_step(self, views):
        (x,) = views
        rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        targets = torch.arange(4, device=x.device).repeat_interleave(len(x))
        features = self.backbone(rotated)
        loss = F.cross_entropy(self.rotation_head(features), targets)
        return StepOutput(loss, features[: len(x)], features[: len(x)])
