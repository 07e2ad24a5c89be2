"""Training on varied forecast cutoffs (``TaskConfig.train_cutoff_range``): draws, batches,
fallbacks, workers, DDP injection, and that validation / test keep the task's own cutoff."""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from tsode.data import IrregularBatch, LoaderConfig, SyntheticICUDataModule, TableDataModule
from tsode.data.tasks import TaskConfig, draw_training_cutoffs


def _module(**task_changes) -> SyntheticICUDataModule:
    dm = SyntheticICUDataModule(
        num_series=60, seed=3, task=TaskConfig(cutoff=24.0), loader=LoaderConfig(batch_size=8)
    )
    dm.setup()
    if task_changes:
        dm.set_task(**task_changes)
    return dm


def _epoch_batches(dm, epoch: int) -> list[IrregularBatch]:
    loader = dm.train_dataloader()
    loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning does at each epoch start
    return list(loader)


def _true_times(part) -> list[np.ndarray]:
    return [part.times[b, : int(part.lengths[b])].numpy() for b in range(len(part.lengths))]


def test_task_config_validates_the_range() -> None:
    assert TaskConfig(cutoff=24.0, train_cutoff_range=[12, 36]).train_cutoff_range == (12.0, 36.0)
    assert TaskConfig(train_cutoff_range=(0.3, 0.7)).train_cutoff_range == (0.3, 0.7)
    with pytest.raises(ValueError, match="fractions of each series' span"):
        TaskConfig(train_cutoff_range=(12, 36))  # no cutoff in hours: fractions expected
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        TaskConfig(cutoff=24.0, train_cutoff_range=(36, 12))
    with pytest.raises(ValueError, match="two numbers"):
        TaskConfig(cutoff=24.0, train_cutoff_range=(12,))
    with pytest.raises(ValueError, match="task 'interpolation' has none"):
        TaskConfig(kind="interpolation", train_cutoff_range=(0.2, 0.8))
    assert "training cutoffs drawn in [12, 36]" in TaskConfig(
        cutoff=24.0, train_cutoff_range=(12, 36)
    ).describe()


def test_draws_are_seeded_per_epoch_and_in_range() -> None:
    dm = _module()
    table = dm.datasets["train"].table
    task = TaskConfig(cutoff=24.0, train_cutoff_range=(12.0, 36.0), seed=5)
    a0 = draw_training_cutoffs(table, task, 0)
    assert a0.shape == (table.num_series,)
    assert (a0 >= 12.0).all() and (a0 < 36.0).all()
    np.testing.assert_array_equal(a0, draw_training_cutoffs(table, task, 0))
    assert not np.allclose(a0, draw_training_cutoffs(table, task, 1))
    frac = TaskConfig(train_cutoff_range=(0.25, 0.5))
    last = np.array([table.times[table.offsets[s + 1] - 1] for s in range(table.num_series)])
    ratio = draw_training_cutoffs(table, frac, 2) / last
    assert (ratio >= 0.25).all() and (ratio < 0.5).all()


def _expected_parts(table, sid, cut: float, base: float) -> tuple[np.ndarray, np.ndarray]:
    """Context / target times of series ``sid`` under cutoff ``cut`` (closed boundary), or
    under ``base`` when ``cut`` leaves it no observed context or no target."""
    s = table.series_ids.index(sid)
    rows = slice(table.offsets[s], table.offsets[s + 1])
    times, observed = table.times[rows], table.mask[rows].any(1)
    if not (observed[times <= cut].any() and (times > cut).any()):
        cut = base
    return times[times <= cut], times[times > cut]


def test_training_batches_follow_each_epochs_cutoffs() -> None:
    dm = _module(train_cutoff_range=(12.0, 36.0))
    ds = dm.datasets["train"]
    for epoch in (0, 1):
        drawn = draw_training_cutoffs(ds.table, dm.task, epoch)
        cut_of = dict(zip(ds.table.series_ids, drawn, strict=True))
        seen = []
        for batch in _epoch_batches(dm, epoch):
            ctxs, tgts = _true_times(batch.context), _true_times(batch.target)
            for b, sid in enumerate(batch.series_ids):
                seen.append(sid)
                ctx, tgt = _expected_parts(ds.table, sid, cut_of[sid], 24.0)
                np.testing.assert_allclose(ctxs[b], ctx, atol=1e-4)
                np.testing.assert_allclose(tgts[b], tgt, atol=1e-4)
        assert sorted(seen) == sorted(ds.series_ids)  # every training series once per epoch
    lengths0, lengths1 = ds.part_lengths_at(0), ds.part_lengths_at(1)
    assert not np.array_equal(lengths0, lengths1)
    assert (lengths0 > 0).all()
    np.testing.assert_array_equal(ds.part_lengths_at(None), ds.part_lengths)


def test_validation_and_test_keep_the_task_cutoff() -> None:
    fixed = _module()
    varied = _module(train_cutoff_range=(12.0, 36.0))
    for split in ("val", "test"):
        a = list(fixed.val_dataloader() if split == "val" else fixed.test_dataloader())
        b = list(varied.val_dataloader() if split == "val" else varied.test_dataloader())
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x.series_ids == y.series_ids
            torch.testing.assert_close(x.context.times, y.context.times)
            torch.testing.assert_close(x.target.values, y.target.values)
            assert torch.equal(x.target.mask, y.target.mask)
    assert not varied.datasets["val"].varies_by_epoch


def test_a_series_left_without_target_keeps_the_task_cutoff() -> None:
    # series 0 ends at 5 h: any drawn cutoff in [6, 8) leaves it no target -> cutoff 3 h
    df = pd.DataFrame({
        "series_id": [0] * 6 + [1] * 10,
        "time": list(np.arange(6.0)) + list(np.arange(10.0)),
        "x": np.arange(16.0),
    })
    dm = TableDataModule(
        df, task=TaskConfig(cutoff=3.0), split_fractions=(0.9, 0.05, 0.05),
        loader=LoaderConfig(batch_size=4),
    )
    dm.setup()
    dm.set_task(train_cutoff_range=(6.0, 8.0))
    batches = _epoch_batches(dm, 0)
    by_id = {}
    for batch in batches:
        for b, sid in enumerate(batch.series_ids):
            by_id[sid] = (_true_times(batch.context)[b], _true_times(batch.target)[b])
    ctx, tgt = by_id[0]
    np.testing.assert_allclose(ctx, [0, 1, 2, 3])
    np.testing.assert_allclose(tgt, [4, 5])
    ctx1, tgt1 = by_id[1]
    assert ctx1.max() >= 6.0 and tgt1.min() < 9.0  # the drawn cutoff


def test_workers_build_the_same_batches() -> None:
    dm = _module(train_cutoff_range=(12.0, 36.0))
    in_process = [(b.series_ids, b.context.times) for b in _epoch_batches(dm, 1)]
    dm.loader = dataclasses.replace(dm.loader, num_workers=1)
    loader = dm.train_dataloader()
    assert loader.num_workers == 1
    loader.batch_sampler.sampler.set_epoch(1)
    in_worker = [(b.series_ids, b.context.times) for b in loader]
    assert [i for i, _ in in_process] == [i for i, _ in in_worker]
    for (_, a), (_, b) in zip(in_process, in_worker, strict=True):
        torch.testing.assert_close(a, b)


def test_ddp_injected_sampler_keeps_varied_cutoffs() -> None:
    dm = _module(train_cutoff_range=(12.0, 36.0))
    ds = dm.datasets["train"]
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    seen = []
    for rank in range(2):
        dist = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=rank)
        ranked = _update_dataloader(loader, dist)
        assert ranked.batch_sampler.lengths_at is not None
        ranked.batch_sampler.sampler.set_epoch(2)
        for batch in ranked:
            seen += batch.series_ids
            drawn = draw_training_cutoffs(ds.table, dm.task, 2)
            cut_of = dict(zip(ds.table.series_ids, drawn, strict=True))
            ctxs = _true_times(batch.context)
            for b, sid in enumerate(batch.series_ids):
                ctx, _ = _expected_parts(ds.table, sid, cut_of[sid], 24.0)
                np.testing.assert_allclose(ctxs[b], ctx, atol=1e-4)
    assert set(seen) == set(ds.series_ids)


def test_fit_with_varied_cutoffs_trains(tmp_path) -> None:
    from tsode.models.baselines import GRUDelta

    dm = SyntheticICUDataModule(
        num_series=40, seed=0, loader=LoaderConfig(batch_size=8),
        task=TaskConfig(cutoff=24.0, train_cutoff_range=(12.0, 36.0)),
    )
    model = GRUDelta(num_channels=dm.num_channels, hidden_dim=8)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == 2
    assert torch.isfinite(trainer.callback_metrics["val/mse"])


def test_forecaster_fit_takes_the_range(synthetic_long_frame, tmp_path) -> None:  # noqa: ANN001
    from tsode.api import Forecaster

    class ContextEnds(L.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            ctx = batch.context
            self.ends += ctx.times[torch.arange(len(ctx.lengths)), ctx.lengths - 1].tolist()

    seen = ContextEnds()
    fc = Forecaster(
        "gru_dt", hidden_dim=8, tracking=False, work_dir=tmp_path, verbose=False,
        trainer_kwargs={"max_epochs": 1, "enable_progress_bar": False, "callbacks": [seen]},
    )
    fc.fit(synthetic_long_frame(30), cutoff=12.0, train_cutoff_range=(30.0, 40.0), batch_size=8)
    assert fc.data.task.train_cutoff_range == (30.0, 40.0)
    assert fc.data.task.cutoff == 12.0
    assert max(seen.ends) > 12.0  # training contexts reach the drawn cutoffs, past 12 h
    forecast = fc.predict(synthetic_long_frame(30).query("time <= 12"), horizon=6.0)
    assert len(forecast) > 0
