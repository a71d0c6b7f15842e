"""Fine-tuning with few labels, as linear probing then fine-tuning (LP-FT; Kumar et al., ICLR
2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"):

1. a linear probe on the frozen features of the labeled subset (un-augmented, computed once) gives
   the classifier head its start, so fine-tuning begins at the probe's accuracy instead of a random
   head whose first large gradients scramble the pretrained features;
2. the whole network then trains on the same labels with light augmentation (random resized crop
   from 50%, horizontal flip), BatchNorm statistics kept, SGD with the backbone at a tenth of
   the head's learning rate, for a number of steps, not epochs: with 1% of CIFAR-10's labels an
   epoch is one batch, and 30 epochs (the earlier protocol) were 30 steps from a random head,
   which ended at chance;
3. the reported classifier is the average of the fine-tuned weights and the ones fine-tuning
   started from (WiSE-FT; Wortsman et al., CVPR 2022, "Robust fine-tuning of zero-shot models"),
   with the paper's mixing weight 0.5, since no labels are left over to choose one: with 100
   labels the end of fine-tuning fits the labeled images and can fall below the probe it started
   from, while the average keeps the probe's features and takes the part of the change that
   generalises. The end of fine-tuning is reported beside it.
"""

from __future__ import annotations

import copy
import time
import warnings

import lightning.pytorch as L
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ssl_zoo.cost import StepFlops, gflops
from ssl_zoo.data import Transformed
from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.protocol import Protocol

BACKBONE_LR_SCALE = 0.1  # the backbone's learning rate against the head's
WISE_ALPHA = 0.5  # the weight of the fine-tuned end in the reported average (WiSE-FT's default)


def probe_as_head(probe: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """The linear probe, which classifies standardised features (x - mean) / std, as one linear
    layer on raw features: W' = W / std, b' = b - W' mean."""
    head = nn.Linear(probe.in_features, probe.out_features)
    with torch.no_grad():
        head.weight.copy_(probe.weight / std)
        head.bias.copy_(probe.bias - head.weight @ mean)
    return head


class FineTuner(L.LightningModule):
    def __init__(self, backbone: nn.Module, head: nn.Linear, lr: float):
        super().__init__()
        self.backbone, self.head, self.lr = backbone, head, lr

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        if not torch.isfinite(loss):  # before NaN weights classify everything as class 0
            raise UserError(f"fine-tuning diverged at step {self.global_step} (loss {loss.item()}); "
                            f"lower --finetune_lr (now {self.lr:g})")  # fmt: skip
        self.log("finetune/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        groups = [{"params": self.backbone.parameters(), "lr": self.lr * BACKBONE_LR_SCALE},
                  {"params": self.head.parameters(), "lr": self.lr}]  # fmt: skip
        optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=0.9, weight_decay=5e-4)
        total = self.trainer.estimated_stepping_batches
        return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)]


def weight_average(start: nn.Module, end: nn.Module, alpha: float) -> nn.Module:
    """A copy of `end` whose floating-point weights and buffers are start + alpha (end - start)
    (start and end of one architecture); counters such as BatchNorm's step count are end's. The
    start may sit on another device (evaluate.py's backbone on the GPU, Lightning's trained module
    moved back to the CPU after fit): the average is on end's."""
    first, last = start.state_dict(), end.state_dict()
    averaged = copy.deepcopy(end)
    averaged.load_state_dict({
        name: torch.lerp(first[name].to(value.device), value, alpha)
        if value.is_floating_point() else value
        for name, value in last.items()
    })  # fmt: skip
    return averaged


class WithTargets(Dataset):
    """A dataset's images with other targets (cross-entropy takes class probabilities too)."""

    def __init__(self, base: Dataset, targets: torch.Tensor):
        self.base, self.targets = base, targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.base[index][0], self.targets[index]


def train_transform(image_size: int, normalize: dict) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.5, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean=normalize["mean"], std=normalize["std"]),
        ]
    )


def finetune(
    backbone: nn.Module,
    head: nn.Linear,
    train_set,
    indices: list[int],
    image_size: int,
    normalize: dict,
    steps: int = 300,
    lr: float = 0.05,
    batch_size: int = 128,
    num_workers: int = 2,
    seed: int = 0,
    accelerator: str = "auto",
    targets: torch.Tensor | None = None,
) -> tuple[FineTuner, FineTuner, int]:
    """Fine-tune copies of `backbone` and `head` (the probe's, see probe_as_head) on the images
    `indices` of `train_set` for `steps` steps; returns the classifier to report (WiSE-FT's
    average of start and end), the end of fine-tuning and the training FLOPs (the first step's
    count times the steps). `targets` (one row of class probabilities per image of train_set)
    replace the images' labels: self-training's soft pseudo-labels."""
    chosen = Subset(train_set if targets is None else WithTargets(train_set, targets), indices)
    subset = Transformed(chosen, train_transform(image_size, normalize))
    batch = min(batch_size, len(subset))
    loader = DataLoader(subset, batch_size=batch, shuffle=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0)  # fmt: skip
    model = FineTuner(copy.deepcopy(backbone), copy.deepcopy(head), lr)
    # BatchNorm keeps the pretrained statistics (eval mode): the probe's head was fitted on
    # features computed with them, and a batch of 100 images is too few for new ones.
    model.backbone.eval()
    L.seed_everything(seed, verbose=False)
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        # tqdm's bar: Lightning's default Rich one shows nothing outside a terminal
        callbacks=[flops := StepFlops(), TQDMProgressBar(refresh_rate=10)],
    )
    with warnings.catch_warnings():  # Lightning's note on modules in eval mode: on purpose here
        warnings.filterwarnings("ignore", r".*module\(s\) in eval mode")
        trainer.fit(model, loader)
    averaged = weight_average(FineTuner(backbone, head, lr), model, WISE_ALPHA)
    return averaged.eval(), model.eval(), flops.total(trainer.global_step)


def soft_pseudo_labels(teacher_logits: torch.Tensor, labels: torch.Tensor,
                       labeled: list[int]) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """Self-training's targets (SimCLRv2's third stage, Chen et al. 2020, temperature 1): the
    fine-tuned teacher's class probabilities for every unlabeled image, the true label (one-hot)
    for each labeled one. With them, how good the pseudo-labels are: the teacher's top-1 against
    the withheld labels of the unlabeled images (measured here, never trained on)."""
    targets = teacher_logits.float().softmax(1)
    targets[labeled] = F.one_hot(labels[labeled], targets.shape[1]).float()
    unlabeled = torch.ones(len(labels), dtype=torch.bool)
    unlabeled[labeled] = False
    guesses = teacher_logits[unlabeled].argmax(1)
    return targets, {
        "unlabeled": int(unlabeled.sum()),
        "pseudo_label_top1": round(float((guesses == labels[unlabeled]).float().mean()), 4),
        "pseudo_label_confidence": round(float(targets[unlabeled].max(1).values.mean()), 4),
    }


class FineTune(Protocol):
    """Few-label fine-tuning of the encoder with a linear head (LP-FT and WiSE-FT, above), on
    --label_fraction of the labels (--select balanced) or the chosen subset; with --self_train,
    a student then learns from the rest under the fine-tuned model's soft pseudo-labels."""

    name = "finetune"
    labeled_subset = True
    self_trains = True

    def __init__(self, finetune_steps: int = 300, finetune_lr: float = 0.05,
                 linear_epochs: int = 100, self_train: bool = False):  # fmt: skip
        self.steps, self.lr, self.linear_epochs = finetune_steps, finetune_lr, linear_epochs
        self.self_train = self_train

    def run(self, bench) -> dict:
        cfg, splits = bench.cfg, bench.splits
        tic = time.time()
        indices = bench.labeled
        probe, probed = bench.linear_probe(bench.train_x[indices], bench.train_y[indices],
                                           self.linear_epochs)  # fmt: skip

        def tune(images: list[int], targets: torch.Tensor | None = None):
            return finetune(
                bench.model, probe_as_head(*probe), splits.bank, images, splits.image_size,
                bench.normalize, self.steps, self.lr, cfg.batch_size, cfg.num_workers,
                cfg.seed, cfg.accelerator, targets,
            )  # fmt: skip

        averaged, end, flops = tune(indices)
        found = {
            **bench.tested(averaged, "fine-tuned"),
            "label_fraction": cfg.label_fraction,
            "labels": len(indices),
            # The same labels, the backbone frozen: what fine-tuning must beat (and starts from).
            "linear_same_labels": probed,
            # The last step's weights, before the average with the start (WiSE-FT's above).
            "end_of_finetuning": bench.tested(end, "fine-tuned, end"),
            "gflops": gflops(flops),
        }
        bench.seconds["finetune"] = time.time() - tic
        if self.self_train:
            tic = time.time()
            teacher, _ = bench.features(averaged, splits.bank, "pseudo-labels")
            targets, quality = soft_pseudo_labels(teacher, bench.train_y, indices)
            # The student starts where the teacher did (encoder and probe head) and trains on
            # every training image: the labeled ones with their labels, the rest with soft ones.
            student, student_end, student_flops = tune(list(range(len(bench.train_y))), targets)
            found["self_train"] = {
                **bench.tested(student, "self-trained"),
                **quality,
                "end_of_training": bench.tested(student_end, "self-trained, end"),
                "gflops": gflops(student_flops),
            }
            bench.seconds["self_train"] = time.time() - tic
        return found
