"""Property tests: tables -> batches -> tables, padding invariance, splits, normalization."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tsode.data import (
    LengthBucketSampler,
    Normalizer,
    SeriesDataset,
    TableSpec,
    TaskConfig,
    batch_to_frame,
    padding_fraction,
    split_series,
    table_from_frame,
)

CHANNELS = ["a", "b", "c"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def long_tables(draw) -> pd.DataFrame:
    """Random irregular long tables without duplicate (series, time, channel) entries."""
    num_series = draw(st.integers(1, 6))
    rows = []
    for s in range(num_series):
        # times on a 1/16 h grid: distinct times stay distinct in float32 batches
        ticks = draw(st.lists(st.integers(-800, 800), min_size=1, max_size=8, unique=True))
        for t in np.asarray(ticks) / 16.0:
            chans = draw(st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3, unique=True))
            for c in chans:
                v = draw(st.floats(-1e4, 1e4, allow_nan=False, width=32))
                rows.append((f"id{s}", float(t), c, float(v)))
    frame = pd.DataFrame(rows, columns=["series_id", "time", "channel", "value"])
    perm = draw(st.permutations(range(len(frame))))
    return frame.iloc[list(perm)].reset_index(drop=True)


def _canon(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["series_id", "time", "channel"]).reset_index(drop=True)


def _dataset(frame: pd.DataFrame, task: TaskConfig, fit_normalizer: bool = True) -> SeriesDataset:
    table = table_from_frame(frame, TableSpec(time_origin="series_start"))
    norm = (
        Normalizer.fit(table.values, table.channels)
        if fit_normalizer
        else Normalizer.identity(table.channels)
    )
    return SeriesDataset(table, task, norm, keep_unusable=task.kind == "none")


@SETTINGS
@given(long_tables())
def test_table_to_batch_to_table_round_trip(frame: pd.DataFrame) -> None:
    ds = _dataset(frame, TaskConfig(kind="none"))
    batch = ds.collate(list(range(len(ds))))
    back = batch_to_frame(batch, "context", normalizer=ds.normalizer)
    got, want = _canon(back), _canon(frame)
    assert list(got.series_id) == list(want.series_id)
    assert list(got.channel) == list(want.channel)
    # times: float32 relative to series start, offset added back in float64
    np.testing.assert_allclose(got.time, want.time, atol=1e-4)
    np.testing.assert_allclose(got.value, want.value, rtol=1e-5, atol=1e-3)
    # with the source table, times come back exactly
    exact = _canon(batch_to_frame(batch, "context", normalizer=ds.normalizer, table=ds.table))
    np.testing.assert_array_equal(exact.time.to_numpy(), want.time.to_numpy())


@SETTINGS
@given(long_tables(), st.data())
def test_padding_invariance(frame: pd.DataFrame, data) -> None:
    ds = _dataset(frame, TaskConfig(kind="interpolation", holdout_fraction=0.5, seed=1))
    if len(ds) == 0:
        return
    order = data.draw(st.permutations(range(len(ds))))
    full = ds.collate(list(order))
    for row, i in enumerate(order):
        alone = ds.collate([i])
        for part_full, part_alone in ((full.context, alone.context), (full.target, alone.target)):
            n = int(part_alone.lengths[0])
            assert int(part_full.lengths[row]) == n
            assert torch.equal(part_full.times[row, :n], part_alone.times[0, :n])
            assert torch.equal(part_full.values[row, :n], part_alone.values[0, :n])
            assert torch.equal(part_full.mask[row, :n], part_alone.mask[0, :n])
            assert not part_full.mask[row, n:].any()
            assert (part_full.values[row, n:] == 0).all()
        assert full.series_ids[row] == alone.series_ids[0]


@SETTINGS
@given(long_tables(), st.floats(0.05, 0.95))
def test_forecast_context_and_target_partition_observations(frame, fraction) -> None:
    ds = _dataset(frame, TaskConfig(kind="forecast", cutoff_fraction=fraction), False)
    a = ds.assignment
    observed = ds.table.mask
    assert not (a.context_entries & a.target_entries).any()
    np.testing.assert_array_equal(a.context_entries | a.target_entries, observed)
    if len(ds):
        batch = ds.collate(list(range(len(ds))))
        last_ctx = batch.context.times[torch.arange(len(ds)), batch.context.lengths - 1]
        tmask = batch.target.time_mask
        assert (batch.target.times >= last_ctx[:, None])[tmask].all()
        assert (batch.target.times[tmask] > last_ctx[:, None].expand_as(tmask)[tmask]).all()


@SETTINGS
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 30), st.integers(1, 4)),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    )
)
def test_normalization_inverts(values: np.ndarray) -> None:
    names = [f"c{i}" for i in range(values.shape[1])]
    norm = Normalizer.fit(values, names)
    back = norm.inverse(norm.transform(values))
    np.testing.assert_allclose(back, values, rtol=1e-9, atol=1e-9 * (1 + np.abs(values).max()))
    restored = Normalizer.from_state_dict(norm.state_dict())
    assert restored == norm
    t = torch.as_tensor(values)
    assert torch.allclose(norm.inverse(norm.transform(t)), t, rtol=1e-9, atol=1e-6)
    idx = np.arange(values.size).reshape(values.shape) % values.shape[1]
    np.testing.assert_allclose(norm.inverse(norm.transform(values, idx), idx), values, atol=1e-6)


@SETTINGS
@given(st.integers(3, 500), st.integers(0, 10_000))
def test_splits_disjoint_and_reproducible(num_series: int, seed: int) -> None:
    splits = split_series(num_series, (0.6, 0.2, 0.2), seed)
    parts = [set(splits[k].tolist()) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(range(num_series))
    assert all(len(p) > 0 for p in parts)
    again = split_series(num_series, (0.6, 0.2, 0.2), seed)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(1, 200), st.integers(0, 50)), min_size=1, max_size=300),
    st.integers(1, 40),
    st.booleans(),
    st.booleans(),
)
def test_bucket_sampler_covers_each_index_once(pairs, batch_size, shuffle, two_d) -> None:
    lengths = np.asarray(pairs) if two_d else np.asarray(pairs)[:, 0]
    sampler = LengthBucketSampler(lengths, batch_size, shuffle=shuffle, pool_factor=4, seed=2)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert len(batches) == len(sampler)
    assert all(len(b) <= batch_size for b in batches)


def test_bucketing_reduces_padding() -> None:
    lengths = np.random.default_rng(0).integers(5, 200, 2000)
    bucketed = list(LengthBucketSampler(lengths, 64, shuffle=True, seed=0))
    perm = np.random.default_rng(1).permutation(len(lengths))
    plain = [perm[i : i + 64] for i in range(0, len(perm), 64)]
    assert padding_fraction(lengths, bucketed) < 0.25 * padding_fraction(lengths, plain)


def test_two_part_bucketing_reduces_padding_of_both_parts() -> None:
    rng = np.random.default_rng(0)
    ctx = rng.integers(5, 150, 3000)
    tgt = (0.5 * ctx + rng.integers(0, 80, 3000)).astype(int)
    lengths = np.stack([ctx, tgt], 1)
    one_key = list(LengthBucketSampler(ctx + tgt, 64, shuffle=True, seed=0))
    two_keys = list(LengthBucketSampler(lengths, 64, shuffle=True, seed=0))
    assert len(two_keys) == len(one_key) == 47
    assert padding_fraction(lengths, two_keys) < 0.7 * padding_fraction(lengths, one_key)


def _observations(table) -> pd.DataFrame:  # noqa: ANN001
    return _canon(table.to_long_frame())


@SETTINGS
@given(long_tables(), st.sampled_from(["numeric", "datetime", "timedelta"]))
def test_wide_and_long_tables_hold_the_same_observations(frame: pd.DataFrame, kind: str) -> None:
    if kind == "datetime":
        frame = frame.assign(time=pd.Timestamp("2031-05-01") + pd.to_timedelta(frame.time, unit="h"))
    elif kind == "timedelta":
        frame = frame.assign(time=pd.to_timedelta(frame.time, unit="h"))
    wide = frame.pivot(index=["series_id", "time"], columns="channel", values="value")
    wide = wide.reset_index().sample(frac=1.0, random_state=0)  # unsorted, NaN where unobserved
    long_table = table_from_frame(frame, TableSpec())
    wide_table = table_from_frame(wide, TableSpec(format="wide"))
    assert long_table.time_axis.kind == wide_table.time_axis.kind == kind
    pd.testing.assert_frame_equal(_observations(wide_table), _observations(long_table))


@SETTINGS
@given(long_tables(), st.data())
def test_duplicate_entries_are_averaged(frame: pd.DataFrame, data) -> None:
    picks = data.draw(st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=5))
    extra = frame.iloc[picks].assign(
        value=data.draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=len(picks), max_size=len(picks)))
    )
    doubled = pd.concat([frame, extra], ignore_index=True)
    table = table_from_frame(doubled, TableSpec())
    assert table.info["duplicate_entries_merged"] == len(picks)
    want = doubled.groupby(["series_id", "time", "channel"], as_index=False)["value"].mean()
    got = _observations(table)
    np.testing.assert_allclose(got.value, _canon(want).value, rtol=1e-5, atol=1e-3)
