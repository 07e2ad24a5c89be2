"""Table ingestion and validation: formats, time types, policies, located errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tsode.data import (
    DataValidationError,
    LoaderConfig,
    TableDataModule,
    TableSpec,
    TaskConfig,
    batch_to_frame,
    load_table,
    table_from_frame,
)


def _long_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pid": ["p1", "p1", "p1", "p2", "p2", "p3", "p3", "p3"],
            "t": [0.0, 1.5, 3.0, 0.0, 2.0, 1.0, 1.0, 4.0],
            "var": ["hr", "hr", "bp", "hr", "bp", "hr", "bp", "hr"],
            "val": [60.0, 62.0, 120.0, 70.0, 110.0, 80.0, 130.0, 82.0],
        }
    )


SPEC = TableSpec(id_col="pid", time_col="t", channel_col="var", value_col="val")


def test_long_table_basic() -> None:
    table = table_from_frame(_long_frame(), SPEC)
    assert table.series_ids == ["p1", "p2", "p3"]
    assert table.channels == ["bp", "hr"]
    np.testing.assert_array_equal(table.lengths, [3, 2, 2])
    t, v = table.series(2)
    np.testing.assert_array_equal(t, [0.0, 3.0])  # re-based to series start 1.0
    assert table.time_offset[2] == 1.0
    np.testing.assert_array_equal(v[0], [130.0, 80.0])
    assert np.isnan(v[1, 0]) and v[1, 1] == 82.0


def test_wide_table_with_missing_cells_static_and_labels() -> None:
    df = pd.DataFrame(
        {
            "series_id": [1, 1, 2, 2, 2],
            "time": [0.0, 1.0, 0.0, 0.5, 1.0],
            "a": [1.0, np.nan, 3.0, np.nan, 5.0],
            "b": [np.nan, 2.0, 4.0, np.nan, np.nan],
            "age": [50, 50, 60, 60, 60],
            "died": [0, 0, 1, np.nan, 1],
        }
    )
    table = table_from_frame(df, TableSpec(static_cols=["age"], label_col="died"))
    assert table.channels == ["a", "b"]
    np.testing.assert_array_equal(table.lengths, [2, 2])  # the all-missing row is no time point
    assert table.info["rows_without_observation"] == 1
    np.testing.assert_array_equal(table.static[:, 0], [50, 60])
    np.testing.assert_array_equal(table.labels, [0, 1])
    back = table.to_long_frame().sort_values(["series_id", "time", "channel"])
    assert len(back) == int(df[["a", "b"]].notna().sum().sum())


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_files_round_trip(tmp_path, fmt: str) -> None:
    df = _long_frame()
    path = tmp_path / f"obs.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    table = load_table(path, SPEC)
    assert table.info["input_rows"] == len(df)
    assert table.mask.sum() == len(df)


def test_time_types_convert_to_hours() -> None:
    base = _long_frame()
    minutes = base.assign(t=base.t * 60)
    t_min = table_from_frame(minutes, TableSpec(**{**SPEC.state_dict(), "time_unit": "min"}))
    t_h = table_from_frame(base, SPEC)
    np.testing.assert_allclose(t_min.times, t_h.times)
    dt = base.assign(t=pd.Timestamp("2020-03-01 08:00", tz="UTC") + pd.to_timedelta(base.t, "h"))
    t_dt = table_from_frame(dt, SPEC)
    np.testing.assert_allclose(t_dt.times, t_h.times)
    assert t_dt.time_axis.kind == "datetime"
    td = base.assign(t=pd.to_timedelta(base.t, "h"))
    t_td = table_from_frame(td, SPEC)
    np.testing.assert_allclose(t_td.times, t_h.times)
    strings = base.assign(t=dt.t.dt.strftime("%Y-%m-%d %H:%M:%S"))
    t_str = table_from_frame(strings, SPEC)
    np.testing.assert_allclose(t_str.times, t_h.times)
    back = t_dt.to_long_frame("pid", "t", "var", "val")
    assert set(back.t) == set(dt.t.dt.tz_localize(None)) or set(back.t) == set(dt.t)


def test_unsorted_rows_are_sorted_and_counted() -> None:
    df = _long_frame().sample(frac=1.0, random_state=0)
    table = table_from_frame(df, SPEC)
    ref = table_from_frame(_long_frame(), SPEC)
    assert table.info["input_sorted"] is False
    np.testing.assert_array_equal(table.times, ref.times)
    np.testing.assert_array_equal(table.values, ref.values)


def test_duplicates_mean_or_error() -> None:
    df = pd.concat([_long_frame(), _long_frame().iloc[[0]].assign(val=64.0)], ignore_index=True)
    table = table_from_frame(df, SPEC)
    assert table.info["duplicate_entries_merged"] == 1
    assert table.series(0)[1][0, 1] == pytest.approx(62.0)
    spec = TableSpec(**{**SPEC.state_dict(), "duplicates": "error"})
    with pytest.raises(DataValidationError, match=r"'p1'.*'hr'.*rows 0 and 8"):
        table_from_frame(df, spec)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.drop(columns="t"), r"missing required id/time column.*\['t'\]"),
        (lambda d: d.drop(columns="val"), r"missing required long-format column.*'val'"),
        (
            lambda d: d.assign(t=d.t.astype(object).where(d.index != 4, "soon")),
            r"row 4.*'p2'.*'t'.*'soon'",
        ),
        (lambda d: d.assign(t=d.t.where(d.index != 2, np.inf)), r"row 2.*'p1'.*'t'.*non-finite"),
        (lambda d: d.assign(t=d.t.where(d.index != 5, np.nan)), r"row 5.*'p3'.*'t'.*non-finite"),
        (
            lambda d: d.assign(val=d.val.where(d.index != 6, -np.inf)),
            r"row 6.*'p3'.*'val'.*non-finite",
        ),
        (
            lambda d: d.assign(val=d.val.astype(object).where(d.index != 1, "high")),
            r"row 1.*'p1'.*'val'.*'high'",
        ),
        (
            lambda d: d.assign(pid=d.pid.where(d.index != 3, None)),
            r"row 3.*'pid'.*missing series id",
        ),
        (
            lambda d: d.assign(var=d["var"].where(d.index != 7, None)),
            r"row 7.*'p3'.*'var'.*missing channel",
        ),
    ],
)
def test_validation_errors_are_located(mutate, pattern: str) -> None:
    with pytest.raises(DataValidationError, match=pattern):
        table_from_frame(mutate(_long_frame()), SPEC, source="obs.csv")


def test_csv_errors_name_file_and_line(tmp_path) -> None:
    df = _long_frame()
    df.loc[4, "val"] = np.inf
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"bad\.csv, row 4 \(line 6\), series 'p2'"):
        load_table(path, SPEC)


def test_negative_times_and_implausible_spans() -> None:
    df = _long_frame()
    df.loc[3, "t"] = -2.0
    absolute = TableSpec(**{**SPEC.state_dict(), "time_origin": "absolute"})
    with pytest.raises(DataValidationError, match=r"row 3.*'p2'.*negative time"):
        table_from_frame(df, absolute)
    assert table_from_frame(df, SPEC).time_offset[1] == -2.0  # fine relative to series start
    big = _long_frame()
    big.loc[7, "t"] = 1.7e9  # e.g. epoch seconds read as hours
    with pytest.raises(DataValidationError, match=r"series 'p3' spans.*time_unit"):
        table_from_frame(big, SPEC)


def test_conflicting_static_values() -> None:
    df = _long_frame().assign(age=[1, 1, 2, 5, 5, 7, 7, 7])
    with pytest.raises(DataValidationError, match=r"series 'p1'.*conflicting.*'age'"):
        table_from_frame(df, TableSpec(**{**SPEC.state_dict(), "static_cols": ["age"]}))


def test_short_and_empty_series_dropped_and_counted() -> None:
    df = _long_frame()
    extra = pd.DataFrame(
        {
            "pid": ["p4", "p5", "p5"],
            "t": [0.0, 0.0, 1.0],
            "var": ["hr"] * 3,
            "val": [1.0, np.nan, np.nan],
        }
    )
    df = pd.concat([df] + [df.assign(pid=df.pid + f"_{k}") for k in range(3)] + [extra])
    dm = TableDataModule(
        df, id_col="pid", time_col="t", channel_col="var", value_col="val", task="interpolation"
    )
    dm.setup()
    counts = dm.summary.counts
    assert counts["series_without_observation"] == 1  # p5 has only missing values
    assert counts["missing_values_skipped"] == 2
    assert counts["series_dropped_too_few_time_points"] == 2  # p4 (one point) and p5
    assert "p4" not in dm.table.series_ids and dm.summary.num_series == 12


def test_predict_on_new_table_and_unknown_channels() -> None:
    df = _long_frame()
    df = pd.concat([df.assign(pid=df.pid + f"_{k}") for k in range(6)], ignore_index=True)
    dm = TableDataModule(
        df,
        id_col="pid",
        time_col="t",
        channel_col="var",
        value_col="val",
        task=TaskConfig(cutoff_fraction=0.5),
    )
    dm.setup()
    new = _long_frame().iloc[:5]
    batch = next(iter(dm.predict_dataloader_for(new)))
    assert batch.series_ids == ["p1", "p2"] and batch.channels == dm.channels
    assert (batch.target.lengths == 0).all()
    out = batch_to_frame(batch, "context", normalizer=dm.normalizer, time_axis=dm.time_axis)
    out = out.sort_values(["series_id", "time", "channel"]).reset_index(drop=True)
    ref = new.sort_values(["pid", "t", "var"]).reset_index(drop=True)
    np.testing.assert_allclose(out.value, ref.val, rtol=1e-6)
    np.testing.assert_allclose(out.time, ref.t, atol=1e-6)
    bad = new.assign(var=["hr", "hr", "spo2", "hr", "bp"])
    with pytest.raises(DataValidationError, match=r"row 2.*'p1'.*unknown channel.*'spo2'"):
        dm.table_from(bad)
    wide_dm = TableDataModule(
        pd.DataFrame(
            {"series_id": [1, 1, 2, 2, 3, 3, 4, 4], "time": [0, 1] * 4, "a": np.arange(8.0)}
        ),
        task=TaskConfig(cutoff_fraction=0.5),
    )
    wide_dm.setup()
    with pytest.raises(DataValidationError, match=r"unknown channel column.*\['b'\]"):
        wide_dm.table_from(pd.DataFrame({"series_id": [1], "time": [0.0], "a": [1.0], "b": [2.0]}))


def test_static_and_labels_reach_the_batch() -> None:
    rng = np.random.default_rng(0)
    frames = []
    for s in range(12):
        n = 6
        frames.append(
            pd.DataFrame(
                {
                    "series_id": s,
                    "time": np.arange(n) * 0.5,
                    "x": rng.normal(size=n),
                    "age": 40 + s,
                    "y": s % 2,
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    dm = TableDataModule(df, static_cols=["age"], label_col="y", task=TaskConfig(cutoff=1.2), loader=LoaderConfig(batch_size=4))
    dm.setup()
    assert dm.num_static == 1 and dm.num_channels == 1
    for batch in dm.train_dataloader():
        ids = torch.tensor(batch.series_ids, dtype=torch.float32)
        np.testing.assert_allclose(batch.labels.numpy(), (ids % 2).numpy())
        ages = dm.static_normalizer.inverse(batch.static.double().numpy())
        np.testing.assert_allclose(ages[:, 0], 40 + ids.numpy(), rtol=1e-6)
        assert (batch.context.times[batch.context.time_mask] <= 1.2).all()


def test_timezone_survives_the_round_trip() -> None:
    df = pd.DataFrame(
        {
            "series_id": np.repeat([1, 2, 3, 4, 5], 3),
            "time": pd.Timestamp("2024-03-30 23:00", tz="Europe/Berlin")
            + pd.to_timedelta(np.tile([0, 1.5, 3.0], 5), unit="h"),  # crosses the DST switch
            "x": np.arange(15.0),
        }
    )
    dm = TableDataModule(df, task=TaskConfig(cutoff=1.0))
    dm.setup()
    batch = next(iter(dm.predict_dataloader_for(df)))
    out = batch_to_frame(batch, "context", normalizer=dm.normalizer, time_axis=dm.time_axis)
    out = out.sort_values(["series_id", "time"]).reset_index(drop=True)
    assert str(out.time.dt.tz) == "Europe/Berlin"
    assert (out.time == df.time).all()
    np.testing.assert_array_equal(dm.table.series(0)[0], [0.0, 1.5, 3.0])  # true elapsed hours


def test_unknown_channel_errors_are_located() -> None:
    """Unknown channels at predict time name the source, series and row/time."""
    wide = pd.DataFrame({"series_id": [1, 1, 2, 2], "time": [0.0, 1.0] * 2, "a": np.arange(4.0)})
    dm = TableDataModule(wide, task=TaskConfig(cutoff_fraction=0.5), split_fractions=(1.0, 0.0, 0.0))
    dm.setup()
    new = pd.DataFrame({"series_id": [7, 8], "time": [0.0, 2.0], "a": [1.0, 2.0], "b": [None, 3.0]})
    with pytest.raises(DataValidationError, match=r"row 1, series 8, column 'b'.*unknown channel"):
        dm.table_from(new)
    # a table validated on its own, then handed to the fitted module
    other = load_table(new.rename(columns={"a": "x"}).drop(columns="b"))
    with pytest.raises(
        DataValidationError, match=r"<DataFrame>: unknown channels \['x'\].*series 7 at time 0 h"
    ):
        dm.dataset_for(other)


def test_error_values_are_shown_plainly() -> None:
    df = _long_frame().assign(t=lambda d: d.t.where(d.index != 2, np.inf))
    with pytest.raises(DataValidationError) as info:
        table_from_frame(df, SPEC, source="obs.csv")
    assert "non-finite time inf" in str(info.value) and "np.float64" not in str(info.value)


def test_wide_format_custom_columns_and_located_cell_errors(tmp_path) -> None:
    df = pd.DataFrame(
        {
            "pid": ["a", "a", "b", "b"],
            "stamp": pd.to_timedelta([0, 90, 0, 30], unit="min"),
            "HR": [60.0, np.nan, 70.0, 72.0],
            "SpO2": [np.nan, 97.0, 95.0, np.nan],
            "note": ["x", "y", "z", "w"],  # not a channel: excluded by value_cols
        }
    )
    spec = TableSpec(format="wide", id_col="pid", time_col="stamp", value_cols=["HR", "SpO2"])
    path = tmp_path / "wide.parquet"
    df.to_parquet(path)
    for source in (df, path):
        table = load_table(source, spec)
        assert table.channels == ["HR", "SpO2"] and table.time_axis.kind == "timedelta"
        np.testing.assert_allclose(table.series(0)[0], [0.0, 1.5])  # minutes -> hours
        assert int(table.mask.sum()) == 5
    # without value_cols every other column is a channel: the text column is located
    with pytest.raises(DataValidationError, match=r"row 0, series 'a', column 'note'.*'x'"):
        load_table(df, TableSpec(id_col="pid", time_col="stamp"))


def test_nonsensical_cutoff_is_rejected() -> None:
    df = pd.concat([_long_frame().assign(pid=lambda d, k=k: d.pid + f"_{k}") for k in range(4)])
    names = {"id_col": "pid", "time_col": "t", "channel_col": "var", "value_col": "val"}
    for cutoff in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cutoff must be a finite number of hours >= 0"):
            TableDataModule(df, task=TaskConfig(cutoff=cutoff), **names)
    dm = TableDataModule(df, cutoff=48.0, **names)  # after every series ends: nothing to predict
    with pytest.raises(
        DataValidationError, match=r"forecast \(cutoff 48 h\) leaves no series.*spans 2-3 h"
    ):
        dm.setup()


def test_summary_counts_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    df = pd.concat([_long_frame().assign(pid=lambda d, k=k: d.pid + f"_{k}") for k in range(4)])
    df = pd.concat([df, df.iloc[[0]]])  # one duplicate entry
    dm = TableDataModule(df, id_col="pid", time_col="t", channel_col="var", value_col="val")
    with caplog.at_level("INFO", logger="tsode.data"):
        dm.setup()
    summary = dm.summary
    assert summary.num_series == 12
    assert summary.counts["duplicate_entries_merged"] == 1
    record = next(r for r in caplog.records if "TableDataModule summary" in r.getMessage())
    text = record.getMessage()
    assert "duplicate_entries_merged" in text and "hr" in text and "bp" in text
    info = summary.to_dict()
    assert info["num_series"] == 12 and set(info) >= {"counts"}


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("ragged.csv", "series_id,time,channel,value\n1,0,a,1\n1,1,a,2,9\n",
         r"ragged\.csv: cannot be read as CSV: .*line 3"),
        ("empty.csv", "", r"empty\.csv: cannot be read as CSV"),
        ("broken.parquet", "not parquet", r"broken\.parquet: cannot be read as Parquet"),
    ],
)
def test_unreadable_files_are_named(tmp_path, name: str, content: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataValidationError, match=pattern):
        load_table(path)
