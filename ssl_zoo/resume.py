"""ResumableRun: the Lightning callback that makes a killed train.py run continue as if it had
not stopped, and what its checkpoints hold besides the weights.

- Each epoch's random streams (views, shuffling) are seeded from (seed, epoch), so a run resumed
  from an epoch's checkpoint repeats the uninterrupted run whatever Lightning drew while
  restoring.
- A checkpoint taken mid-epoch also records where the epoch stood (batches trained on, the random
  streams), and the resumed run continues with the next batch and the same views and random ops.
- `meta` (the training images' size and normalisation) is what evaluate.py needs, besides the
  weights, to use a checkpoint.
"""

from __future__ import annotations

import random

import lightning.pytorch as L
import numpy as np
import torch

from ssl_zoo.data import resume_mid_epoch


class ResumableRun(L.Callback):
    def __init__(self, seed: int, meta: dict):
        self.seed, self.meta = seed, meta
        self.resumed: dict | None = None  # where a resumed checkpoint's epoch stood

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        L.seed_everything((self.seed * 1_000_003 + trainer.current_epoch) % 2**31, workers=True,
                          verbose=False)  # fmt: skip

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint.setdefault("ssl_zoo", {}).update(self.meta)
        checkpoint["ssl_zoo_epoch"] = {
            "epoch": trainer.current_epoch,
            "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
            "random_states": random_states(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.resumed = checkpoint.get("ssl_zoo_epoch")

    def on_train_start(self, trainer, pl_module) -> None:
        resumed, self.resumed = self.resumed, None
        if resumed:
            # Here, after Lightning made the resumed run's data iterator (which draws a number
            # from the global stream) and before its first batch. The random streams on one
            # process only: a checkpoint holds the first rank's, not each rank's.
            resume_mid_epoch(trainer.train_dataloader, resumed["epoch"], resumed["batches"])
            if trainer.world_size == 1:
                set_random_states(resumed["random_states"])


def random_states() -> dict:
    """The global random streams a training step draws from (views, dropout, random ops), as
    tensors and numbers, which a checkpoint loaded with weights_only=True may hold."""
    name, keys, *rest = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), *rest),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
