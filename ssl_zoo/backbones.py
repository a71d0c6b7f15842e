"""Backbones by name: torchvision ResNets (with a CIFAR stem for small images) and any timm model.

`build_backbone` returns the encoder (images -> flat features) and its feature dimension, and
`BackboneSpec` is everything needed to rebuild it, saved beside the weights in backbone.pt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from ssl_zoo.config import replacing
from ssl_zoo.errors import UserError, unknown_choice

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    cifar_stem: bool = False
    # True: the library's own weights (timm or torchvision, downloaded); a path: the weights of
    # an ssl_zoo backbone.pt or run checkpoint of the same architecture (another run's start).
    pretrained: bool | str = False
    args: dict[str, Any] = field(default_factory=dict)  # constructor keywords, e.g. output_stride


def valid_names() -> list[str]:
    return [*TORCHVISION_RESNETS, "timm:<any timm model, e.g. timm:resnet18>"]


def default_cifar_stem(name: str, image_size: int) -> bool:
    """Torchvision ResNets lose 4x resolution in their stem; on <=64 px images the CIFAR stem
    (3x3 stride-1 conv, no max-pool) keeps enough spatial detail. timm models keep their own stem."""
    return name in TORCHVISION_RESNETS and image_size <= 64


def build_backbone(spec: BackboneSpec) -> tuple[nn.Module, int]:
    if isinstance(spec.pretrained, str):
        model, dim = build_backbone(replace(spec, pretrained=False))
        start_from(model, spec.pretrained)
        return model, dim
    if spec.name.startswith(TIMM_PREFIX):
        if spec.cifar_stem:
            raise UserError(f"cifar_stem applies to torchvision ResNets only, not '{spec.name}'")
        return _build_timm(spec.name[len(TIMM_PREFIX) :], spec.pretrained, spec.args)
    if spec.name in TORCHVISION_RESNETS:
        return _build_torchvision(spec.name, spec.cifar_stem, spec.pretrained, spec.args)
    raise unknown_choice("backbone", spec.name, valid_names())


def start_from(model: nn.Module, path: str) -> None:
    """Load the weights of another run's backbone into `model`. Constructor options that change
    no weight (a timm ResNet's output_stride, its pooling) may differ; the layers may not."""
    if not Path(path).is_file():
        raise UserError(f"pretrained: {path} not found; it is the backbone.pt of the run this one "
                        "starts from: train that run first")  # fmt: skip
    _, state, meta = _read_backbone(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(f"pretrained: {path} holds a {meta['spec']['name']} backbone whose "
                        f"weights do not fit this one ({first})") from None  # fmt: skip


def _bad_args(name: str, args: dict, err: TypeError) -> UserError:
    return UserError(
        f"backbone_args {args} do not fit {name}: {err}; "
        "pass keywords its constructor takes, or --backbone_args '{}' to drop them"
    )


def _build_timm(name: str, pretrained: bool, args: dict) -> tuple[nn.Module, int]:
    import timm

    if name not in timm.list_models():
        close = timm.list_models(f"*{name}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UserError(f"unknown timm model '{name}' (see timm.list_models()){hint}")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **args)
    except TypeError as err:
        raise _bad_args(f"timm:{name}", args, err) from None
    except Exception as err:  # network, hub or missing-weights failures all surface here
        raise UserError(
            f"cannot load pretrained weights for timm:{name} ({type(err).__name__}); "
            "are you offline? use pretrained: false or pre-populate the Hugging Face cache"
        ) from err
    # With num_classes=0 the output is the pooled, pre-classifier vector: for models with a head
    # MLP (e.g. MobileNetV3) that is head_hidden_size wide, not num_features.
    return model, int(getattr(model, "head_hidden_size", None) or model.num_features)


def _build_torchvision(
    name: str, cifar_stem: bool, pretrained: bool, args: dict
) -> tuple[nn.Module, int]:
    weights = "DEFAULT" if pretrained else None
    try:
        model = getattr(torchvision.models, name)(weights=weights, **args)
    except TypeError as err:
        raise _bad_args(name, args, err) from None
    except Exception as err:
        raise UserError(
            f"cannot load pretrained torchvision weights for {name} ({type(err).__name__}); "
            "are you offline? use pretrained: false or place them in the torch hub cache"
        ) from err
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, feature_dim


def save_backbone(path: str | Path, backbone: nn.Module, spec: BackboneSpec, **meta) -> None:
    """Write weights + spec atomically so a killed run never leaves a half-written file."""
    with replacing(Path(path)) as partial:
        torch.save({"spec": asdict(spec), "state_dict": backbone.state_dict(), **meta}, partial)


def load_backbone(path: str | Path) -> tuple[nn.Module, int, dict]:
    """Rebuild a backbone from backbone.pt, or from a Lightning checkpoint of an ssl_zoo run.

    Returns (module, feature_dim, metadata such as spec, image_size and normalize)."""
    path, state, meta = _read_backbone(path)
    spec = BackboneSpec(**{**meta["spec"], "pretrained": False})
    model, feature_dim = build_backbone(spec)
    model.load_state_dict(state)
    return model, feature_dim, meta


def _read_backbone(path: str | Path) -> tuple[Path, dict, dict]:
    """(path, the backbone's state dict, its metadata) from backbone.pt or a run checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(
            f"cannot read {path} as a torch checkpoint ({type(err).__name__})"
        ) from None
    if isinstance(payload, dict) and "ssl_zoo" in payload:  # a Lightning checkpoint
        meta = dict(payload["ssl_zoo"])
        meta["spec"] = meta.pop("backbone_spec")
        prefix = "backbone."
        state = {
            k[len(prefix) :]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)
        }
    elif isinstance(payload, dict) and "spec" in payload:
        meta = {k: v for k, v in payload.items() if k != "state_dict"}
        state = payload["state_dict"]
    else:
        raise UserError(f"{path} is neither a backbone.pt nor a checkpoint written by ssl_zoo")
    return path, state, meta
