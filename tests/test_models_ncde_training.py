"""Quality check: a Neural CDE trained briefly on the synthetic ICU data beats the baselines on
held-out series (a quality threshold, not a time limit)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tsode.data import LoaderConfig, SyntheticICUDataModule, TaskConfig
from tsode.models import MODELS
from tsode.models.base import IrregularModel
from tsode.models.ncde import NeuralCDE
from tsode.solvers import SolverConfig


def held_out_mse(model: IrregularModel, loader) -> float:
    """MSE over every observed target entry of the loader (normalized units)."""
    model.eval()
    err = 0.0
    count = 0
    with torch.no_grad():
        for batch in loader:
            pred = model.forecast(batch, batch.target.times).mean
            mask = batch.target.mask & batch.target.time_mask.unsqueeze(-1)
            diff = torch.where(mask, pred - batch.target.values, torch.zeros_like(pred))
            err += float(diff.square().sum())
            count += int(mask.sum())
    return err / count


@pytest.mark.slow
def test_trained_ncde_beats_locf_and_channel_mean_on_held_out_series() -> None:
    L.seed_everything(0, verbose=False)
    data = SyntheticICUDataModule(num_series=600, task=TaskConfig(horizon=6.0), loader=LoaderConfig(batch_size=32), seed=0)
    data.setup("fit")
    data.setup("test")
    model = NeuralCDE(
        num_channels=data.num_channels,
        hidden_dim=32,
        solver=SolverConfig(method="rk4", step_size=0.5),
        lr=2e-3,
    )
    trainer = L.Trainer(
        max_steps=300,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)

    locf = MODELS["locf"](num_channels=data.num_channels)
    channel_mean = MODELS["mean"](num_channels=data.num_channels)
    for batch in data.train_dataloader():
        channel_mean.fit_batch(batch)

    test = data.test_dataloader()
    ncde_mse = held_out_mse(model, test)
    locf_mse = held_out_mse(locf, test)
    mean_mse = held_out_mse(channel_mean, test)
    print(f"held-out MSE: ncde {ncde_mse:.3f}, locf {locf_mse:.3f}, channel mean {mean_mse:.3f}")
    assert ncde_mse < locf_mse
    assert ncde_mse < 0.9 * mean_mse
