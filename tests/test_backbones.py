import pytest
import torch

from ssl_zoo.backbones import BackboneSpec, build_backbone, load_backbone, save_backbone
from ssl_zoo.errors import UserError


def test_torchvision_resnet_cifar_stem_keeps_resolution():
    model, dim = build_backbone(BackboneSpec("resnet18", cifar_stem=True))
    assert dim == 512
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_torchvision_resnet50_feature_dim():
    model, dim = build_backbone(BackboneSpec("resnet50"))
    assert dim == 2048
    assert model.conv1.stride == (2, 2)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2048)


@pytest.mark.parametrize("name", ["timm:resnet10t", "timm:mobilenetv3_small_100"])
def test_timm_feature_dim_is_discovered(name):
    model, dim = build_backbone(BackboneSpec(name))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_unknown_backbones_name_the_choices():
    with pytest.raises(UserError, match="valid choices: .*resnet18"):
        build_backbone(BackboneSpec("resnet7"))
    with pytest.raises(UserError, match="unknown timm model 'resnet_nope'"):
        build_backbone(BackboneSpec("timm:resnet_nope"))


def test_pretrained_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: weights must be fetched
    with pytest.raises(UserError, match="cannot load pretrained .* offline"):
        build_backbone(BackboneSpec("resnet18", pretrained=True))


def test_backbone_file_round_trip(tmp_path):
    model, _ = build_backbone(BackboneSpec("resnet18", cifar_stem=True))
    model.eval()
    save_backbone(tmp_path / "backbone.pt", model, BackboneSpec("resnet18", True), image_size=32)
    loaded, dim, payload = load_backbone(tmp_path / "backbone.pt")
    loaded.eval()
    x = torch.randn(2, 3, 32, 32)
    assert dim == 512 and payload["image_size"] == 32
    assert torch.allclose(model(x), loaded(x))
    with pytest.raises(UserError, match="not found"):
        load_backbone(tmp_path / "missing.pt")


def test_backbone_args_reach_the_constructor_and_survive_a_save(tmp_path):
    spec = BackboneSpec("timm:resnet10t", args={"output_stride": 16})
    model, _ = build_backbone(spec)
    # A 32-px image keeps a 2x2 map in the last stage instead of 1x1.
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (2, 2)
    save_backbone(tmp_path / "backbone.pt", model, spec)
    loaded, _, payload = load_backbone(tmp_path / "backbone.pt")
    assert payload["spec"]["args"] == {"output_stride": 16}
    assert loaded.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (2, 2)
    with pytest.raises(UserError, match="backbone_args .* do not fit timm:resnet10t"):
        build_backbone(BackboneSpec("timm:resnet10t", args={"stride_please": 2}))


def test_pretrained_path_starts_from_another_runs_weights(tmp_path):
    """pretrained: a backbone.pt path starts a backbone from that run's weights, even where the
    constructor options differ without changing a weight (a stride-16 last stage); a backbone
    of other layers is one clear error."""
    source, _ = build_backbone(BackboneSpec("timm:resnet10t", args={"output_stride": 16}))
    save_backbone(tmp_path / "backbone.pt", source, BackboneSpec("timm:resnet10t"))
    started, _ = build_backbone(
        BackboneSpec("timm:resnet10t", pretrained=str(tmp_path / "backbone.pt"))
    )
    fresh, _ = build_backbone(BackboneSpec("timm:resnet10t"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                 started.state_dict().values(), strict=True))  # fmt: skip
    assert not torch.equal(source.conv1[0].weight, fresh.conv1[0].weight)
    with pytest.raises(UserError, match="resnet10t backbone whose weights do not fit"):
        build_backbone(BackboneSpec("resnet18", pretrained=str(tmp_path / "backbone.pt")))
