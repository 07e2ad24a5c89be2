"""Input validation: bad tables give located errors (or warnings), never silently wrong data."""

from __future__ import annotations

import gzip
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tsode.data import (
    DataValidationError,
    Normalizer,
    SeriesTable,
    TableDataModule,
    TableSpec,
    load_table,
    read_table,
    table_from_frame,
)


def _long(ids, times, channels, values) -> pd.DataFrame:
    if isinstance(channels, str):
        channels = [channels] * len(ids)
    return pd.DataFrame(
        {
            "series_id": pd.Series(ids, dtype=object),
            "time": pd.Series(times, dtype=object),
            "channel": pd.Series(channels, dtype=object),
            "value": values,
        }
    )


def _raises(match: str):
    return pytest.raises(DataValidationError, match=re.escape(match))


# ---------------------------------------------------------------- 1. one kind of time per column
def test_date_string_among_numeric_times_names_row_and_value() -> None:
    frame = _long([0, 0, 1, 1], [1.0, 2.0, "2024-01-01", 3.0], "a", [1.0, 2.0, 3.0, 4.0])
    with _raises(
        "<DataFrame>, row 2, series 1, column 'time': time '2024-01-01' is not a number, "
        "unlike row 0 (1.0): the time column mixes numbers (3 rows) with other values (1 rows"
    ):
        table_from_frame(frame, TableSpec())


def test_date_string_among_numeric_times_in_csv_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    rows = [f"{s},{t},a,1.0" for s in range(40) for t in range(3)]
    rows[61] = "20,2024-03-01 10:00,a,1.0"
    path.write_text("series_id,time,channel,value\n" + "\n".join(rows) + "\n")
    with _raises(
        f"{path}, row 61 (line 63), series 20, column 'time': time '2024-03-01 10:00' is not "
        "a number, unlike row 0 ('0')"
    ):
        load_table(path)


def test_number_among_date_strings_blames_the_number() -> None:
    frame = _long([0, 0, 0], ["2024-01-01", 5, "2024-01-03"], "a", [1.0, 2.0, 3.0])
    with _raises("row 1, series 0, column 'time': time 5 is a number, unlike row 0 ('2024-01-01')"):
        table_from_frame(frame, TableSpec())


def test_unparseable_time_string_names_row_and_value() -> None:
    frame = _long([0, 0, 0], ["2024-01-01", "2024-01-02", "soon"], "a", [1.0, 2.0, 3.0])
    with _raises(
        "row 2, series 0, column 'time': time 'soon' is not a number, datetime or timedelta "
        "(1 such rows)"
    ):
        table_from_frame(frame, TableSpec())


def test_uniform_time_columns_still_parse(tmp_path: Path) -> None:
    numeric = _long([0, 0], ["1.5", "3"], "a", [1.0, 2.0])
    assert table_from_frame(numeric, TableSpec()).time_axis.kind == "numeric"
    dates = _long([0, 0], ["2024-01-01 00:00", "2024-01-01 06:00"], "a", [1.0, 2.0])
    table = table_from_frame(dates, TableSpec())
    assert table.time_axis.kind == "datetime" and table.times.tolist() == [0.0, 6.0]
    deltas = _long([0, 0], ["1 days", "1 days 12:00:00"], "a", [1.0, 2.0])
    assert table_from_frame(deltas, TableSpec()).time_axis.kind == "timedelta"


# ---------------------------------------------------------------- 6. mixed UTC offsets
def test_mixed_utc_offsets_blame_the_first_differing_value() -> None:
    times = ["2024-01-01T00:00+00:00", "2024-01-01T01:00+00:00", "2024-01-01T02:00+02:00"]
    frame = _long([7, 7, 7], times, "a", [1.0, 2.0, 3.0])
    with _raises(
        "<DataFrame>, row 2, series 7, column 'time': time '2024-01-01T02:00+02:00' has UTC "
        "offset +02:00 but the first time (row 0, '2024-01-01T00:00+00:00') has UTC offset "
        "+00:00; datetimes of one column must share one offset. Convert the column to UTC first, "
        "e.g. df['time'] = pd.to_datetime(df['time'], utc=True, format='ISO8601')"
    ):
        table_from_frame(frame, TableSpec())


def test_naive_and_aware_datetimes_are_named() -> None:
    frame = _long([1, 1], ["2024-01-01T00:00", "2024-01-01T01:00-05:00"], "a", [1.0, 2.0])
    with _raises(
        "row 1, series 1, column 'time': time '2024-01-01T01:00-05:00' has UTC offset -05:00 "
        "but the first time (row 0, '2024-01-01T00:00') has no UTC offset (naive)"
    ):
        table_from_frame(frame, TableSpec())


def test_timestamp_objects_in_two_time_zones_are_named() -> None:
    stamps = [
        pd.Timestamp("2024-01-01", tz="UTC"),
        pd.Timestamp("2024-01-01 05:00", tz="Asia/Tokyo"),
    ]
    frame = _long([1, 1], stamps, "a", [1.0, 2.0])
    with _raises(
        "row 1, series 1, column 'time': time Timestamp('2024-01-01 05:00:00+0900', "
        "tz='Asia/Tokyo') has UTC offset +09:00 but the first time (row 0"
    ):
        table_from_frame(frame, TableSpec())


def test_one_shared_offset_still_parses() -> None:
    frame = _long([1, 1], ["2024-01-01T00:00+02:00", "2024-01-01T03:00+02:00"], "a", [1.0, 2.0])
    table = table_from_frame(frame, TableSpec())
    assert table.time_axis.kind == "datetime" and table.times.tolist() == [0.0, 3.0]


# ---------------------------------------------------------------- 2. channel labels
def test_channel_labels_colliding_as_text_are_an_error() -> None:
    frame = _long([0, 0], [1.0, 1.0], [1, "1"], [1.0, 3.0])
    with _raises(
        "<DataFrame>: channel names 1 (int, row 0) and '1' (str, row 1) in column 'channel' are "
        "different values but the same after conversion to text ('1'), so tsode would merge them"
    ):
        table_from_frame(frame, TableSpec())


def test_wide_columns_colliding_as_text_are_an_error() -> None:
    frame = pd.DataFrame({"series_id": [0, 0], "time": [0.0, 1.0], 1: [1.0, 2.0], "1": [5.0, 6.0]})
    with _raises(
        "<DataFrame>: value columns 1 (int) and '1' (str) are the same channel name '1' as text"
    ):
        table_from_frame(frame, TableSpec(format="wide"))


def test_fixed_channel_list_colliding_as_text_is_an_error() -> None:
    frame = _long([0, 0], [0.0, 1.0], ["a", "a"], [1.0, 2.0])
    with _raises("channels 'a' (str) and 'a' (str) are the same channel name 'a'"):
        table_from_frame(frame, TableSpec(), channels=["a", "a"])


def test_distinct_text_channel_labels_stay_distinct() -> None:
    frame = _long([0, 0], [1.0, 1.0], [1, 1.5], [1.0, 3.0])
    table = table_from_frame(frame, TableSpec())
    assert table.channels == ["1", "1.5"]
    np.testing.assert_array_equal(table.values, [[1.0, 3.0]])  # not averaged


def test_wide_integer_column_labels_are_read() -> None:
    frame = pd.DataFrame({"series_id": [0, 0], "time": [0.0, 1.0], 1: [1.0, 2.0], 2: [5.0, 6.0]})
    table = table_from_frame(frame, TableSpec(format="wide"))
    assert table.channels == ["1", "2"]
    np.testing.assert_array_equal(table.values, [[1.0, 5.0], [2.0, 6.0]])


# ---------------------------------------------------------------- 3. series ids
def test_series_ids_colliding_as_text_are_an_error() -> None:
    frame = _long([1, 1, "1"], [0.0, 1.0, 0.0], "a", [1.0, 2.0, 3.0])
    with _raises(
        "<DataFrame>: series ids 1 (int, row 0) and '1' (str, row 2) in column 'series_id' are "
        "different values but the same after conversion to text ('1'), so tsode would merge them. "
        "Give the column one type, e.g. df['series_id'] = df['series_id'].astype(str)"
    ):
        table_from_frame(frame, TableSpec())


def test_series_ids_from_two_csv_files_with_different_types(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("series_id,time,channel,value\n1,0,a,1\n1,1,a,2\n")
    (tmp_path / "b.csv").write_text("series_id,time,channel,value\nx,0,a,1\n1,1,a,2\n")
    frame = pd.concat([pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")])
    frame["series_id"] = frame["series_id"].astype(object)
    with _raises("series ids 1 (int, row 0) and '1' (str, row 3)"):
        table_from_frame(frame, TableSpec())


def test_series_ids_equal_to_pandas_are_an_error() -> None:
    frame = _long([1, 1, True], [0.0, 1.0, 0.0], "a", [1.0, 2.0, 3.0])
    with _raises(
        "series ids 1 (int, row 0) and True (bool, row 2) in column 'series_id' are "
        "different values but equal to pandas"
    ):
        table_from_frame(frame, TableSpec())


def test_mixed_type_ids_that_do_not_collide_are_kept() -> None:
    frame = _long([1, 1, "x"], [0.0, 1.0, 0.0], "a", [1.0, 2.0, 3.0])
    assert table_from_frame(frame, TableSpec()).series_ids == [1, "x"]


# ---------------------------------------------------------------- 4. float32 range
@pytest.mark.parametrize("bad", [1e39, -1e39, np.inf, "inf"])
def test_long_values_beyond_float32_are_an_error(bad) -> None:
    frame = _long(["s1", "s1", "s2"], [0.0, 1.0, 0.0], ["a", "b", "b"], [1.0, 2.0, 3.0])
    frame["value"] = frame["value"].astype(object)
    frame.loc[2, "value"] = bad
    shown = repr(bad)
    with _raises(
        f"<DataFrame>, row 2, series 's2', column 'value', channel 'b': value {shown} is "
        "non-finite or beyond float32 range (|value| <= 3.403e+38; tsode computes in float32) "
        "(1 such rows); use NaN or an empty cell for a missing value, or rescale the column"
    ):
        table_from_frame(frame, TableSpec())


def test_wide_and_static_values_beyond_float32_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("series_id,time,a,age\n1,0,1.0,50\n1,1,,50\n2,0,2e39,60\n")
    with _raises(f"{path}, row 2 (line 4), series 2, column 'a': value 2e+39 is non-finite"):
        load_table(path, TableSpec(static_cols=["age"]))
    path.write_text("series_id,time,a,age\n1,0,1.0,50\n1,1,,50\n2,0,2.0,1e40\n")
    with _raises(f"{path}, row 2 (line 4), series 2, column 'age': value 1e+40 is non-finite"):
        load_table(path, TableSpec(static_cols=["age"]))


def test_missing_values_stay_allowed() -> None:
    frame = _long([0, 0], [0.0, 1.0], ["a", "a"], [np.nan, 2.0])
    table = table_from_frame(frame, TableSpec())
    assert table.info["missing_values_skipped"] == 1 and table.values.tolist() == [[2.0]]


def test_times_beyond_float32_are_an_error() -> None:
    frame = _long([0, 0], [0.0, 1e39], ["a", "a"], [1.0, 2.0])
    with _raises("row 1, series 0, column 'time': time 1e+39 is 1e+39 hours, beyond float32 range"):
        table_from_frame(frame, TableSpec(max_span_hours=None))


def test_series_table_refuses_values_beyond_float32() -> None:
    with _raises("<table>: series 'x', channel 'a', time 1 h: value is non-finite or beyond"):
        SeriesTable(["x"], [0, 2], [0.0, 1.0], [[1.0], [1e39]], ["a"], [0.0])
    with _raises("<table>, row 5, series 'x', channel 'a': value 1e+39 is non-finite"):
        SeriesTable.from_long(["x"], [0], [0.0], [0], [1e39], ["a"], row_numbers=np.array([5]))


def test_overflow_after_normalization_names_series_channel_and_value() -> None:
    table = SeriesTable(["x", "y"], [0, 1, 2], [0.0, 0.0], [[1.0], [3e38]], ["a"], [0.0, 2.0])
    normalizer = Normalizer(["a"], [0.0], [1e-3])
    with _raises(
        "<table>: series 'y', channel 'a', time 2 h: value 3e+38 overflows float32 after "
        "normalization with the channel's training mean 0 and std 0.001 (1 such entries)"
    ):
        table.normalized(normalizer)
    ok, _ = table.normalized(Normalizer(["a"], [0.0], [1.0]))
    assert np.isfinite(ok).all()


# ---------------------------------------------------------------- 5. unobserved channels
def _wide_for_module(empty: bool) -> pd.DataFrame:
    rows = [(s, t, float(s + t), np.nan if empty else float(t % 2)) for s in range(10) for t in range(4)]
    return pd.DataFrame(rows, columns=["series_id", "time", "a", "b"])


def test_channel_without_observation_warns_at_fit(caplog: pytest.LogCaptureFixture) -> None:
    dm = TableDataModule(_wide_for_module(empty=True), split_fractions=(0.6, 0.2, 0.2))
    with caplog.at_level(logging.WARNING, logger="tsode.data"):
        with pytest.warns(UserWarning) as record:
            dm.setup("fit")
    expected = "<DataFrame>: channel(s) ['b'] have no observation in the training split (6 series)"
    assert any(str(w.message).startswith(expected) for w in record)
    assert "(['b'] in no series at all)" in str(record[0].message)
    assert any(expected in r.getMessage() for r in caplog.records)


def test_fixed_channel_absent_from_table_warns() -> None:
    frame = _wide_for_module(empty=False).melt(["series_id", "time"], var_name="channel")
    dm = TableDataModule(frame, channels=["a", "b", "c"], split_fractions=(0.6, 0.2, 0.2))
    with pytest.warns(UserWarning, match=re.escape("channel(s) ['c'] have no observation")):
        dm.setup("fit")


def test_fully_observed_channels_do_not_warn() -> None:
    dm = TableDataModule(_wide_for_module(empty=False), split_fractions=(0.6, 0.2, 0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        dm.setup("fit")
    assert dm.channels == ["a", "b"]


# ---------------------------------------------------------------- 7. encodings
def _latin1_csv(path: Path) -> Path:
    path.write_bytes("series_id,time,channel,value\n1,0,café,1.5\n1,1,café,2.5\n".encode("latin-1"))
    return path


def test_latin1_csv_error_names_file_byte_position_and_option(tmp_path: Path) -> None:
    path = _latin1_csv(tmp_path / "latin.csv")
    with _raises(
        f"{path}: cannot be read as CSV in encoding 'utf-8': byte 0xe9 at byte position 36 "
        "(line 2) is not valid utf-8 (invalid continuation byte). Pass the file's encoding, e.g. "
        "encoding='latin-1'"
    ):
        load_table(path)


def test_latin1_gzip_error_names_position(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(_latin1_csv(tmp_path / "x.csv").read_bytes())
    with _raises("byte 0xe9 at byte position 36 (line 2)"):
        read_table(path)


def test_encoding_option_reads_latin1(tmp_path: Path) -> None:
    path = _latin1_csv(tmp_path / "latin.csv")
    table = load_table(path, TableSpec(encoding="latin-1"))
    assert table.channels == ["café"]
    dm = TableDataModule(path, encoding="latin-1")
    assert dm.load_table().channels == ["café"]
    assert dm.spec.state_dict()["encoding"] == "latin-1"
    assert dm.table_from(path).channels == ["café"]


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("unknown encoding 'latin-99'")):
        TableSpec(encoding="latin-99")
