import copy
import math

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, tiny_args

from ssl_zoo.backbones import BackboneSpec
from ssl_zoo.data import SSLDataModule, load_splits
from ssl_zoo.errors import UserError, run_main
from ssl_zoo.federated.algorithms.fusion import fusion_loss
from ssl_zoo.jobs.train import main as train_main
from ssl_zoo.methods import METHODS, build_method, method_options
from ssl_zoo.methods.base import CAPABILITIES
from ssl_zoo.views import PIPELINES, build_views

SPEC = BackboneSpec("timm:resnet10t")
NORMALIZE = {"mean": [0.5] * 3, "std": [0.3] * 3}


def small_options(name: str) -> dict:
    """The method's widths, queues and prototype counts above 128 cut to 128, so that a step of
    any method, one added later included, takes milliseconds."""
    return {k: 128 for k, v in method_options(name).items()
            if type(v) is int and v > 128 and k.endswith(("_dim", "_size", "prototypes"))}  # fmt: skip


SMALL = {name: small_options(name) for name in METHODS}


def small(name: str, **kwargs):
    return build_method(name, SMALL[name], backbone=SPEC, num_classes=10, **kwargs)


def views_for(name: str, batch: int = 8) -> list[torch.Tensor]:
    transform = build_views(METHODS[name].views, 32, NORMALIZE)
    images = [
        image for image, _ in load_splits("synthetic", train_samples=batch, test_samples=10).train
    ]
    per_image = [transform(image) for image in images]
    return [torch.stack(v) for v in zip(*per_image, strict=True)]


def test_every_method_is_registered_and_configured():
    families = {cls.family for cls in METHODS.values()}
    assert {"deep metric learning", "self-distillation", "canonical correlation"} <= families
    for name, cls in METHODS.items():  # what a method file declares, and its recipe
        assert cls.views in PIPELINES and cls.capabilities <= set(CAPABILITIES), name
        assert cls.paper.startswith("https://"), name
        assert (ROOT / "configs" / "methods" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_is_what_its_capabilities_say(name):
    """Federated algorithms and Hard View Selection trust these declarations, not method names."""
    torch.manual_seed(0)
    model, capabilities = small(name), METHODS[name].capabilities
    views = views_for(name)
    out = model.ssl_step(views)
    assert ("two_views" in capabilities) == (len(views) == 2)
    assert ("predictor" in capabilities) == hasattr(model, "prediction_head")
    if "pair" in capabilities:
        assert [z.shape for z in out.pair] == [out.embedding.shape] * 2
    else:
        assert out.pair is None
    if "ntxent" in capabilities:  # fusion replaces the loss by NT-Xent over more negatives
        alone = fusion_loss(torch.cat(out.pair), None, model.criterion.temperature)
        assert torch.allclose(alone, out.loss, atol=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_step_gives_a_finite_loss_and_gradients(name):
    torch.manual_seed(0)
    model = small(name)
    out = model.ssl_step(views_for(name))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (8, model.feature_dim)
    out.loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


MOMENTUM_COPIES = {
    "byol": ("target_backbone", "target_projection_head"),
    "mocov2": ("key_backbone", "key_projection_head"),
    "dino": ("teacher_backbone", "teacher_head"),
}


def momentum_pairs(model, name):
    """(online, momentum copy) module pairs of a momentum method."""
    backbone, head = MOMENTUM_COPIES[name]
    return [(model.backbone, getattr(model, backbone)),
            (model.projection_head, getattr(model, head))]  # fmt: skip


@pytest.mark.parametrize("name", ["byol", "mocov2", "dino"])
def test_momentum_network_gets_no_gradient_and_follows_the_rule(name):
    torch.manual_seed(0)
    model = small(name)
    pairs = momentum_pairs(model, name)
    frozen = [p for _, target in pairs for p in target.parameters()]
    assert all(not p.requires_grad for p in frozen)
    model.ssl_step(views_for(name)).loss.backward()
    assert all(p.grad is None for p in frozen)
    with torch.no_grad():  # move the online net away from its copy
        for online, _ in pairs:
            for p in online.parameters():
                p.add_(torch.randn_like(p))
    online = [[p.detach().clone() for p in o.parameters()] for o, _ in pairs]
    before = [[p.detach().clone() for p in t.parameters()] for _, t in pairs]
    model.on_train_batch_start(None, 0)
    m = method_options(name)["momentum_start"]  # at the start of training
    for (_, target), o_params, t_params in zip(pairs, online, before, strict=True):
        for t, t0, o in zip(target.parameters(), t_params, o_params, strict=True):
            assert torch.allclose(t, m * t0 + (1 - m) * o, atol=1e-6)


def test_momentum_reaches_one_at_the_end_of_training():
    model = small("byol")
    model._trainer = type("T", (), {"estimated_stepping_batches": 10, "callbacks": []})()
    model.trainer.global_step = 10
    type(model).global_step = property(lambda self: self.trainer.global_step)
    try:
        assert model.cosine_progress(0.99, 1.0) == pytest.approx(1.0)
        model.trainer.global_step = 5
        assert 0.99 < model.cosine_progress(0.99, 1.0) < 1.0
    finally:
        del type(model).global_step


def test_simsiam_stop_gradient_matches_a_reference():
    torch.manual_seed(0)
    model = small("simsiam")
    views = views_for("simsiam")
    model.ssl_step(views).loss.backward()
    grads = [p.grad.clone() for p in model.projection_head.parameters()]
    model.zero_grad()
    z = model.projection_head(model.backbone(torch.cat(views)))
    p0, p1 = model.prediction_head(z).chunk(2)
    z0, z1 = z.detach().chunk(2)
    reference = -0.5 * (F.cosine_similarity(p0, z1).mean() + F.cosine_similarity(p1, z0).mean())
    reference.backward()
    for g, p in zip(grads, model.projection_head.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_moco_queue_advances_by_the_batch_size():
    model = small("mocov2")
    bank = model.criterion.memory_bank
    start = int(bank.bank_ptr)
    before = bank.bank.clone()
    model.ssl_step(views_for("mocov2", batch=8))
    assert int(bank.bank_ptr) == (start + 8) % 64
    changed = (bank.bank != before).any(dim=1)
    assert changed.sum() == 8 and changed[start : start + 8].all()


def test_nnclr_support_set_is_filled():
    model = small("nnclr")
    support = model.support_set
    before = support.bank.clone()
    for _ in range(2):
        model.ssl_step(views_for("nnclr", batch=8))
    assert int(support.bank_ptr) == 16
    assert (support.bank[:16] != before[:16]).all(dim=1).all()
    assert (support.bank[16:] == before[16:]).all()


def test_hard_view_selection_keeps_the_hardest_pair():
    model = small("simclr", hard_views=2).eval()
    x = views_for("simclr", batch=4)
    easy = [x[0], x[0]]  # identical views: cosine 1, the easiest pair
    hard = [x[0], torch.flip(x[1], dims=(2,)) * -1]
    first, second = model.select_hard_views([*easy, *hard])
    assert torch.equal(first, hard[0]) and torch.equal(second, hard[1])
    with pytest.raises(UserError, match="--hard_views needs a two-view method"):
        small("dino", hard_views=2)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_thirty_steps_lower_the_loss_without_collapse(name, tmp_path):
    """A real Trainer on synthetic images: the loss falls over 30 steps and the embeddings keep a
    per-dimension std of at least a fifth of the spread-out value 1/sqrt(dim) (collapse: 0).

    MoCo's loss is not a learning signal at this scale: once its queue holds only real keys
    (step 2) it sits at chance, ln(queue + 1), for all 30 steps, since a key encoder that moves
    1% a step stays near its random initialisation (whether its last five steps came out under
    its first five was a coin's toss, found when the data order changed). Here it must stay
    finite and uncollapsed; that MoCo v2 learns is measured on real photos (benchmarks/recipes.md)."""
    L.seed_everything(0, verbose=False)
    splits = load_splits("synthetic", train_samples=64, test_samples=40)
    model = small(name, optimizer="adamw", lr=1e-3, weight_decay=0.0)
    views = build_views(model.views, 32, NORMALIZE, {"gaussian_blur": 0.0})
    dm = SSLDataModule(splits, views, NORMALIZE, batch_size=32, num_workers=0)
    losses, stds = [], []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(trainer.callback_metrics["train/loss"].item())
            stds.append(trainer.callback_metrics["train/embedding_std"].item())

    trainer = L.Trainer(max_steps=30, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[Record()], default_root_dir=tmp_path,
                        limit_val_batches=0, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    dim = model.ssl_step(views_for(name, batch=4)).embedding.shape[1]
    assert len(losses) == 30
    if name == "mocov2":
        chance = math.log(SMALL[name]["queue_size"] + 1)
        assert all(math.isfinite(loss) and loss < chance + 0.5 for loss in losses[2:]), losses
    else:
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    assert min(stds[-5:]) > 0.2 / dim**0.5, stds


def test_unknown_method_and_method_args_list_valid_names():
    with pytest.raises(
        UserError, match="unknown method 'simclrr'; valid choices: barlowtwins, byol"
    ):
        build_method("simclrr", backbone=SPEC)
    with pytest.raises(UserError, match="unknown method_args tau for simclr; valid: .*temperature"):
        build_method("simclr", {"tau": 0.1}, backbone=SPEC)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(
        UserError, match="unknown optimizer 'adam'; valid choices: adamw, lars, sgd"
    ):
        small("simclr", optimizer="adam")


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_multicrop_with_a_backbone_that_cannot_take_the_crops(name, tmp_path, capsys):
    args = tiny_args(tmp_path / "run", "--method", name, "--backbone", "timm:vit_tiny_patch16_224")
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_main, args)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "backbone timm:vit_tiny_patch16_224 cannot take 16x16-px views" in last, last


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_optimizer_steps_as_the_plain_one(optimizer):
    """One step from the same gradients (later steps differ by rounding, which Adam amplifies)."""
    torch.manual_seed(0)
    model = small("simclr", optimizer=optimizer, lr=0.05, weight_decay=0.01)
    twin, start = copy.deepcopy(model), copy.deepcopy(model)
    fused = model.configure_optimizers()["optimizer"]
    plain = twin.configure_optimizers()["optimizer"]
    for group in plain.param_groups:
        group["fused"] = None
    assert all(group["fused"] for group in fused.param_groups)
    views = views_for("simclr")
    for net, opt in ((model, fused), (twin, plain)):
        net.ssl_step(views).loss.backward()
        opt.step()
    flat = torch.nn.utils.parameters_to_vector
    assert not torch.allclose(flat(model.parameters()), flat(start.parameters()))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), optimizer


def test_fused_sgd_steps_a_parameter_whose_first_gradient_comes_later():
    """DINO's last layer has no gradient in its first epoch: fused SGD, which wants momentum for
    all of a group's parameters or none, must step it once its gradient arrives."""
    torch.manual_seed(0)
    model = small("dino", optimizer="sgd", lr=0.05)
    opt = model.configure_optimizers()["optimizer"]
    views = views_for("dino")
    last = model.projection_head.last_layer
    model.ssl_step(views).loss.backward()
    model.projection_head.cancel_last_layer_gradients(0)  # epoch 0 of freeze_last_layer=1
    opt.step()
    opt.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in last.parameters()]
    model.ssl_step(views).loss.backward()  # epoch 1: the last layer trains
    opt.step()
    assert any(not torch.equal(p, b) for p, b in zip(last.parameters(), before, strict=True))
