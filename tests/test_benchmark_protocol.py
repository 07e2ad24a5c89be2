"""The PhysioNet forecast-24h benchmark protocol: open context boundary, explicit splits, the
reference's patient split, min-max statistics and metric (benchmarks/physionet.py)."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tsode.data import DataValidationError, LoaderConfig, TableDataModule
from tsode.data.series import SeriesTable
from tsode.data.tasks import TaskConfig, assign_task

REPO = Path(__file__).resolve().parents[1]
PHYSIONET_DIR = (
    Path(os.environ["TSODE_PHYSIONET_DIR"])
    if os.environ.get("TSODE_PHYSIONET_DIR")
    else REPO.parent / "shared/data/physionet2012"
)
needs_physionet = pytest.mark.skipif(
    not (PHYSIONET_DIR / "set-a.tar.gz").exists(), reason="PhysioNet 2012 files not available"
)


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_physionet", REPO / "benchmarks/physionet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


def _frame(num_series: int = 12) -> pd.DataFrame:
    """Long frame: series ``s<k>`` observed at 0, 12, 24 (exactly the cutoff), 30 and 40 h."""
    rows = []
    for k in range(num_series):
        for t in (0.0, 12.0, 24.0, 30.0, 40.0):
            rows.append((f"s{k}", t, "a", float(k) + t))
            if t != 12.0:
                rows.append((f"s{k}", t, "b", -t))
    return pd.DataFrame(rows, columns=["series_id", "time", "channel", "value"])


def _table() -> SeriesTable:
    times = np.array([0.0, 12.0, 24.0, 30.0, 0.0, 24.0])
    return SeriesTable.from_long(
        series_ids=["x", "y"], series_codes=np.array([0, 0, 0, 0, 1, 1]), times=times,
        channel_codes=np.zeros(6, dtype=np.int64), values=np.arange(6.0), channels=["c"],
        time_origin="absolute",
    )


# ---------------------------------------------------------------------- context boundary
def test_open_boundary_puts_the_cutoff_time_into_the_target():
    table = _table()
    closed = assign_task(table, TaskConfig(cutoff=24.0))
    opened = assign_task(table, TaskConfig(cutoff=24.0, context_boundary="open"))
    at_cut = table.times == 24.0
    assert closed.context_rows[at_cut].all() and not closed.target_rows[at_cut].any()
    assert opened.target_rows[at_cut].all() and not opened.context_rows[at_cut].any()
    # series y: observed at 0 and 24 only -> usable only with the open boundary
    assert closed.usable.tolist() == [True, False]
    assert opened.usable.tolist() == [True, True]
    assert opened.context_lengths.tolist() == [2, 1]
    assert opened.target_lengths.tolist() == [2, 1]


def test_open_boundary_with_horizon_and_describe():
    table = _table()
    task = TaskConfig(cutoff=12.0, horizon=12.0, context_boundary="open")
    out = assign_task(table, task)
    # series x: context {0}, target {12, 24} (12 <= t <= 24), 30 is past the horizon
    assert out.context_rows[:4].tolist() == [True, False, False, False]
    assert out.target_rows[:4].tolist() == [False, True, True, False]
    assert "t < cutoff" in task.describe()
    assert "t < cutoff" not in TaskConfig(cutoff=12.0).describe()


def test_context_boundary_is_validated():
    with pytest.raises(ValueError, match="context_boundary"):
        TaskConfig(cutoff=24.0, context_boundary="half-open")


def test_data_module_threads_the_open_boundary():
    frame = _frame()
    for boundary, ctx_last, tgt_first in (("closed", 24.0, 30.0), ("open", 12.0, 24.0)):
        dm = TableDataModule(
            frame,
            time_origin="absolute",
            task=TaskConfig(cutoff=24.0, context_boundary=boundary),
            loader=LoaderConfig(batch_size=64),
            split_fractions=(0.5, 0.25, 0.25),
        )
        dm.setup()
        assert dm.task.context_boundary == boundary
        batch = next(iter(dm.train_dataloader()))
        ctx, tgt = batch.context, batch.target
        last = ctx.times.gather(1, (ctx.lengths - 1).unsqueeze(1)).squeeze(1)
        assert (last == ctx_last).all()
        assert (tgt.times[:, 0] == tgt_first).all()


# ---------------------------------------------------------------------- explicit splits
def test_explicit_splits_are_used_and_unlisted_series_left_out(caplog):
    splits = {"train": ["s0", "s3", "s5", "s7"], "val": ["s1"], "test": ["s2", "s4"]}
    dm = TableDataModule(_frame(), time_origin="absolute", task=TaskConfig(cutoff=24.0), splits=splits)
    with caplog.at_level(logging.INFO, logger="tsode.data"):
        dm.setup()
    for name, ids in splits.items():
        got = [dm.table.series_ids[i] for i in dm.split_indices[name]]
        assert sorted(got) == sorted(ids)
        assert sorted(dm.datasets[name].table.series_ids) == sorted(ids)
    assert dm.table.num_series == 7
    assert dm.summary.counts["series_left_out_by_splits"] == 5
    assert "5 series not listed are left out" in caplog.text
    # the normalizer is fitted on the listed training series only
    train_a = [float(k) + t for k in (0, 3, 5, 7) for t in (0.0, 12.0, 24.0, 30.0, 40.0)]
    assert dm.normalizer.mean[dm.channels.index("a")] == pytest.approx(np.mean(train_a))


def test_explicit_splits_missing_key_is_an_empty_split():
    dm = TableDataModule(
        _frame(),
        time_origin="absolute",
        task=TaskConfig(cutoff=24.0),
        splits={"train": ["s0", "s1"], "val": ["s2"]},
    )
    dm.setup()
    assert len(dm.split_indices["test"]) == 0 and len(dm.datasets["test"]) == 0


def test_explicit_splits_unknown_ids_are_named():
    dm = TableDataModule(
        _frame(),
        time_origin="absolute",
        task=TaskConfig(cutoff=24.0),
        splits={"train": ["s0", "nope"], "val": ["s1"], "test": ["ghost"]},
    )
    with pytest.raises(DataValidationError, match=r"2 series id\(s\) not in the table.*'nope', 'ghost'"):
        dm.setup()


def test_explicit_splits_ids_in_two_splits_are_named():
    dm = TableDataModule(
        _frame(),
        time_origin="absolute",
        task=TaskConfig(cutoff=24.0),
        splits={"train": ["s0", "s1"], "val": ["s1"], "test": ["s2", "s2"]},
    )
    with pytest.raises(DataValidationError, match=r"'s1' \(train and val\), 's2' \(test and test\)"):
        dm.setup()


def test_explicit_splits_unknown_split_name():
    with pytest.raises(ValueError, match="unknown split names"):
        TableDataModule(_frame(), splits={"training": ["s0"]})


# ---------------------------------------------------------------------- protocol split
@pytest.mark.parametrize("n", [5, 10, 37, 401, 8000])
def test_protocol_split_partitions_with_the_reference_sizes(n):
    ids = [f"r{k}" for k in range(n)]
    split = bench.protocol_split(ids)
    n_seen = math.floor(0.8 * n)
    assert len(split["test"]) == n - n_seen
    assert len(split["train"]) == math.floor(0.75 * n_seen)
    assert len(split["train"]) + len(split["val"]) == n_seen
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(ids)
    assert split["test"] != ids[-len(split["test"]):]  # shuffled


@pytest.mark.parametrize("n", [5, 10, 37, 401, 8000, 12000])
def test_protocol_split_matches_scikit_learn(n):
    model_selection = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(n)
    ids = [int(x) for x in rng.permutation(10 * n)[:n]]  # arbitrary, unsorted ids
    seen, test = model_selection.train_test_split(ids, train_size=0.8, random_state=42, shuffle=True)
    train, val = model_selection.train_test_split(seen, train_size=0.75, random_state=42, shuffle=False)
    assert bench.protocol_split(ids) == {"train": train, "val": val, "test": test}


# ---------------------------------------------------------------------- protocol metric
def test_protocol_score_averages_per_variable_then_over_variables():
    score = bench.ProtocolScore(["a", "b", "c", "d"], [0.0, 10.0, 0.0, 1.0], [2.0, 20.0, 5.0, 1.0])
    # a: errors 2 and 0 (range 2 -> 1, 0); b: error 5 (range 10 -> 0.5); c: no targets;
    # d: zero range -> scored in original units: error 0.5
    pred = np.array([[[2.0, 15.0, 0.0, 1.5], [1.0, 0.0, 9.0, 0.0]]])
    truth = np.array([[[0.0, 10.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]]])
    mask = np.array([[[True, True, False, True], [True, False, False, False]]])
    score.update(pred, truth, mask)
    per = score.per_variable()
    assert set(per) == {"a", "b", "d"}
    assert per["a"] == {"mse": 0.5, "mae": 0.5, "count": 2}
    assert per["b"] == {"mse": 0.25, "mae": 0.5, "count": 1}
    assert per["d"] == {"mse": 0.25, "mae": 0.5, "count": 1}
    result = score.result()
    assert result["mse"] == pytest.approx((0.5 + 0.25 + 0.25) / 3)
    assert result["mae"] == pytest.approx(0.5)
    assert result["variables"] == 3 and result["targets"] == 4
    # pooling all entries would give a different number: the protocol does not pool
    assert result["mse"] != pytest.approx((1.0 + 0.0 + 0.25 + 0.25) / 4)


def test_protocol_score_empty_is_nan():
    assert math.isnan(bench.ProtocolScore(["a"], [0.0], [1.0]).result()["mse"])


# ---------------------------------------------------------------------- real PhysioNet files
@pytest.fixture(scope="module")
def protocol():
    return bench.build_protocol(PHYSIONET_DIR, ["a"], max_series=300)


@needs_physionet
def test_protocol_records_minmax_and_targets_against_tsode_loader(protocol, tmp_path_factory):
    from tsode.data import load_physionet2012

    assert len(protocol["record_ids"]) == 300
    assert protocol["record_ids"] == sorted(protocol["record_ids"])  # set a, by RecordID
    table = load_physionet2012(PHYSIONET_DIR, sets=("a",), progress=False,
                               cache_dir=tmp_path_factory.mktemp("cache"))
    assert table.series_ids[:300] == protocol["record_ids"]
    pos = {p: k for k, p in enumerate(protocol["params"])}
    seen = set(protocol["split"]["train"] + protocol["split"]["val"])
    idx = [k for k, s in enumerate(table.series_ids) if s in seen]
    sub = table.subset(idx)
    for j, channel in enumerate(table.channels):
        column = sub.values[:, j].astype(np.float64)
        if channel == "Weight":
            # the protocol also counts the 00:00 descriptor, -1 (unknown) included
            assert protocol["min"][pos["Weight"]] == -1.0
            assert protocol["max"][pos["Weight"]] >= np.nanmax(column)
            continue
        if np.isnan(column).all():
            assert math.isnan(protocol["min"][pos[channel]])
            continue
        assert protocol["min"][pos[channel]] == pytest.approx(np.nanmin(column), rel=1e-6)
        assert protocol["max"][pos[channel]] == pytest.approx(np.nanmax(column), rel=1e-6)
    # descriptors are variables of the protocol (at time 0), never targets
    assert not {"Age", "Gender", "Height", "ICUType"} & set(protocol["target_counts"])


@needs_physionet
def test_data_module_with_protocol_split_serves_every_protocol_target(protocol, tmp_path):
    from tsode.data import PhysioNet2012DataModule

    dm = PhysioNet2012DataModule(
        root=str(PHYSIONET_DIR),
        sets=("a",),
        progress=False,
        cache_dir=str(tmp_path),
        task=TaskConfig(cutoff=24.0, context_boundary="open"),
        splits=protocol["split"],
        loader=LoaderConfig(batch_size=32),
    )
    dm.setup()
    assert dm.summary.counts["series_left_out_by_splits"] == 4000 - 300
    counts = dict.fromkeys(dm.channels, 0)
    for batch in dm.test_dataloader():
        assert (batch.context.times < 24.0).all()
        real = batch.target.time_mask
        assert (batch.target.times[real] >= 24.0).all()
        mask = batch.target.mask & real.unsqueeze(-1)
        for name, c in zip(dm.channels, mask.sum(dim=(0, 1)).tolist()):
            counts[name] += c
    assert {k: v for k, v in counts.items() if v} == protocol["target_counts"]
