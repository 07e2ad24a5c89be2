"""LearningRateWarmup: linear ramp over the first optimizer steps, then the configured rate."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tsode.warmup import LearningRateWarmup


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.seen.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.4)


def test_learning_rate_ramps_linearly_then_stays_at_the_configured_rate(tmp_path):
    data = TensorDataset(torch.randn(12, 2), torch.randn(12, 1))
    model = Tiny()
    trainer = pl.Trainer(max_epochs=2, callbacks=[LearningRateWarmup(steps=4)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(data, batch_size=2))  # 6 steps per epoch
    assert model.seen[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert model.seen[4:] == pytest.approx([0.4] * 8)


def test_negative_steps_are_refused():
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        LearningRateWarmup(steps=-1)
