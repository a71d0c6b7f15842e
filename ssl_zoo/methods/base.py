"""SSLMethod: what the methods share, so each method file states only what is special to it.

Shared here: the backbone, the optimizer (SGD, LARS, AdamW) with warm-up + cosine driven by training
progress, momentum networks, Hard View Selection, the online linear probe (trained on detached
features), and the logging of loss and a collapse signal. What is not the model's own comes in
through the Trainer's callbacks: the monitor that scores its features (ssl_zoo/monitor.py), the
random streams of a resumable run (ssl_zoo/resume.py), and, in a federated client's fit, the
window of the global schedule it trains in and the algorithm's loss terms (below).

Progress is the larger of step progress and wall-clock progress, so a run with a time budget
(`--max_time`) anneals its learning rate and momentum to their final values as the budget runs out
instead of being cut off mid-schedule.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightly.models.utils import (
    deactivate_requires_grad,
    get_weight_decay_parameters,
    update_momentum,
)
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_warmup_schedule
from lightning.pytorch.callbacks import Timer
from torch import Tensor, nn

from ssl_zoo.allocator import keep_freed_memory
from ssl_zoo.backbones import BackboneSpec, build_backbone
from ssl_zoo.errors import UserError, unknown_choice

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "lars", "adamw")
# Embeddings whose per-dimension std is under this share of a uniform spread (1/sqrt(dim)) have
# collapsed: SimSiam's paper shows a collapsing run's std falling to 0 while a healthy one stays
# near 1/sqrt(dim); 5% leaves room for the uneven but useful spreads of real training.
COLLAPSED_SPREAD = 0.05
# Resolution of the progress fed to lightly's integer-step schedules.
_SCHEDULE_STEPS = 100_000
# What a method may declare in `capabilities`, so that the code around it (Hard View Selection,
# federated algorithms) asks what a method is instead of listing methods by name.
CAPABILITIES = {
    "two_views": "a pair of views per image",
    "pair": "a step that returns both views' embeddings",  # StepOutput.pair
    "predictor": "a prediction head on its projector",  # prediction_head
    "ntxent": "NT-Xent over the batch as its loss",  # criterion.temperature
}


@dataclass
class StepOutput:
    loss: Tensor
    features: Tensor  # backbone features of the first view: fed (detached) to the linear probe
    embedding: Tensor  # the vectors the loss compares: watched for collapse
    # The embeddings of both views the method's loss compares, for the loss terms federated
    # algorithms add (FedX, feature fusion): online for both views, except MoCo's second (its
    # key, from the momentum encoder, without gradient); None where the method has no such pair.
    pair: tuple[Tensor, Tensor] | None = None


class ScheduleWindow(L.Callback):
    """Passed to the Trainer of a fit that is part of a longer schedule (a federated client's
    round): its steps are `done`..`done + max_steps` of `total`, so warm-up, cosine and momentum
    follow the global schedule instead of restarting every round."""

    def __init__(self, done: int, total: int):
        self.done, self.total = done, total


class LossTerms(L.Callback):
    """Passed to the Trainer of a fit whose loss is more than the method's (a federated
    algorithm's terms): `terms(model, views, out)` is the loss minimised."""

    def __init__(self, terms: Callable):
        self.terms = terms


def passed_in(trainer, kind: type):
    """The Trainer's callback of this kind, if it was given one."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


class SSLMethod(L.LightningModule):
    family: ClassVar[str]
    paper: ClassVar[str]
    views: ClassVar[str]  # key of ssl_zoo.views.PIPELINES
    capabilities: ClassVar[frozenset[str]] = frozenset()  # keys of CAPABILITIES

    def __init__(
        self,
        backbone: BackboneSpec,
        num_classes: int = 0,
        online_probe: bool = True,
        optimizer: str = "sgd",
        lr: float = 0.06,
        weight_decay: float = 5e-4,
        warmup_fraction: float = 0.0,
        hard_views: int = 1,
        channels_last: bool = True,
        compile_backbone: bool = False,
        collapse: str = "warn",
        collapse_steps: int = 50,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise unknown_choice("optimizer", optimizer, OPTIMIZERS)
        self.backbone, self.feature_dim = build_backbone(backbone)
        self.backbone_spec = backbone
        self.num_classes = num_classes
        # Drawn even where it is not trained (a federation's clients hold no labels), so that the
        # heads start from the same draws whether the run is centralized or federated.
        probe = nn.Linear(self.feature_dim, num_classes) if num_classes > 0 else None
        self.probe = probe if online_probe else None
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.warmup_fraction = warmup_fraction
        if hard_views > 1 and "two_views" not in self.capabilities:
            raise UserError(f"--hard_views needs a two-view method; {type(self).__name__} is not")
        self.hard_views = hard_views
        # NHWC convolutions run about 1.2x faster than NCHW here (mkldnn) and on GPUs with AMP.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.compile_backbone = compile_backbone
        self.collapse, self.collapse_steps = collapse, collapse_steps
        self._collapsed_for = 0  # consecutive training steps with collapsed embeddings

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What the backbone is, so evaluate.py can rebuild it from a checkpoint.
        checkpoint.setdefault("ssl_zoo", {})["backbone_spec"] = asdict(self.backbone_spec)

    # ---- what a method provides -------------------------------------------------------------
    def ssl_step(self, views: list[Tensor]) -> StepOutput:
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, exponential-moving-average copy) module pairs; none for most methods."""
        return []

    # ---- momentum networks (BYOL's target, MoCo's key encoder, DINO's teacher) ---------------
    momentum_start: float = 0.99

    @staticmethod
    def frozen_copy(module: nn.Module) -> nn.Module:
        """A copy of `module` that receives no gradient: the start of a momentum network."""
        twin = copy.deepcopy(module)
        deactivate_requires_grad(twin)
        return twin

    def on_train_batch_start(self, batch, batch_idx):
        """Momentum follows a cosine from momentum_start to 1 over training progress:
        t = m * t + (1 - m) * o for every (online o, copy t) pair, before the step."""
        pairs = self.momentum_pairs()
        if pairs:
            m = self.cosine_progress(self.momentum_start, 1.0)
            for online, ema in pairs:
                update_momentum(online, ema, m)
            self.log("train/momentum", m, on_step=True, on_epoch=False)

    def embed(self, x: Tensor) -> Tensor:
        """The vectors a two-view loss compares; Hard View Selection scores pairs with them."""
        return self.projection_head(self.backbone(x))

    # ---- Hard View Selection (Ferreira et al., 2023) -------------------------------------------
    @torch.no_grad()
    def select_hard_views(self, views: list[Tensor]) -> list[Tensor]:
        """From N candidate pairs per image keep the pair the current model finds hardest.

        Joint-embedding losses are batch-level, so a pair is scored by its own term, the
        misalignment 1 - cos(z_a, z_b) of its embeddings, from one forward pass without gradients.
        """
        first, second = torch.stack(views[0::2]), torch.stack(views[1::2])  # (N, B, C, H, W)
        n, b = first.shape[:2]
        z_first = self.embed(first.flatten(0, 1)).view(n, b, -1)
        z_second = self.embed(second.flatten(0, 1)).view(n, b, -1)
        hardest = (1 - F.cosine_similarity(z_first, z_second, dim=-1)).argmax(dim=0)  # (B,)
        rows = torch.arange(b, device=hardest.device)
        return [first[hardest, rows], second[hardest, rows]]

    # ---- schedule -----------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Fraction of the training schedule done, in [0, 1], by steps or by the time budget."""
        if self._trainer is None:
            return 0.0
        window = passed_in(self.trainer, ScheduleWindow)
        if window is not None:
            return min(1.0, (window.done + self.global_step) / max(window.total, 1))
        total = self.trainer.estimated_stepping_batches
        by_steps = self.global_step / total if math.isfinite(total) and total > 0 else 0.0
        by_time = 0.0
        for callback in self.trainer.callbacks:
            if isinstance(callback, Timer) and callback.time_remaining() is not None:
                elapsed = callback.time_elapsed()
                by_time = elapsed / max(elapsed + callback.time_remaining(), 1e-9)
        return min(1.0, max(by_steps, by_time))

    def cosine_progress(self, start: float, end: float, warmup: float = 0.0) -> float:
        """Value of a (warm-up +) cosine schedule from start to end at the current progress."""
        return cosine_warmup_schedule(
            step=round(self.progress * _SCHEDULE_STEPS),
            max_steps=_SCHEDULE_STEPS,
            start_value=start,
            end_value=end,
            warmup_steps=round(warmup * _SCHEDULE_STEPS),
            warmup_start_value=0.0,
        )

    def configure_optimizers(self):
        trainable = [m for name, m in self.named_children() if name != "probe"]
        decay, no_decay = get_weight_decay_parameters(trainable)
        groups = [
            {"params": [p for p in decay if p.requires_grad]},
            {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0},
        ]
        if self.probe is not None:
            groups.append({"params": list(self.probe.parameters()), "weight_decay": 0.0})
        # One fused kernel over all parameters instead of a loop over ~60 tensors: on 2 CPU cores
        # the SGD step drops from 5 to 2 ms and the AdamW step from 11 to 3 ms (docs/performance.md).
        fused = self.device.type in ("cpu", "cuda") or None
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=0.9,
                                  weight_decay=self.weight_decay, fused=fused)  # fmt: skip
            # Fused SGD takes momentum for all of a group's parameters or for none, so a parameter
            # whose first gradient comes later (DINO's last layer after its frozen epoch) would stop
            # the run. Zero buffers give the same first step, as dampening is 0.
            for group in groups:
                for p in group["params"]:
                    opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        elif self.optimizer_name == "lars":
            opt = LARS(groups, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, fused=fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda _: self.cosine_progress(1.0, 0.0, self.warmup_fraction)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- training -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        keep_freed_memory()  # once per process: no page faults on every step's activations
        self.to(memory_format=self.memory_format)
        # In place, so state_dict keys (checkpoints, backbone.pt, FedAvg) stay those of the
        # plain module; once per module, as federated clients call fit every round.
        if self.compile_backbone and self.backbone._compiled_call_impl is None:
            self.backbone.compile()
        # A federated client's fit does not inherit the previous one's count.
        self._collapsed_for = 0

    def on_train_start(self) -> None:
        if self.trainer.world_size > 1:
            # Lightning seeds every DDP process alike: without this, the ranks' batched views
            # would share their crops and colour jitter, image slot by image slot.
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def training_step(self, batch, batch_idx):
        views, labels = batch
        views = [v.contiguous(memory_format=self.memory_format) for v in views]
        if self.hard_views > 1:
            views = self.select_hard_views(views)
        out = self.ssl_step(views)
        extra = passed_in(self.trainer, LossTerms)
        loss = out.loss if extra is None else extra.terms(self, views, out)
        z = F.normalize(out.embedding.detach().float(), dim=1)
        # Per-dimension std of normalised embeddings: 1/sqrt(dim) when spread out, 0 when collapsed.
        std = z.std(dim=0).mean()
        loss_value, std_value = torch.stack([loss.detach().float(), std]).tolist()  # one sync
        if not math.isfinite(loss_value):
            # Stop here, before the optimizer writes NaN into the weights: the run's last
            # checkpoint stays good, and a federated client is dropped from its round.
            raise self.diverged(f"loss {loss_value}")
        if self.collapse != "off":
            self.watch_collapse(std_value * math.sqrt(z.shape[1]))
        log = {
            "train/loss": out.loss.detach(),
            "train/embedding_std": std,
            "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
        }
        labeled = labels >= 0
        if self.probe is not None and labeled.any():
            logits = self.probe(out.features.detach()[labeled])
            probe_loss = F.cross_entropy(logits, labels[labeled])
            loss = loss + probe_loss
            log["train/probe_acc"] = (logits.argmax(1) == labels[labeled]).float().mean()
        self.log_dict(log, prog_bar=False, on_step=True, on_epoch=False, batch_size=len(labels))
        self.log("loss", out.loss.detach(), prog_bar=True, logger=False, batch_size=len(labels))
        return loss

    def watch_collapse(self, spread: float) -> None:
        """Count consecutive steps whose embeddings collapsed (spread: their std relative to a
        uniform spread, 1 spread out, 0 all images on one point) and act after collapse_steps."""
        self._collapsed_for = self._collapsed_for + 1 if spread < COLLAPSED_SPREAD else 0
        if self._collapsed_for != self.collapse_steps:
            return
        message = (
            f"embeddings collapsed at step {self.global_step}: for {self.collapse_steps} steps their "
            f"spread stayed under {COLLAPSED_SPREAD:.0%} of a uniform spread (now {spread:.3f}), "
            f"so every image maps to nearly one point; lower the learning rate (--lr, now "
            f"{self.lr:g}) or the weight decay (--weight_decay, now {self.weight_decay:g})"
        )
        if self.collapse == "stop":
            raise UserError(message)
        if self.global_rank == 0:
            log.warning(message + "; --collapse stop ends such a run")

    def diverged(self, what: str) -> UserError:
        """One line for a run that blew up: where, what, and the two usual causes."""
        fix = f"lower the learning rate (--lr, now {self.lr:g})"
        if "32" not in str(self.trainer.precision):
            fix += (
                f" or train in full precision (--precision 32-true, now {self.trainer.precision})"
            )
        # The federated server's monitor runs outside any fit: no step to name there.
        fitting = self.trainer.state.fn == "fit"
        where = f"at step {self.global_step}" if fitting else "(seen by the monitor)"
        return UserError(f"training diverged {where}: {what}; {fix}")

    # ---- features for the monitor (ssl_zoo/monitor.py) ------------------------------------------
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        images, _ = batch
        return self.backbone(images.contiguous(memory_format=self.memory_format)).float()
