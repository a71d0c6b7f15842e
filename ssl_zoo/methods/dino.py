"""DINO (Caron et al., 2021): a student matches a momentum teacher's centred, sharpened output
over multi-crop views; the teacher sees only the global crops.

Teacher temperature warms up linearly over the first `teacher_temp_warmup_fraction` of training
(lightly's DINOLoss counts epochs; training progress also covers time-budgeted runs). The last
layer of the student head is frozen for the first `freeze_last_layer` epochs, as in the paper.
"""

from __future__ import annotations

from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad

from ssl_zoo.methods.base import SSLMethod, StepOutput


class DINO(SSLMethod):
    family = "self-distillation"
    paper = "https://arxiv.org/abs/2104.14294"
    views = "dino"

    def __init__(
        self,
        proj_hidden_dim: int = 512,
        bottleneck_dim: int = 64,
        output_dim: int = 2048,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        teacher_temp_warmup_fraction: float = 0.3,
        center_momentum: float = 0.9,
        momentum_start: float = 0.996,
        freeze_last_layer: int = 1,
        global_views: int = 2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        head_dims = (self.feature_dim, proj_hidden_dim, bottleneck_dim, output_dim)
        self.projection_head = DINOProjectionHead(
            *head_dims, batch_norm=True, freeze_last_layer=freeze_last_layer
        )
        self.teacher_backbone = self.frozen_copy(self.backbone)
        # The head's weight-normalised last layer cannot be deep-copied: build it, copy weights.
        self.teacher_head = DINOProjectionHead(*head_dims, batch_norm=True)
        self.teacher_head.load_state_dict(self.projection_head.state_dict())
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(
            output_dim=output_dim,
            teacher_temp=teacher_temp,
            student_temp=student_temp,
            center_momentum=center_momentum,
        )
        self.warmup_teacher_temp, self.teacher_temp = warmup_teacher_temp, teacher_temp
        self.teacher_temp_warmup_fraction = teacher_temp_warmup_fraction
        self.momentum_start, self.global_views = momentum_start, global_views

    def current_teacher_temp(self) -> float:
        ramp = min(1.0, self.progress / max(self.teacher_temp_warmup_fraction, 1e-9))
        return self.warmup_teacher_temp + ramp * (self.teacher_temp - self.warmup_teacher_temp)

    def momentum_pairs(self):
        return [(self.backbone, self.teacher_backbone), (self.projection_head, self.teacher_head)]

    def on_after_backward(self):
        self.projection_head.cancel_last_layer_gradients(self.current_epoch)

    def ssl_step(self, views):
        global_views = views[: self.global_views]
        teacher_out = [self.teacher_head(self.teacher_backbone(v)) for v in global_views]
        features = [self.backbone(v) for v in views]
        student_out = [self.projection_head(f) for f in features]
        temp = self.current_teacher_temp()
        loss = self.criterion(teacher_out, student_out, teacher_temp=temp)
        return StepOutput(loss, features[0], student_out[0])
