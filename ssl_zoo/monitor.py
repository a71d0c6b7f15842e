"""The online monitor: a Lightning callback that scores the backbone's features on the monitor
splits (a labeled bank and a test split, SSLDataModule's validation loaders) after validation.

kNN top-1/top-5 of the test images against the bank, the online probe's top-1 where the method
trains one, and two label-free signals (embedding spread, RankMe). Under DDP every rank sees an
interleaved share of each split; the shares are gathered and put back in order, so the figures
are those of one device.
"""

from __future__ import annotations

import lightning.pytorch as L
import torch

from ssl_zoo.evaluation.knn import knn_accuracy
from ssl_zoo.evaluation.label_free import embedding_std, rankme


class OnlineMonitor(L.Callback):
    def __init__(self, num_classes: int, knn_k: int = 200, knn_t: float = 0.1):
        self.num_classes, self.knn_k, self.knn_t = num_classes, knn_k, knn_t
        self.outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        # The latest figures, and the step they were measured at.
        self.last_metrics: dict[str, float] = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.outputs = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:  # fmt: skip
        # `outputs`: the backbone's features of the batch (SSLMethod.validation_step).
        self.outputs.setdefault(dataloader_idx, []).append((outputs, batch[1]))

    def all_ranks(self, trainer, pl_module, loader: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of a whole monitor split, each image once. Under DDP every rank
        saw an interleaved share padded to equal length (SSLDataModule._order): gathered, put
        back in order and cut to the split's size, they are the single-device arrays."""
        features, labels = (torch.cat(t) for t in zip(*self.outputs[loader], strict=True))
        if trainer.world_size == 1:
            return features, labels
        size = len(trainer.val_dataloaders[loader].dataset)

        def in_order(local: torch.Tensor) -> torch.Tensor:
            gathered = pl_module.all_gather(local)  # (world, share, ...)
            return gathered.transpose(0, 1).reshape(-1, *local.shape[1:])[:size]

        return in_order(features), in_order(labels)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if set(self.outputs) != {0, 1}:
            return
        bank, bank_labels = self.all_ranks(trainer, pl_module, 0)
        test, test_labels = self.all_ranks(trainer, pl_module, 1)
        self.outputs = {}
        if not (torch.isfinite(bank).all() and torch.isfinite(test).all()):
            # A loss can stay finite while weights or BatchNorm statistics overflow.
            raise pl_module.diverged("the backbone's features are not finite")
        top1, top5 = knn_accuracy(
            test, test_labels, bank, bank_labels, self.num_classes, self.knn_k, self.knn_t
        )
        metrics = {"val/knn_top1": top1, "val/knn_top5": top5}
        if getattr(pl_module, "probe", None) is not None:
            predicted = pl_module.probe(test).argmax(1)
            metrics["val/probe_top1"] = (predicted == test_labels).float().mean().item()
        metrics["val/embedding_std"] = embedding_std(test)
        metrics["val/rankme"] = rankme(test)
        pl_module.log_dict(metrics, prog_bar=True, sync_dist=True)  # the same on every rank
        self.last_metrics = {**metrics, "step": trainer.global_step}
