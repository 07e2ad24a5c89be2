"""The streaming table source: cache, normalizer moments, batches equal to the in-memory path."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DistributedSampler

from tsode.data.normalize import Normalizer, series_moments
from tsode.data.series import DataValidationError
from tsode.data.stream_module import StreamingTableDataModule
from tsode.data.streaming import build_cache
from tsode.data.table_module import TableDataModule
from tsode.data.tables import TableSpec

TASK = {"kind": "forecast", "cutoff": 24.0}


def long_frame(num_series: int = 120, seed: int = 0) -> pd.DataFrame:
    """Long rows in shuffled order, with duplicates, NaN values, short and empty series."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(num_series):
        n = int(rng.integers(1, 25))
        for t in np.sort(rng.uniform(0, 48, n)).round(1):
            for c in rng.choice(["hr", "sbp", "temp", "spo2"], int(rng.integers(1, 4)), False):
                rows.append((f"p{s:04d}", t, c, rng.normal(80, 15), s % 3, float(s % 2)))
    df = pd.DataFrame(rows, columns=["series_id", "time", "channel", "value", "age", "y"])
    df.loc[df.sample(frac=0.05, random_state=1).index, "value"] = np.nan
    dup = df.sample(n=20, random_state=2).assign(value=lambda f: f["value"] + 1.0)
    df = pd.concat([df, dup], ignore_index=True)
    return df.sample(frac=1.0, random_state=3).reset_index(drop=True)


def write_partitioned(df: pd.DataFrame, root: Path, parts: int = 4, group: int = 300) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(np.array_split(np.arange(len(df)), parts)):
        (root / f"part={k}").mkdir()
        df.iloc[part].to_parquet(root / f"part={k}" / "data.parquet", row_group_size=group)
    return root


def modules(df, tmp_path, buckets=3, task=TASK, **kwargs):
    memory = TableDataModule(df, task=task, loader={"batch_size": 8}, **kwargs)
    stream = StreamingTableDataModule(
        write_partitioned(df, tmp_path / "data"), cache_dir=tmp_path / "cache",
        num_buckets=buckets, task=task, loader={"batch_size": 8}, **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory.setup()
        stream.setup()
    return memory, stream


def assert_same_batches(a, b, atol: float = 0.0) -> None:
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.series_ids == y.series_ids
        assert x.channels == y.channels
        np.testing.assert_array_equal(x.time_offset.numpy(), y.time_offset.numpy())
        for part in ("context", "target"):
            px, py = getattr(x, part), getattr(y, part)
            np.testing.assert_array_equal(px.times.numpy(), py.times.numpy())
            np.testing.assert_array_equal(px.mask.numpy(), py.mask.numpy())
            np.testing.assert_array_equal(px.lengths.numpy(), py.lengths.numpy())
            np.testing.assert_allclose(px.values.numpy(), py.values.numpy(), rtol=0, atol=atol)
        for field in ("static", "labels"):
            u, v = getattr(x, field), getattr(y, field)
            assert (u is None) == (v is None)
            if u is not None:
                np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("buckets", [1, 4])
def test_streaming_batches_equal_in_memory_without_normalization(tmp_path, buckets):
    memory, stream = modules(long_frame(), tmp_path, buckets=buckets, normalize=False)
    stream.cache.release_every = 1  # close the files after every read: the next opens again
    assert stream.channels == memory.channels
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(
            stream.datasets[split].part_lengths, memory.datasets[split].part_lengths
        )
    assert_same_batches(memory.train_dataloader(), stream.train_dataloader())
    assert_same_batches(memory.val_dataloader(), stream.val_dataloader())
    assert_same_batches(memory.test_dataloader(), stream.test_dataloader())


def test_streaming_normalizer_and_batches_equal_in_memory(tmp_path):
    df = long_frame(seed=5)
    memory, stream = modules(df, tmp_path, static_cols=["age"], label_col="y")
    a, b = memory.normalizer, stream.normalizer
    assert a.names == b.names
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-12, atol=0)
    np.testing.assert_allclose(b.std, a.std, rtol=1e-12, atol=0)
    assert memory.static_normalizer == stream.static_normalizer
    # normalized values may differ by float32 rounding of a 1e-12 relative difference
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert_same_batches(getattr(memory, name)(), getattr(stream, name)(), atol=1e-6)
    # epoch 2 of the seeded permutation too
    la, lb = memory.train_dataloader(), stream.train_dataloader()
    la.batch_sampler.set_epoch(2)
    lb.batch_sampler.set_epoch(2)
    assert_same_batches(la, lb, atol=1e-6)


def test_wide_format_equal_in_memory(tmp_path):
    df = long_frame(60, seed=7).drop_duplicates(["series_id", "time", "channel"])
    wide = df.pivot_table(index=["series_id", "time"], columns="channel", values="value")
    wide = wide.reset_index().sample(frac=1.0, random_state=0).reset_index(drop=True)
    wide.columns.name = None
    memory, stream = modules(wide, tmp_path, normalize=False, format="wide")
    assert stream.channels == memory.channels == ["hr", "sbp", "spo2", "temp"]
    assert_same_batches(memory.train_dataloader(), stream.train_dataloader())


def test_moments_merge_equals_fit():
    rng = np.random.default_rng(0)
    values = rng.normal(1e4, 3.0, size=(5000, 4))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[:, 2] = 7.0  # constant: std 1
    values[:, 3] = np.nan  # never observed: mean 0, std 1
    offsets = np.unique(np.r_[0, np.sort(rng.integers(0, 5000, 300)), 5000])
    count, mean, m2 = series_moments(values, offsets)
    names = ["a", "b", "c", "d"]
    fitted = Normalizer.fit(values, names)
    merged = Normalizer.from_moments(names, count, mean, m2)
    np.testing.assert_allclose(merged.mean, fitted.mean, rtol=1e-12, atol=0)
    np.testing.assert_allclose(merged.std, fitted.std, rtol=1e-12, atol=0)
    assert merged.std[2] == merged.std[3] == 1.0 and merged.mean[3] == 0.0


def test_cache_is_reused_and_keyed_by_the_files(tmp_path):
    root = write_partitioned(long_frame(40), tmp_path / "data")
    spec = TableSpec()
    first, report = build_cache(root, spec, tmp_path / "cache", num_buckets=2)
    assert not report.reused and report.rows > 0
    again, report2 = build_cache(root, spec, tmp_path / "cache", num_buckets=2)
    assert report2.reused and again.path == first.path
    other, report3 = build_cache(root, TableSpec(time_unit="min"), tmp_path / "cache",
                                 num_buckets=2)
    assert not report3.reused and other.path != first.path
    part = next(root.rglob("*.parquet"))
    st = part.stat()
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, report4 = build_cache(root, spec, tmp_path / "cache", num_buckets=2)
    assert not report4.reused and report4.path != first.path
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {
        first.path.name, other.path.name, report4.path.name
    }  # no temporary directory left behind


def test_parquet_error_names_file_row_group_row_series_and_column(tmp_path):
    df = long_frame(40)
    df["value"] = df["value"].astype(str)  # text values, parsed as numbers
    starts = [p[0] for p in np.array_split(np.arange(len(df)), 4)]
    bad = starts[1] + 50 + 17  # file part=1, row group 1 (50 rows per group), file row 67
    df.loc[bad, "value"] = "high"
    root = write_partitioned(df, tmp_path / "data", group=50)
    with pytest.raises(DataValidationError) as info:
        build_cache(root, TableSpec(), tmp_path / "cache", num_buckets=2)
    message = str(info.value)
    assert "part=1" in message and "row group 1, row 67," in message
    assert f"series {df.loc[bad, 'series_id']!r}" in message and "column 'value'" in message
    assert "'high'" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_csv_error_names_line(tmp_path):
    df = long_frame(20)
    df["time"] = df["time"].astype(object)
    df.loc[5, "time"] = "soon"
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"t\.csv, row 5 \(line 7\), series .*column 'time'"):
        build_cache(path, TableSpec(), tmp_path / "cache")


def test_bucket_stage_errors_name_the_series(tmp_path):
    df = long_frame(30)
    with pytest.raises(DataValidationError, match=r"duplicate entries for series 'p\d+'"):
        build_cache(write_partitioned(df, tmp_path / "data"), TableSpec(duplicates="error"),
                    tmp_path / "cache", num_buckets=2)


def test_ranks_read_only_their_own_series(tmp_path):
    _, stream = modules(long_frame(), tmp_path, normalize=False)
    cache = stream.cache
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            loader = stream.train_dataloader()
            dist = DistributedSampler(range(10), num_replicas=2, rank=rank)
            loader.batch_sampler.sampler = dist
            loader.batch_sampler.set_epoch(epoch)
            cache.read_log = []
            ids = {sid for batch in loader for sid in batch.series_ids}
            read = set(np.concatenate(cache.read_log).tolist())
            own = set(stream.datasets["train"].series[loader.batch_sampler.rank_items()].tolist())
            assert read == own  # nothing of the other rank's series is read
            assert ids == {cache.series_ids[i] for i in own}
            seen.append(own)
        assert not seen[0] & seen[1]
        assert seen[0] | seen[1] == set(stream.datasets["train"].series.tolist())


def test_dataloader_workers_give_the_same_batches(tmp_path):
    _, stream = modules(long_frame(60), tmp_path, normalize=False)
    single = list(stream.val_dataloader())
    stream.loader = type(stream.loader)(batch_size=8, eval_batch_size=8, bucketing=True,
                                        num_workers=2)
    assert_same_batches(single, stream.val_dataloader())


def test_restart_reads_no_rows_until_batches(tmp_path):
    df = long_frame(80)
    _, first = modules(df, tmp_path, normalize=True)
    assert len(list(first.cache.path.glob("lengths-*.npz"))) == 3  # one per split
    again = StreamingTableDataModule(
        tmp_path / "data", cache_dir=tmp_path / "cache", num_buckets=3, task=TASK,
        loader={"batch_size": 8},
    )
    again.prepare_data()
    again.setup()
    assert again.cache_report.reused
    assert again.cache.num_reads == 0  # index, normalizer and lengths from the cache
    assert again.normalizer == first.normalizer
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(again.datasets[split].series, first.datasets[split].series)
    assert_same_batches(first.train_dataloader(), again.train_dataloader())
    # another task measures its own lengths
    other = StreamingTableDataModule(
        tmp_path / "data", cache_dir=tmp_path / "cache", num_buckets=3,
        task={"kind": "forecast", "cutoff": 12.0}, loader={"batch_size": 8},
    )
    other.setup()
    assert other.cache.num_reads > 0
    assert len(list(first.cache.path.glob("lengths-*.npz"))) == 6


def test_empty_table_and_missing_column_are_errors(tmp_path):
    empty = long_frame(5).iloc[:0]
    (tmp_path / "e").mkdir()
    empty.to_parquet(tmp_path / "e" / "a.parquet")
    with pytest.raises(DataValidationError, match="has no rows"):
        build_cache(tmp_path / "e", TableSpec(), tmp_path / "cache")
    (tmp_path / "m").mkdir()
    long_frame(5).drop(columns="value").to_parquet(tmp_path / "m" / "a.parquet")
    with pytest.raises(DataValidationError, match=r"a\.parquet: missing required long-format"):
        build_cache(tmp_path / "m", TableSpec(format="long"), tmp_path / "cache")


def assert_same_splits(memory, stream) -> None:
    for split in ("train", "val", "test"):
        a, b = memory.datasets[split], stream.datasets[split]
        assert b.series_ids == a.series_ids
        np.testing.assert_array_equal(b.part_lengths, a.part_lengths)
        assert b.num_excluded == a.num_excluded
    assert stream.dropped_series() == memory.dropped_series()
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert_same_batches(getattr(memory, name)(), getattr(stream, name)(), atol=1e-6)


def test_interpolation_holds_out_the_same_entries(tmp_path):
    task = {"kind": "interpolation", "holdout_fraction": 0.3}
    memory, stream = modules(long_frame(seed=11), tmp_path, task=task)
    assert_same_splits(memory, stream)
    # the hold-out differs between splits and seeds: the draws are not all alike
    batch = next(iter(stream.val_dataloader()))
    assert batch.target.mask.any() and batch.context.mask.any()


def test_classification_equal_in_memory(tmp_path):
    df = long_frame(seed=12)
    df["y"] = (df["series_id"].str[1:].astype(int) % 3).astype(float)
    df.loc[df["series_id"] == "p0005", "y"] = np.nan  # an unknown label: excluded, counted
    task = {"kind": "classification", "cutoff": 24.0}
    memory, stream = modules(df, tmp_path, task=task, label_col="y")
    assert stream.num_classes == memory.num_classes == 3
    assert_same_splits(memory, stream)
    assert any("no_label" in reasons for reasons in stream.dropped_series().values())


def test_varied_training_cutoffs_equal_in_memory(tmp_path):
    task = {"kind": "forecast", "cutoff": 24.0, "train_cutoff_range": (6.0, 40.0)}
    memory, stream = modules(long_frame(seed=13), tmp_path, task=task, normalize=False)
    assert stream.datasets["train"].varies_by_epoch
    lengths = []
    for epoch in (0, 1, 3):
        la, lb = memory.train_dataloader(), stream.train_dataloader()
        la.batch_sampler.set_epoch(epoch)
        lb.batch_sampler.set_epoch(epoch)
        np.testing.assert_array_equal(
            stream.datasets["train"].part_lengths_at(epoch),
            memory.datasets["train"].part_lengths_at(epoch),
        )
        lengths.append(stream.datasets["train"].part_lengths_at(epoch))
        assert_same_batches(la, lb)
    assert not np.array_equal(lengths[0], lengths[1])  # the cutoffs do vary by epoch
    assert_same_batches(memory.val_dataloader(), stream.val_dataloader())


def test_varied_cutoffs_with_workers(tmp_path):
    task = {"kind": "forecast", "cutoff": 24.0, "train_cutoff_range": (6.0, 40.0)}
    _, stream = modules(long_frame(60, seed=14), tmp_path, task=task, normalize=False)
    loader = stream.train_dataloader()
    loader.batch_sampler.set_epoch(2)
    single = list(loader)
    stream.loader = type(stream.loader)(batch_size=8, eval_batch_size=8, bucketing=True,
                                        num_workers=2)
    loader = stream.train_dataloader()
    loader.batch_sampler.set_epoch(2)
    assert_same_batches(single, loader)


@pytest.mark.parametrize("tz", [None, "Europe/Paris"])
def test_datetime_times_equal_in_memory(tmp_path, tz):
    df = long_frame(seed=15)
    start = pd.Timestamp("2024-03-30 12:00", tz=tz)
    offsets = pd.to_timedelta(df["time"], unit="h")
    admit = pd.to_timedelta(df["series_id"].str[1:].astype(int) * 7, unit="h")
    df["time"] = start + admit + offsets
    memory, stream = modules(df, tmp_path)
    assert stream.time_axis == memory.time_axis
    assert stream.time_axis.kind == "datetime" and stream.time_axis.tz == tz
    assert_same_splits(memory, stream)


def test_timedelta_times_equal_in_memory(tmp_path):
    df = long_frame(seed=16)
    df["time"] = pd.to_timedelta(df["time"], unit="h")
    memory, stream = modules(df, tmp_path)
    assert stream.time_axis == memory.time_axis and stream.time_axis.kind == "timedelta"
    assert_same_splits(memory, stream)


def test_time_kinds_differing_between_files_are_an_error(tmp_path):
    df = long_frame(40)
    root = write_partitioned(df, tmp_path / "data", parts=2)
    second = root / "part=1" / "data.parquet"
    late = pd.read_parquet(second)
    late["time"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(late["time"], unit="h")
    late.to_parquet(second)
    with pytest.raises(DataValidationError, match=r"part=1.*row group 0, row 0.*column 'time': "
                       r"times are datetime but they are numeric from .*part=0"):
        build_cache(root, TableSpec(), tmp_path / "cache")


def test_split_column_equal_in_memory(tmp_path):
    df = long_frame(seed=17)
    number = df["series_id"].str[1:].astype(int)
    df["fold"] = np.where(number % 5 == 0, "val", np.where(number % 7 == 0, " Test", "train"))
    df.loc[df.sample(frac=0.3, random_state=0).index, "fold"] = None  # given on some rows only
    df.loc[df["series_id"] == "p0003", "fold"] = None  # in no split: left out
    memory, stream = modules(df, tmp_path, split_col="fold", static_cols=["age"])
    assert stream.splits == {k: sorted(v) for k, v in memory.splits.items()}
    assert "p0003" not in set().union(*stream.splits.values())
    assert_same_splits(memory, stream)


def test_split_column_errors_are_located(tmp_path):
    df = long_frame(40)
    df["fold"] = "train"
    bad = np.array_split(np.arange(len(df)), 2)[1][0] + 3  # file part=1, row 3
    df.loc[bad, "fold"] = "holdout"
    root = write_partitioned(df, tmp_path / "data", parts=2, group=1000)
    with pytest.raises(DataValidationError, match=r"part=1.*row group 0, row 3, series .*column "
                       r"'fold': split value 'holdout' is not one of"):
        build_cache(root, TableSpec(split_col="fold"), tmp_path / "cache")
    df.loc[bad, "fold"] = "val"  # now two splits for one series
    sid = df.loc[bad, "series_id"]
    root = write_partitioned(df, tmp_path / "data2", parts=2, group=1000)
    with pytest.raises(DataValidationError, match=rf"series bucket .*series '{sid}' has "
                       r"different values in split column 'fold'"):
        build_cache(root, TableSpec(split_col="fold"), tmp_path / "cache", num_buckets=2)


def test_explicit_splits_equal_in_memory(tmp_path):
    df = long_frame(seed=18)
    ids = sorted(df["series_id"].unique())
    splits = {"train": ids[10:70], "val": ids[70:90][::-1], "test": ids[:10]}
    memory, stream = modules(df, tmp_path, splits=splits)
    assert_same_splits(memory, stream)
    root = tmp_path / "data"
    unknown = StreamingTableDataModule(root, cache_dir=tmp_path / "cache", num_buckets=3,
                                       splits={"train": ids[:5] + ["nobody"]})
    with pytest.raises(DataValidationError, match=r"1 series id\(s\) not in the table.*'nobody'"):
        unknown.setup()


def test_same_metrics_after_training(tmp_path):
    import lightning as L
    import torch

    from tsode.models.baselines import GRUDelta

    df = long_frame(seed=19)
    task = {"kind": "forecast", "cutoff": 24.0, "train_cutoff_range": (12.0, 36.0)}
    memory, stream = modules(df, tmp_path, task=task, static_cols=["age"])
    results = []
    for dm in (memory, stream):
        torch.manual_seed(0)
        model = GRUDelta(num_channels=dm.num_channels, hidden_dim=8)
        trainer = L.Trainer(
            accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False,
            default_root_dir=tmp_path, deterministic=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, datamodule=dm)
            results.append(trainer.test(model, datamodule=dm, verbose=False)[0])
    assert results[0].keys() == results[1].keys() and "test/mse" in results[0]
    for key in results[0]:
        assert results[1][key] == pytest.approx(results[0][key], rel=1e-5), key


def test_forecaster_fit_streams_a_directory_as_in_memory(tmp_path):
    from tsode.api import Forecaster

    df = long_frame(seed=20)
    root = write_partitioned(df, tmp_path / "data")
    fits = {}
    for name, data, options in (
        ("memory", df, {}),
        ("directory", root, {}),  # a directory: streamed without asking
        ("glob", str(root / "part=*" / "*.parquet"), {"streaming": True,
                                                     "cache_dir": tmp_path / "own-cache"}),
    ):
        fc = Forecaster(
            "gru_dt", hidden_dim=8, tracking=False, work_dir=tmp_path / name, verbose=False,
            trainer_kwargs={"max_epochs": 2, "enable_progress_bar": False},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc.fit(data, cutoff=24.0, batch_size=8, static_cols=["age"], **options)
        fits[name] = fc
    assert not (tmp_path / "memory" / "series-cache").exists()
    assert any((tmp_path / "directory" / "series-cache").iterdir())
    assert any((tmp_path / "own-cache").iterdir())
    memory = fits["memory"]
    assert memory.fit_summary["epochs"] == 2 and memory.fit_summary["best_val_mse"] > 0
    for name in ("directory", "glob"):
        fc = fits[name]
        assert fc.fit_summary["num_series"] == memory.fit_summary["num_series"]
        assert fc.data.channels == memory.data.channels
        assert fc.fit_summary["best_val_mse"] == pytest.approx(
            memory.fit_summary["best_val_mse"], rel=1e-5
        )
    # the streamed fit predicts new tables like the in-memory one
    new = df[df["series_id"].isin(["p0001", "p0002"]) & (df["time"] <= 24)]
    a = memory.predict(new, horizon=6.0)
    b = fits["directory"].predict(new, horizon=6.0)
    pd.testing.assert_frame_equal(a, b, rtol=1e-4)


def test_forecaster_fit_streaming_refuses_a_frame(tmp_path):
    from tsode.api import Forecaster

    fc = Forecaster("gru_dt", tracking=False, work_dir=tmp_path, verbose=False)
    with pytest.raises(TypeError, match=r"streaming=True\) reads Parquet / CSV files"):
        fc.fit(long_frame(10), streaming=True)


def test_tsode_fit_with_the_streaming_data_module(tmp_path, monkeypatch):
    from tsode.cli import run

    monkeypatch.chdir(tmp_path)
    root = write_partitioned(long_frame(seed=21), tmp_path / "data")
    cli = run([
        "fit",
        "--model", "tsode.models.baselines.GRUDelta",
        "--model.init_args.hidden_dim", "8",
        "--data", "tsode.data.StreamingTableDataModule",
        "--data.init_args.data", str(root),
        "--data.init_args.cache_dir", str(tmp_path / "cache"),
        "--data.init_args.static_cols", "[age]",
        "--data.init_args.task.cutoff", "24.0",
        "--data.init_args.loader.batch_size", "8",
        "--trainer.fast_dev_run", "true",
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ])
    assert isinstance(cli.datamodule, StreamingTableDataModule)
    assert cli.trainer.state.finished
    assert cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 1
    assert cli.model.num_channels == 4
    assert np.isfinite(float(cli.trainer.callback_metrics["val/mse"]))
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("layout", ["shuffled", "by_series_and_time", "sorted", "ties"])
def test_sort_order_is_the_stable_lexicographic_order(layout):
    from tsode.data.series import _sort_order

    rng = np.random.default_rng(3)
    m = 20_000
    series = rng.integers(0, 300, m)
    times = rng.integers(0, 50, m) / 4.0 - 2.0  # negative times and many equal ones
    chans = rng.integers(0, 5, m)
    if layout == "ties":  # many duplicate (series, time, channel) entries
        series, times, chans = series % 3, times % 2, chans % 2
    if layout != "shuffled":
        order = np.lexsort((rng.random(m), times, series))  # channels in no order
        if layout == "sorted":
            order = np.lexsort((chans, times, series))
        series, times, chans = series[order], times[order], chans[order]
    expected = np.lexsort((chans, times, series))  # stable: equal keys in input order
    got = _sort_order(series, times, chans, int(series.max()) + 1, 5)
    np.testing.assert_array_equal(got, expected)


def test_series_moments_add_in_row_order():
    rng = np.random.default_rng(4)
    values = rng.normal(1e3, 7.0, size=(3000, 3)).astype(np.float32)
    values[rng.random(values.shape) < 0.6] = np.nan
    offsets = np.unique(np.r_[0, np.sort(rng.integers(0, 3000, 40)), 3000])
    count, mean, m2 = series_moments(values, offsets)
    for s in range(len(offsets) - 1):
        for c in range(3):
            seen = [float(v) for v in values[offsets[s]: offsets[s + 1], c] if not np.isnan(v)]
            total = 0.0
            for v in seen:
                total += v
            mu = total / len(seen) if seen else 0.0
            spread = 0.0
            for v in seen:
                spread += (v - mu) * (v - mu)
            assert (count[s, c], mean[s, c], m2[s, c]) == (len(seen), mu, spread)


def test_buckets_built_in_threads_give_the_same_cache(tmp_path):
    root = write_partitioned(long_frame(60, seed=22), tmp_path / "data")
    one, _ = build_cache(root, TableSpec(), tmp_path / "a", num_buckets=4, workers=1)
    two, _ = build_cache(root, TableSpec(), tmp_path / "b", num_buckets=4, workers=2)
    assert one.series_ids == two.series_ids
    for name in ("bucket", "row", "lengths", "time_offset"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
    np.testing.assert_array_equal(one.moments, two.moments)
    for b in range(4):
        for kind in ("times", "values"):
            np.testing.assert_array_equal(np.load(one.path / f"{kind}-{b}.npy"),
                                          np.load(two.path / f"{kind}-{b}.npy"))
    df = long_frame(60, seed=22)
    with pytest.raises(DataValidationError, match=r"series bucket \d of 4.*duplicate entries"):
        build_cache(write_partitioned(df, tmp_path / "dup"), TableSpec(duplicates="error"),
                    tmp_path / "c", num_buckets=4, workers=2)


def test_missing_ids_and_channels_are_located(tmp_path):
    df = long_frame(30)
    df["series_id"] = df["series_id"].astype(object)
    first = np.array_split(np.arange(len(df)), 2)[1][0]
    df.loc[first + 4, "series_id"] = None
    root = write_partitioned(df, tmp_path / "ids", parts=2, group=1000)
    with pytest.raises(DataValidationError, match=r"part=1.*row group 0, row 4, series nan, column "
                       r"'series_id': missing series id \(1 such rows\)"):
        build_cache(root, TableSpec(), tmp_path / "cache")
    df = long_frame(30)
    df.loc[[2, 9], "channel"] = None
    root = write_partitioned(df, tmp_path / "chans", parts=2, group=1000)
    with pytest.raises(DataValidationError, match=r"part=0.*row group 0, row 2, series 'p\d+', "
                       r"column 'channel': missing channel name \(2 such rows\)"):
        build_cache(root, TableSpec(), tmp_path / "cache")


def test_set_task_and_new_tables_as_in_memory(tmp_path):
    df = long_frame(seed=23)
    memory, stream = modules(df, tmp_path, static_cols=["age"])
    for dm in (memory, stream):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm.set_task(cutoff=12.0, horizon=6.0)
    assert stream.task == memory.task
    assert_same_splits(memory, stream)
    new = df[df["series_id"].isin(["p0003", "p0007", "p0011"])]
    assert_same_batches(memory.predict_dataloader_for(new, task="forecast"),
                        stream.predict_dataloader_for(new, task="forecast"), atol=1e-6)
    assert stream.fitted.channels == memory.fitted.channels
    assert stream.fitted.time_axis == memory.fitted.time_axis
    assert stream.summary.num_series == memory.summary.num_series
    assert stream.summary.observations_per_channel == memory.summary.observations_per_channel


def test_a_truncated_cache_file_is_an_error_naming_the_series(tmp_path):
    root = write_partitioned(long_frame(30), tmp_path / "data")
    cache, _ = build_cache(root, TableSpec(), tmp_path / "cache", num_buckets=1)
    last = int(np.argmax(cache.row + cache.lengths))  # the series whose rows end the file
    values = cache.path / "values-0.npy"
    os.truncate(values, values.stat().st_size - 4)
    cache.read(np.flatnonzero(np.arange(cache.num_series) != last))  # the others read
    with pytest.raises(DataValidationError, match=rf"bucket 0: series "
                       rf"{cache.series_ids[last]!r} reads \d+ bytes of \d+: the cache files "
                       r"are truncated"):
        cache.read([last])


def test_max_resident_mb_sets_the_bucket_count(tmp_path):
    from tsode.data.streaming import BASE_RESIDENT_MIB, BYTES_PER_BUCKET_ROW, buckets_for_budget

    # the estimate: fixed cost + bytes per row of the bucket(s) held at one time
    rows = 10 * 2**20 // BYTES_PER_BUCKET_ROW  # the rows of one bucket in 10 MiB
    assert buckets_for_budget(rows, BASE_RESIDENT_MIB + 10) == 1
    assert buckets_for_budget(rows + 1, BASE_RESIDENT_MIB + 10) == 2
    assert buckets_for_budget(50_000_000, 1024) == 33  # the example of docs/scale.md
    assert buckets_for_budget(rows - 1, BASE_RESIDENT_MIB + 10, workers=2) == 2  # half each
    with pytest.raises(ValueError, match="max_resident_mb=400 is below"):
        buckets_for_budget(1000, 400)

    df = long_frame(60)
    data = write_partitioned(df, tmp_path / "data")
    budget = BASE_RESIDENT_MIB + BYTES_PER_BUCKET_ROW / 2**20 * 500  # about 500 rows a bucket
    dm = StreamingTableDataModule(data, cache_dir=tmp_path / "cache", max_resident_mb=budget,
                                  task=TASK, loader={"batch_size": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup()
    assert dm.cache.meta["num_buckets"] == buckets_for_budget(len(df), budget) > 1
    # the same batches as with that bucket count given directly
    same = StreamingTableDataModule(data, cache_dir=tmp_path / "cache2",
                                    num_buckets=dm.cache.meta["num_buckets"], task=TASK,
                                    loader={"batch_size": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same.setup()
    assert_same_batches(dm.train_dataloader(), same.train_dataloader())
    with pytest.raises(ValueError, match="not both"):
        StreamingTableDataModule(data, num_buckets=2, max_resident_mb=2048)
