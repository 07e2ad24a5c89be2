"""SyntheticICUDataModule / PeriodicToyDataModule: determinism, batch contract, ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsode.data import (
    IrregularBatch,
    LoaderConfig,
    PeriodicToyDataModule,
    SyntheticICUDataModule,
    TaskConfig,
)
from tsode.data.synthetic import ICU_CHANNELS, ICU_SCALE


@pytest.fixture(scope="module")
def icu() -> SyntheticICUDataModule:
    dm = SyntheticICUDataModule(num_series=120, loader=LoaderConfig(batch_size=16), seed=3)
    dm.setup()
    return dm


def _check_part_contract(part, num_channels: int) -> None:
    b, length = part.times.shape
    assert part.values.shape == (b, length, num_channels)
    assert part.mask.shape == (b, length, num_channels) and part.mask.dtype == torch.bool
    assert part.lengths.dtype == torch.long and part.times.dtype == torch.float32
    tm = part.time_mask
    # padding is masked, zero-valued and repeats the last real time
    assert not part.mask[~tm].any()
    assert (part.values[~part.mask] == 0).all()
    assert (part.times.diff(dim=1) >= 0).all()
    for i in range(b):
        n = int(part.lengths[i])
        if 0 < n < length:
            assert torch.all(part.times[i, n:] == part.times[i, n - 1])


def test_properties_before_setup() -> None:
    dm = SyntheticICUDataModule(num_series=30)
    assert dm.num_channels == 5 and dm.channels == list(ICU_CHANNELS) and dm.num_static == 0


def test_deterministic_given_seed() -> None:
    a = SyntheticICUDataModule(num_series=40, seed=7)
    b = SyntheticICUDataModule(num_series=40, seed=7)
    c = SyntheticICUDataModule(num_series=40, seed=8)
    for dm in (a, b, c):
        dm.setup()
    np.testing.assert_array_equal(a.table.times, b.table.times)
    np.testing.assert_array_equal(a.table.values, b.table.values)
    assert a.table.times.shape != c.table.times.shape or not np.array_equal(
        a.table.times, c.table.times
    )
    ba = next(iter(a.train_dataloader()))
    bb = next(iter(b.train_dataloader()))
    assert ba.series_ids == bb.series_ids
    assert torch.equal(ba.context.values, bb.context.values)


def test_forecast_batch_contract(icu: SyntheticICUDataModule) -> None:
    n_seen = 0
    for loader in (icu.train_dataloader(), icu.val_dataloader(), icu.test_dataloader()):
        for batch in loader:
            assert isinstance(batch, IrregularBatch)
            _check_part_contract(batch.context, 5)
            _check_part_contract(batch.target, 5)
            assert batch.channels == list(ICU_CHANNELS)
            assert batch.static is None and batch.labels is None
            assert batch.time_offset.shape == (batch.batch_size,)
            assert (batch.context.lengths >= 1).all() and (batch.target.lengths >= 1).all()
            ctx_last = batch.context.times[
                torch.arange(batch.batch_size), batch.context.lengths - 1
            ]
            assert (ctx_last <= 24.0).all()
            tmask = batch.target.time_mask
            assert (batch.target.times[tmask] > 24.0).all()
            # every real time point observes at least one channel
            assert batch.context.mask.any(-1)[batch.context.time_mask].all()
            n_seen += batch.batch_size
    assert n_seen == 120


def test_observations_follow_known_system(icu: SyntheticICUDataModule) -> None:
    """Observed values equal the noise-free trajectory plus noise of the configured size."""
    traj = icu.trajectories
    table = icu.table
    grid_idx = np.rint(table.times / 0.05).astype(int)
    np.testing.assert_allclose(traj.grid[grid_idx], table.times, atol=1e-9)
    series_idx = np.array([int(s[3:]) for s in table.series_ids])[table.row_series]
    clean = traj.values[series_idx, grid_idx]
    resid = (table.values - clean) / ICU_SCALE
    observed = ~np.isnan(resid)
    std = np.nanstd(resid[observed])
    assert 0.04 < std < 0.06  # noise_std = 0.05 in state units
    missing = 1 - observed.mean(0)
    np.testing.assert_allclose(missing, [0.1, 0.3, 0.2, 0.4, 0.6], atol=0.05)


def test_normalizer_fitted_on_train_only(icu: SyntheticICUDataModule) -> None:
    train = icu.table.subset(icu.split_indices["train"])
    np.testing.assert_allclose(icu.normalizer.mean, np.nanmean(train.values, 0), rtol=1e-5)
    np.testing.assert_allclose(icu.normalizer.std, np.nanstd(train.values, 0), rtol=1e-4)
    everything = np.nanmean(icu.table.values, 0)
    assert not np.allclose(icu.normalizer.mean, everything, rtol=1e-7, atol=0)
    ids = [set(icu.datasets[s].series_ids) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_inverse_normalized_batch_matches_table(icu: SyntheticICUDataModule) -> None:
    batch = next(iter(icu.val_dataloader()))
    sid = batch.series_ids[0]
    times, values = icu.table.series(icu.table.series_ids.index(sid))
    n = int(batch.context.lengths[0])
    np.testing.assert_allclose(batch.context.times[0, :n].numpy(), times[:n], atol=1e-5)
    orig = icu.normalizer.inverse(batch.context.values[0, :n].double().numpy())
    m = batch.context.mask[0, :n].numpy()
    np.testing.assert_allclose(orig[m], values[:n][m], rtol=1e-5)
    np.testing.assert_array_equal(m, ~np.isnan(values[:n]))


def test_interpolation_targets_among_context_times() -> None:
    dm = SyntheticICUDataModule(num_series=30, task=TaskConfig("interpolation", holdout_fraction=0.3))
    dm.setup()
    ds = dm.datasets["train"]
    a = ds.assignment
    observed = ds.table.mask
    assert not (a.context_entries & a.target_entries).any()
    np.testing.assert_array_equal(a.context_entries | a.target_entries, observed)
    frac = a.target_entries.sum() / observed.sum()
    assert 0.25 < frac < 0.35
    batch = ds.collate(list(range(len(ds))))
    for i in range(batch.batch_size):
        ct = set(batch.context.times[i, : batch.context.lengths[i]].tolist())
        tt = set(batch.target.times[i, : batch.target.lengths[i]].tolist())
        assert tt <= ct


def test_extrapolation_splits_window_in_half() -> None:
    dm = SyntheticICUDataModule(num_series=30, task="extrapolation")
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    for i in range(batch.batch_size):
        ct = batch.context.times[i, : batch.context.lengths[i]]
        tt = batch.target.times[i, : batch.target.lengths[i]]
        last = tt.max()
        assert (ct <= 0.5 * last + 1e-5).all() and (tt > 0.5 * last - 1e-5).all()


def test_horizon_limits_targets() -> None:
    dm = SyntheticICUDataModule(num_series=30, task=TaskConfig(cutoff=12.0, horizon=6.0))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    tm = batch.target.time_mask
    assert (batch.target.times[tm] > 12.0).all() and (batch.target.times[tm] <= 18.0 + 1e-5).all()


def test_periodic_toy_is_sine() -> None:
    dm = PeriodicToyDataModule(num_series=20, noise_std=0.0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.channels == ["x"]
    _check_part_contract(batch.context, 1)
    vals = batch.context.values[batch.context.mask]
    assert vals.abs().max() <= 1.5 + 1e-6 and vals.abs().max() > 0.4
    assert dm.summary.num_series == 20 and dm.summary.time_points_per_series["max"] == 50


@pytest.mark.parametrize("cls", ["synthetic", "physionet"])
def test_explicit_cutoff_is_honoured(cls: str) -> None:
    """An explicit cutoff, 24.0 included, is used as given; None means the dataset's default."""
    from tsode.data import PhysioNet2012DataModule

    module = SyntheticICUDataModule if cls == "synthetic" else PhysioNet2012DataModule

    def make(kind: str = "forecast", **fields: float):  # noqa: ANN202
        return module(task=TaskConfig(kind, **fields))

    assert module().task.cutoff == 24.0  # default forecast: the first 24 h
    assert make().task.cutoff == 24.0  # a forecast block naming no cutoff: the same default
    assert make(cutoff=12.0).task.cutoff == 12.0
    assert make(cutoff=24.0).task.cutoff == 24.0
    assert make(cutoff_fraction=0.4).task.cutoff is None  # fraction-based: no default cutoff
    # other tasks: no cutoff unless one is given, and an explicit 24.0 is not dropped
    assert make("classification").task.cutoff is None
    assert make("classification", cutoff=24.0).task.cutoff == 24.0
    assert make("classification", cutoff=36.0).task.cutoff == 36.0
    assert make("extrapolation", cutoff=24.0).task.cutoff == 24.0
    with pytest.raises(ValueError, match="either cutoff"):  # no longer silently dropped
        make(cutoff=24.0, cutoff_fraction=0.5)

