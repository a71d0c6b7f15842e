import lightning.pytorch as L
import pytest
import torch

from ssl_zoo.backbones import BackboneSpec
from ssl_zoo.data import SSLDataModule, load_splits
from ssl_zoo.errors import UserError
from ssl_zoo.methods import METHODS, build_method, method_options
from ssl_zoo.views import build_views

SPEC = BackboneSpec("timm:resnet10t")
NORMALIZE = {"mean": [0.5] * 3, "std": [0.3] * 3}


def small(name: str, **kwargs):
    args = {"simclr": {"proj_hidden_dim": 64, "proj_dim": 32},
            "byol": {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64},
            "vicreg": {"proj_hidden_dim": 64, "proj_dim": 64}}[name]  # fmt: skip
    return build_method(name, args, backbone=SPEC, num_classes=10, **kwargs)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_step_gives_a_finite_loss_and_gradients(name):
    torch.manual_seed(0)
    model = small(name)
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    out = model.ssl_step(views)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (8, model.feature_dim)
    out.loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_byol_target_gets_no_gradient_and_follows_the_momentum_rule():
    torch.manual_seed(0)
    model = small("byol")
    target = list(model.target_backbone.parameters()) + list(
        model.target_projection_head.parameters()
    )
    assert all(not p.requires_grad for p in target)
    out = model.ssl_step([torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)])
    out.loss.backward()
    assert all(p.grad is None for p in target)
    # Move the online net away from the target, then check t' = m * t + (1 - m) * o.
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p))
    online = [p.detach().clone() for p in model.backbone.parameters()]
    before = [p.detach().clone() for p in model.target_backbone.parameters()]
    m = model.update_target()
    assert m == pytest.approx(0.99)  # momentum_start at the start of training
    for t, t0, o in zip(model.target_backbone.parameters(), before, online, strict=True):
        assert torch.allclose(t, m * t0 + (1 - m) * o, atol=1e-6)
    assert sum(
        (t - o).abs().sum() for t, o in zip(model.target_backbone.parameters(), online, strict=True)
    ) < sum((t0 - o).abs().sum() for t0, o in zip(before, online, strict=True))


def test_unknown_method_and_method_args_list_valid_names():
    with pytest.raises(UserError, match="unknown method 'simclrr'; valid choices: byol, simclr"):
        build_method("simclrr", backbone=SPEC)
    with pytest.raises(UserError, match="unknown method_args tau for simclr; valid: .*temperature"):
        build_method("simclr", {"tau": 0.1}, backbone=SPEC)
    assert method_options("byol")["momentum_start"] == 0.99


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(
        UserError, match="unknown optimizer 'adam'; valid choices: adamw, lars, sgd"
    ):
        small("simclr", optimizer="adam")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_lightning_fit_lowers_loss_and_does_not_collapse(name, tmp_path):
    """A real Trainer on synthetic images: loss falls over 30 steps, embeddings stay spread."""
    L.seed_everything(0, verbose=False)
    splits = load_splits("synthetic", train_samples=64, test_samples=40)
    model = small(name, optimizer="adamw", lr=1e-3, weight_decay=0.0)
    views = build_views(model.views, 32, NORMALIZE, {"gaussian_blur": 0.0})
    dm = SSLDataModule(splits, views, NORMALIZE, batch_size=32, num_workers=0)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(trainer.callback_metrics["train/loss"].item())
            stds.append(trainer.callback_metrics["train/embedding_std"].item())

    stds: list[float] = []
    trainer = L.Trainer(max_steps=30, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[Record()], default_root_dir=tmp_path,
                        limit_val_batches=0, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    # Fully collapsed embeddings have std 0; spread ones about 1/sqrt(dim).
    assert min(stds[-5:]) > 0.2 / model_dim(model) ** 0.5, stds


def model_dim(model) -> int:
    out = model.ssl_step([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    return out.embedding.shape[1]
