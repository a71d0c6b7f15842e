"""Cost accounting (ssl_zoo/cost.py): FLOPs of a training step as torch counts them, scaled by
the steps run, and the fields every summary carries."""

import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.data import DataLoader, TensorDataset

from ssl_zoo.cost import StepFlops


class TwoLinears(L.LightningModule):
    def __init__(self, n: int, h: int, k: int):
        super().__init__()
        self.first, self.second = nn.Linear(n, h), nn.Linear(h, k)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.second(self.first(x)).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_step_flops_match_the_matrix_multiply_formula_and_scale_with_steps():
    """x (B x n) -> Linear(n, h) -> Linear(h, k): forward 2Bnh + 2Bhk; backward 2Bhk for the
    second layer's weight, 2Bhk for its input's gradient, 2Bnh for the first layer's weight (its
    input, the data, needs no gradient). The optimizer's elementwise update is not counted."""
    B, n, h, k, batches = 8, 12, 20, 5, 3
    loader = DataLoader(TensorDataset(torch.randn(B * batches, n)), batch_size=B)
    flops = StepFlops()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[flops])  # fmt: skip
    trainer.fit(TwoLinears(n, h, k), loader)
    assert flops.per_step == 4 * B * n * h + 6 * B * h * k
    assert trainer.global_step == 2 * batches
    assert flops.total(trainer.global_step) == 6 * flops.per_step
    assert _get_current_dispatch_mode() is None  # the counter is off after the first step


def test_a_raising_step_leaves_no_counter_on():
    class Raising(TwoLinears):
        def training_step(self, batch, batch_idx):
            raise ValueError("boom")

    flops = StepFlops()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[flops])  # fmt: skip
    loader = DataLoader(TensorDataset(torch.randn(4, 3)), batch_size=2)
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(Raising(3, 4, 2), loader)
    assert _get_current_dispatch_mode() is None and flops.per_step is None
