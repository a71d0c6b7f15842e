"""torchvision's detectors (Faster R-CNN, RetinaNet, FCOS) with a feature pyramid over an SSL
backbone (a torchvision ResNet or any timm model that reports its stages), built from torchvision's
detection models and ops."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ssl_zoo.errors import UserError, unknown_choice

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
DETECTORS = ("fasterrcnn", "retinanet", "fcos")
# Peak fine-tuning learning rates at 8 images a step. torchvision's reference recipes train the
# one-stage detectors at half Faster R-CNN's rate; on the scenes (random backbone, 8 epochs of
# 24 images) FCOS's loss still rose at 0.01 (2.57 -> 3.43) and fell at 0.005 (2.67 -> 1.92).
DETECTOR_LR = {"fasterrcnn": 0.02, "retinanet": 0.01, "fcos": 0.005}


def stage_names(backbone: nn.Module) -> list[str]:
    """The modules whose outputs feed the pyramid: the last four stages (strides 4 to 32 with an
    ImageNet stem)."""
    if isinstance(backbone, torchvision.models.ResNet):
        return list(RESNET_STAGES)
    info = getattr(backbone, "feature_info", None)
    if info is None or not hasattr(backbone, "forward_intermediates") or len(info) < 4:
        raise UserError(f"{type(backbone).__name__} does not report its stages (timm's "
                        "feature_info and forward_intermediates); detection needs them")  # fmt: skip
    return [f["module"] for f in list(info)[-4:]]


class PyramidBackbone(nn.Module):
    """The backbone's four stage outputs through a feature pyramid (plus a max-pooled fifth
    level), as torchvision's detectors expect."""

    def __init__(self, backbone: nn.Module, out_channels: int):
        super().__init__()
        self.body, self.stages = backbone, stage_names(backbone)
        was_training = backbone.training
        with torch.no_grad():  # in eval mode: the probe must not move BatchNorm statistics
            maps = self.eval().stage_maps(torch.zeros(1, 3, 64, 64))
        self.fpn = FeaturePyramidNetwork([m.shape[1] for m in maps], out_channels,
                                         extra_blocks=LastLevelMaxPool())  # fmt: skip
        self.out_channels = out_channels
        # Input pixels per feature-map cell at each level (the max-pooled level halves the last).
        strides = [64 // m.shape[-1] for m in maps]
        self.strides = (*strides, 2 * strides[-1])
        self.train(was_training)

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        body = self.body
        if isinstance(body, torchvision.models.ResNet):
            x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
            maps = []
            for name in RESNET_STAGES:
                x = getattr(body, name)(x)
                maps.append(x)
            return maps
        count = len(body.feature_info)
        return body.forward_intermediates(x, indices=list(range(count - 4, count)),
                                          intermediates_only=True)  # fmt: skip

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(self.stage_maps(x))))


def set_trainable_layers(backbone: nn.Module, stages: list[str], trainable: int) -> None:
    """Train the last `trainable` of (stem, stage 1, ..., stage 4), as torchvision's
    trainable_backbone_layers (0: the backbone is frozen, 5: all of it trains)."""
    groups = ["stem", *stages]
    chosen = set(groups[len(groups) - trainable :]) if trainable else set()
    for name, param in backbone.named_parameters():
        group = next((s for s in stages if name.startswith(s + ".")), "stem")
        param.requires_grad_(group in chosen)


def build_detector(backbone: nn.Module, num_classes: int, size: int, normalize: dict,
                   trainable_layers: int = 5, trainable_bn: bool = False,
                   kind: str = "fasterrcnn") -> nn.Module:  # fmt: skip
    """A `kind` detector (DETECTORS) for `num_classes` object classes, labelled 1.. (0 is the
    background, as Faster R-CNN needs; the one-stage detectors never see it as a target), on
    images resized to `size` on their shorter side. BatchNorm is frozen unless trainable_bn:
    detection batches on a CPU hold a few images, too few for batch statistics, and torchvision
    freezes it for pretrained backbones too; the statistics kept are the SSL run's (random init:
    0 and 1)."""
    if not trainable_bn:
        # timm's converter also freezes its BatchNormAct2d (BatchNorm with the activation fused)
        backbone = freeze_batch_norm_2d(backbone)
    set_trainable_layers(backbone, stage_names(backbone), trainable_layers)
    # A pyramid (and so one-stage heads) of 128 channels and a box head of 256 units instead of
    # torchvision's 256 and 1024 (sized for 800-px COCO images), which on a CPU cost 4x and 16x
    # more per image and RoI.
    pyramid = PyramidBackbone(backbone, out_channels=128)
    common = {"min_size": size, "max_size": round(size * 5 / 3),  # 4:3 photos keep their shape
              "image_mean": normalize["mean"], "image_std": normalize["std"]}  # fmt: skip
    boxes = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)),
                            aspect_ratios=((0.5, 1.0, 2.0),) * 5)  # fmt: skip
    if kind == "retinanet":
        return RetinaNet(pyramid, num_classes + 1, anchor_generator=boxes, **common)
    if kind == "fcos":
        # FCOS's anchors are points, one per cell, sized as the level's stride: its loss assigns
        # objects to levels by multiples of that size (torchvision's default assumes P3-P7).
        points = AnchorGenerator(sizes=tuple((s,) for s in pyramid.strides),
                                 aspect_ratios=((1.0,),) * len(pyramid.strides))  # fmt: skip
        return FCOS(pyramid, num_classes + 1, anchor_generator=points, **common)
    if kind != "fasterrcnn":
        raise unknown_choice("detector", kind, DETECTORS)
    return FasterRCNN(
        pyramid,
        box_head=TwoMLPHead(pyramid.out_channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes + 1),
        rpn_anchor_generator=boxes,
        # Fewer proposals and sampled RoIs than torchvision's defaults (for 800-px COCO images):
        # small images hold few objects, and the box head's cost is per RoI.
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=64,
        **common,
    )
