"""Table ingestion: long or wide DataFrames / CSV / Parquet -> validated ``SeriesTable``.

Formats (column names configurable through :class:`TableSpec`):

* **long**: one row per observation ``(series id, time, channel, value)``.
* **wide**: one row per time point ``(series id, time, <one column per channel>)``; empty cells
  are missing observations.

Optional static covariate columns and a label column hold one value per series (repeated or
given once on any of its rows; conflicting values are an error).

Time columns may be numeric (unit ``time_unit``: s, min, h, d), datetime (tz-aware or not) or
timedelta; strings are parsed as numbers, else datetimes, else timedeltas. Everything is
converted to float **hours**.

Validation policy (every error names the source, series id, row and column):

* missing required columns, non-numeric or non-finite times, non-finite or non-numeric
  values, null series ids, conflicting static/label values -> ``DataValidationError``;
* a missing value (empty cell / NaN) is simply not an observation (counted);
* duplicate (series, time, channel) entries -> averaged (``duplicates="mean"``, counted) or
  an error (``duplicates="error"``);
* unsorted rows are sorted (counted, never rejected);
* series with no observation or fewer than ``min_time_points`` time points are dropped by the
  DataModule (counted in the summary);
* negative times with ``time_origin="absolute"`` and series spans longer than
  ``max_span_hours`` (usually a wrong ``time_unit``) -> ``DataValidationError``;
* at predict time, channels the model was not fitted on -> ``DataValidationError``.

Why one long module: reading, format detection, time conversion and the located checks above
are one pipeline over the same frame and :class:`TableSpec`; each error names the row it
found, which needs the row bookkeeping all of them share.
"""

from __future__ import annotations

import codecs
import gzip
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsode.data.series import TIME_ORIGINS, DataValidationError, SeriesTable, show
from tsode.data.timeaxis import TimeAxis, unit_to_hours

TableSource = pd.DataFrame | str | os.PathLike

#: largest magnitude a value or time may have: tsode computes in float32
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class TableSpec:
    """How to read a table (column names, format, units, policies).

    Attributes:
        format: ``"long"``, ``"wide"`` or ``"auto"`` (long if the channel column exists).
        id_col / time_col: series identifier and time columns.
        channel_col / value_col: long format variable-name and value columns.
        value_cols: wide format channel columns (default: every column that is not id, time,
            static or label).
        static_cols: per-series static covariate columns (numeric).
        label_col: per-series label column (numeric, e.g. 0/1), or None.
        time_unit: unit of numeric times (``"s"``, ``"min"``, ``"h"``, ``"d"`` or hours per unit).
        time_origin: ``"series_start"`` (re-base each series to its first time) or ``"absolute"``.
        duplicates: ``"mean"`` or ``"error"`` for repeated (series, time, channel) entries.
        max_span_hours: largest plausible series span in hours (None: unchecked).
        encoding: text encoding of CSV/TSV files (default UTF-8), e.g. ``"latin-1"``.
        split_col: column naming each series' split (``train`` / ``val`` / ``test``), or None;
            never a channel (see :func:`splits_from_column`).
    """

    format: str = "auto"
    id_col: str = "series_id"
    time_col: str = "time"
    channel_col: str = "channel"
    value_col: str = "value"
    value_cols: list[str] | None = None
    static_cols: list[str] = field(default_factory=list)
    label_col: str | None = None
    time_unit: str | float = "h"
    time_origin: str = "series_start"
    duplicates: str = "mean"
    max_span_hours: float | None = 24.0 * 365 * 100
    encoding: str | None = None
    split_col: str | None = None

    def __post_init__(self) -> None:
        if self.format not in ("auto", "long", "wide"):
            raise ValueError(f"format must be 'auto', 'long' or 'wide', got {self.format!r}")
        if self.time_origin not in TIME_ORIGINS:
            raise ValueError(f"time_origin must be one of {TIME_ORIGINS}, got {self.time_origin!r}")
        if self.duplicates not in ("mean", "error"):
            raise ValueError(f"duplicates must be 'mean' or 'error', got {self.duplicates!r}")
        unit_to_hours(self.time_unit)
        _check_encoding(self.encoding)
        self.static_cols = list(self.static_cols)
        if self.value_cols is not None:
            self.value_cols = list(self.value_cols)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_encoding(encoding: str | None) -> None:
    """Raise ``ValueError`` for an encoding name Python does not know."""
    if encoding is None:
        return
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(
            f"unknown encoding {encoding!r}; use a Python codec name such as 'utf-8', "
            f"'latin-1' or 'cp1252'"
        ) from None


def _decode_error_message(path: Path, encoding: str) -> str | None:
    """Where ``path`` (decompressed if ``.gz``) stops being valid ``encoding``, or None."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
        data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        bad = " ".join(f"0x{b:02x}" for b in data[error.start : error.end][:4])
        return (
            f"byte {bad} at byte position {error.start} (line {line}) is not "
            f"valid {encoding} ({error.reason})"
        )
    except (OSError, LookupError):
        return None
    return None


def read_table(source: TableSource, encoding: str | None = None) -> tuple[pd.DataFrame, str]:
    """Load a DataFrame from a DataFrame, CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet path.

    Args:
        source: a DataFrame or a file path.
        encoding: text encoding of CSV/TSV files (default UTF-8), e.g. ``"latin-1"``.

    Returns the frame and a source name for error messages.

    Raises:
        DataValidationError: the file cannot be parsed; a text file that is not valid in its
            encoding is named with the byte position and line of the first bad byte.
    """
    if isinstance(source, pd.DataFrame):
        return source, "<DataFrame>"
    _check_encoding(encoding)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"table file not found: {path}")
    name = path.name.lower()
    text_encoding = encoding or "utf-8"
    if name.endswith((".parquet", ".pq")):
        reader, kind = pd.read_parquet, "Parquet"
    elif name.endswith((".csv", ".csv.gz", ".txt")):
        reader, kind = (lambda p: pd.read_csv(p, encoding=text_encoding)), "CSV"
    elif name.endswith((".tsv", ".tsv.gz")):
        reader, kind = (lambda p: pd.read_csv(p, sep="\t", encoding=text_encoding)), "TSV"
    else:
        raise ValueError(f"{path}: unsupported table format (use .csv, .tsv or .parquet)")
    try:
        return reader(path), str(path)
    except UnicodeDecodeError as error:
        where = _decode_error_message(path, text_encoding) or str(error)
        raise DataValidationError(
            f"{path}: cannot be read as {kind} in encoding {text_encoding!r}: {where}. Pass the "
            f"file's encoding, e.g. encoding='latin-1' (TableSpec, load_table, read_table, "
            f"TableDataModule and Forecaster.fit accept it), or re-save the file as UTF-8"
        ) from error
    except (OSError, ValueError) as error:  # pandas / pyarrow parse errors
        if isinstance(error, FileNotFoundError):
            raise
        message = str(error).strip() or type(error).__name__
        raise DataValidationError(f"{path}: cannot be read as {kind}: {message}") from error


class _Locator:
    """Formats 'source, series, row, column' locations for error messages.

    ``first_row``: the row of the source that ``frame``'s first row is (a record batch of a
    file); ``csv``: also name the line (default: from the source's suffix)."""

    def __init__(self, source: str, frame: pd.DataFrame, id_col: str, first_row: int = 0,
                 csv: bool | None = None):
        self.source = source
        self.csv = source.lower().endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt"))
        if csv is not None:
            self.csv = csv
        self.frame = frame
        self.id_col = id_col
        self.first_row = first_row

    def __call__(self, pos: int, column: str | None = None) -> str:
        row = self.first_row + pos
        where = f"{self.source}, row {row}"
        if self.csv:
            where += f" (line {row + 2})"
        if self.id_col in self.frame.columns:
            where += f", series {show(self.frame[self.id_col].iloc[pos])}"
        if column is not None:
            where += f", column {column!r}"
        return where


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], source: str, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{source}: missing required {what} column(s) {missing}; "
            f"available columns: {list(frame.columns)}"
        )


def _require_present(column: pd.Series, loc: _Locator, name: str, what: str) -> None:
    """Raise naming the first row where ``column`` is missing (and how many are)."""
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataValidationError(
            f"{loc(_first(missing), name)}: missing {what} ({int(missing.sum())} such rows)"
        )


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _mixed_offsets_error(
    column: pd.Series, loc: _Locator, name: str, strict: bool = True
) -> DataValidationError | None:
    """Error naming the first datetime whose UTC offset differs from the first row's.

    ``strict=False``: None unless such a value is found among the first 100,000 values before
    any value that is not a datetime (used to explain why datetime parsing failed).
    """
    present = np.flatnonzero(column.notna().to_numpy())
    if not strict:
        present = present[:100_000]
    first_pos, first_offset = None, None
    for pos in present:
        value = column.iloc[pos]
        try:
            offset = pd.Timestamp(value).utcoffset()
        except (TypeError, ValueError):
            if not strict:
                return None
            return DataValidationError(
                f"{loc(int(pos), name)}: time {show(value)} is not a datetime (the column's "
                f"other values are datetimes)"
            )
        if first_pos is None:
            first_pos, first_offset = int(pos), offset
        elif offset != first_offset:

            def describe(o: Any) -> str:
                if o is None:
                    return "no UTC offset (naive)"
                minutes = int(o.total_seconds() // 60)
                sign = "-" if minutes < 0 else "+"
                return f"UTC offset {sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"

            return DataValidationError(
                f"{loc(int(pos), name)}: time {show(value)} has {describe(offset)} but the first "
                f"time (row {first_pos}, {show(column.iloc[first_pos])}) has "
                f"{describe(first_offset)}; datetimes of one column must share one offset. "
                f"Convert the column to UTC first, e.g. "
                f"df[{name!r}] = pd.to_datetime(df[{name!r}], utc=True, format='ISO8601')"
            )
    if not strict:
        return None
    return DataValidationError(
        f"{loc.source}: time column {name!r} mixes time zones; convert it to UTC first, e.g. "
        f"df[{name!r}] = pd.to_datetime(df[{name!r}], utc=True, format='ISO8601')"
    )


def _parse_time_column(column: pd.Series, loc: _Locator, name: str) -> pd.Series:
    """Numeric/datetime/timedelta as is; strings/objects parsed as numbers, datetimes or
    timedeltas -- one kind for the whole column.

    Raises:
        DataValidationError: a column mixing numbers with other values (e.g. one date string
            among numeric times), mixed UTC offsets, or values that parse as nothing; the
            message names the first offending row and value.
    """
    if (
        pd.api.types.is_numeric_dtype(column)
        or pd.api.types.is_datetime64_any_dtype(column)
        or pd.api.types.is_timedelta64_dtype(column)
    ):
        if pd.api.types.is_bool_dtype(column):
            raise DataValidationError(f"{loc.source}: time column {name!r} is boolean")
        return column
    present = column.notna().to_numpy()
    is_bool = np.zeros(len(column), dtype=bool)
    if column.dtype == object:
        is_bool = column.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)
    numeric = pd.to_numeric(column.where(~is_bool), errors="coerce")
    is_number = present & numeric.notna().to_numpy()
    if is_number.any() and not (present & ~is_number).any():
        return numeric
    if is_number.any():
        others = present & ~is_number
        # blame the minority kind (ties: the non-number)
        bad, good = (is_number, others) if is_number.sum() < others.sum() else (others, is_number)
        pos, ref = _first(bad), _first(good)
        kind = "a number" if bad is is_number else "not a number"
        raise DataValidationError(
            f"{loc(pos, name)}: time {show(column.iloc[pos])} is {kind}, unlike row {ref} "
            f"({show(column.iloc[ref])}): the time column mixes numbers ({int(is_number.sum())} "
            f"rows) with other values ({int(others.sum())} rows, e.g. date strings). One time "
            f"column holds one kind of time: all numbers (in time_unit) or all datetimes or all "
            f"timedeltas; fix or drop the {int(bad.sum())} offending row(s)"
        )
    attempts = (
        lambda c: pd.to_datetime(c, errors="coerce", format="mixed"),
        lambda c: pd.to_timedelta(c, errors="coerce"),
    )
    best = None
    for k, parse in enumerate(attempts):
        try:
            parsed = parse(column)
        except (TypeError, ValueError) as error:
            text = str(error).lower()
            if k == 0 and any(w in text for w in ("timezone", "offset", "utc", "tz")):
                raise _mixed_offsets_error(column, loc, name) from error
            continue
        bad = present & parsed.isna().to_numpy()
        if not bad.any():
            return parsed
        if best is None or bad.sum() < best[1].sum():
            best = (parsed, bad)
    mixed = _mixed_offsets_error(column, loc, name, strict=False)
    if mixed is not None:
        raise mixed
    bad = best[1] if best is not None else present
    pos = _first(bad)
    raise DataValidationError(
        f"{loc(pos, name)}: time {show(column.iloc[pos])} is not a number, datetime or timedelta "
        f"({int(bad.sum())} such rows); fix or drop these rows"
    )


def _label_kind(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    return type(value).__name__


def _check_label_collisions(
    column: pd.Series, loc: _Locator, name: str, what: str, codes: np.ndarray | None = None
) -> None:
    """Distinct raw labels of an object column that tsode would merge are an error.

    Labels are compared after conversion to text (``1`` and ``"1"`` both become ``"1"``) and,
    when ``codes`` (the grouping actually used) is given, by that grouping (``1``, ``1.0`` and
    ``True`` compare equal in pandas). Columns of one dtype (numbers, strings) cannot collide.
    """
    if column.dtype != object or not len(column):
        return
    table = pd.DataFrame(
        {"text": column.astype(str).to_numpy(), "kind": column.map(_label_kind).to_numpy()}
    )
    if codes is not None:
        table["code"] = codes
    groupings = [("text", "the same after conversion to text")]
    if codes is not None:
        groupings.append(("code", "equal to pandas"))
    for key, how in groupings:
        subset = ["text", "kind"] if key == "text" else ["code", "text", "kind"]
        distinct = table.drop_duplicates(subset)
        clash = distinct[distinct[key].duplicated(keep=False)]
        if len(clash):
            rows = distinct.index[distinct[key] == clash[key].iloc[0]][:2]
            a, b = (int(r) for r in rows)
            va, vb = column.iloc[a], column.iloc[b]
            raise DataValidationError(
                f"{loc.source}: {what} {show(va)} ({_label_kind(va)}, row {a}) and {show(vb)} "
                f"({_label_kind(vb)}, row {b}) in column {name!r} are different values but "
                f"{how} ({str(va)!r}), so tsode would merge them. Give the column one type, e.g. "
                f"df[{name!r}] = df[{name!r}].astype(str), or rename one of them"
            )


def _numeric_column(
    column: pd.Series, loc: _Locator, name: str, channel: pd.Series | None = None
) -> np.ndarray:
    """Float64 values; NaN for missing; non-numeric, infinite or beyond-float32 entries raise.

    ``channel`` (long format: the channel name of every row) is named in the error.
    """

    def where(pos: int) -> str:
        chan = "" if channel is None else f", channel {show(channel.iloc[pos])}"
        return f"{loc(pos, name)}{chan}"

    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(column):
        out = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        parsed = pd.to_numeric(column, errors="coerce")
        bad = (column.notna() & parsed.isna()).to_numpy()
        if bad.any():
            pos = _first(bad)
            raise DataValidationError(
                f"{where(pos)}: value {show(column.iloc[pos])} is not numeric "
                f"({int(bad.sum())} such rows)"
            )
        out = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        huge = np.abs(out) > FLOAT32_MAX  # inf included; NaN (missing) is not
    if huge.any():
        pos = _first(huge)
        raise DataValidationError(
            f"{where(pos)}: value {show(column.iloc[pos])} is non-finite or beyond float32 range "
            f"(|value| <= {FLOAT32_MAX:.4g}; tsode computes in float32) ({int(huge.sum())} such "
            f"rows); use NaN or an empty cell for a missing value, or rescale the column"
        )
    return out


def _per_series_values(
    frame: pd.DataFrame,
    codes: np.ndarray,
    num_series: int,
    columns: Sequence[str],
    loc: _Locator,
    ids: Sequence[Any],
    id_col: str = "series_id",
    time_col: str = "time",
    label_col: str | None = None,
) -> np.ndarray:
    """(S, K): one value per series per column (first non-null); conflicting values raise
    (for ``label_col``, saying how to reduce a per-time-point label to one per series)."""
    out = np.full((num_series, len(columns)), np.nan)
    for k, col in enumerate(columns):
        vals = _numeric_column(frame[col], loc, col)
        ok = ~np.isnan(vals)
        c, v = codes[ok], vals[ok]
        if not len(c):
            continue
        lo = np.full(num_series, np.inf)
        hi = np.full(num_series, -np.inf)
        np.minimum.at(lo, c, v)
        np.maximum.at(hi, c, v)
        conflict = np.flatnonzero(np.isfinite(lo) & (lo != hi))
        if len(conflict):
            s = int(conflict[0])
            rows = np.flatnonzero(ok & (codes == s))
            message = (
                f"{loc.source}: series {show(ids[s])} has conflicting values {lo[s]:g} and "
                f"{hi[s]:g} in per-series column {col!r} (rows {rows[:5].tolist()})"
            )
            if col == label_col:
                message += (
                    f". Labels are per series (one label per series, e.g. an outcome), but "
                    f"{col!r} changes within this series, like a per-time-point label. Reduce "
                    f"it to one value per series before fitting, e.g. 'ever positive': "
                    f"df[{col!r}] = df.groupby({id_col!r})[{col!r}].transform('max'), or the "
                    f"last value: df = df.sort_values([{id_col!r}, {time_col!r}]); "
                    f"df[{col!r}] = df.groupby({id_col!r})[{col!r}].transform('last')"
                )
            raise DataValidationError(message)
        has = np.isfinite(lo)
        out[has, k] = lo[has]
    return out


def _channel_names(labels: Sequence[Any], source: str, what: str = "channels") -> list[str]:
    """``labels`` as text; two labels with the same text (``1`` and ``"1"``) raise."""
    names = [str(c) for c in labels]
    first: dict[str, Any] = {}
    for raw, text in zip(labels, names):
        if text in first:
            raise DataValidationError(
                f"{source}: {what} {show(first[text])} ({_label_kind(first[text])}) and "
                f"{show(raw)} ({_label_kind(raw)}) are the same channel name {text!r} as text, "
                f"so their values would be merged; rename one of them"
            )
        first[text] = raw
    return names


def _warn_per_series_columns(
    frame: pd.DataFrame, value_cols: Sequence[Any], codes: np.ndarray, source: str
) -> None:
    """Warn about default (wide) value columns that look like static covariates or labels:
    filled on every row and constant within every series (some series with >= 2 rows)."""
    if len(frame) < 2 or not len(value_cols):
        return
    if np.bincount(codes).max() < 2:
        return
    suspects = []
    for col in value_cols:
        column = frame[col]
        if column.isna().any() or not pd.api.types.is_numeric_dtype(column):
            continue
        if (column.groupby(codes).nunique() <= 1).all():
            suspects.append(col)
    if not suspects:
        return

    message = (
        f"{source}: value_cols not given, so every column but the id, time, static and label "
        f"columns is a time-varying channel; column(s) {list(suspects)} hold one value per "
        f"series on every row, like static covariates or labels. Declare them with "
        f"static_cols=[...] / label_col=..., or list the channels with value_cols=[...]"
    )
    logging.getLogger("tsode.data").warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def table_from_frame(
    frame: pd.DataFrame,
    spec: TableSpec,
    *,
    source: str = "<DataFrame>",
    channels: Sequence[str] | None = None,
    time_axis: TimeAxis | None = None,
) -> SeriesTable:
    """Validate a long or wide table and build a ``SeriesTable`` (original units).

    Args:
        frame: the table.
        spec: column names and policies.
        source: name used in error messages (file path or ``<DataFrame>``).
        channels: fixed channel list (e.g. those a model was fitted on). Channels of the table
            outside it raise ``DataValidationError``; channels of it absent from the table are
            all-missing. Default: the table's channels, sorted (long) or in column order (wide).
        time_axis: fixed time axis (e.g. the fitted one, so datetimes share a reference).
    """
    loc = _Locator(source, frame, spec.id_col)
    fmt = spec.format
    if fmt == "auto":
        # a channel-name column means long format (then the value column is required)
        fmt = "long" if spec.channel_col in frame.columns else "wide"
    _require_columns(frame, [spec.id_col, spec.time_col], source, "id/time")
    _require_columns(frame, spec.static_cols, source, "static")
    if spec.label_col is not None:
        _require_columns(frame, [spec.label_col], source, "label")
    if fmt == "long":
        _require_columns(frame, [spec.channel_col, spec.value_col], source, "long-format")
    counts: dict[str, Any] = {"input_rows": len(frame), "format": fmt}

    ids_col = frame[spec.id_col]
    _require_present(ids_col, loc, spec.id_col, "series id")
    try:
        codes, uniques = pd.factorize(ids_col, sort=True)
    except TypeError:
        codes, uniques = pd.factorize(ids_col, sort=False)
    _check_label_collisions(ids_col, loc, spec.id_col, "series ids", codes)
    series_ids = list(uniques)
    num_series = len(series_ids)

    # ---- time
    time_col = _parse_time_column(frame[spec.time_col], loc, spec.time_col)
    axis = time_axis or TimeAxis.infer(time_col, spec.time_unit)
    kind = (
        "datetime"
        if pd.api.types.is_datetime64_any_dtype(time_col)
        else "timedelta"
        if pd.api.types.is_timedelta64_dtype(time_col)
        else "numeric"
    )
    if kind != axis.kind:
        raise DataValidationError(
            f"{source}: time column {spec.time_col!r} is {kind} but the fitted time axis is "
            f"{axis.kind}"
        )
    hours = axis.to_hours(time_col)
    bad = ~np.isfinite(hours)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{loc(pos, spec.time_col)}: non-finite time {show(time_col.iloc[pos])} "
            f"({int(bad.sum())} such rows)"
        )
    bad = np.abs(hours) > FLOAT32_MAX
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{loc(pos, spec.time_col)}: time {show(time_col.iloc[pos])} is {hours[pos]:.4g} "
            f"hours, beyond float32 range ({FLOAT32_MAX:.4g}); check time_unit "
            f"({spec.time_unit!r}) ({int(bad.sum())} such rows)"
        )
    if spec.time_origin == "absolute" and (hours < 0).any():
        pos = int(np.flatnonzero(hours < 0)[0])
        raise DataValidationError(
            f"{loc(pos, spec.time_col)}: negative time {show(time_col.iloc[pos])} with "
            f"time_origin='absolute' (times must be >= 0 since the origin)"
        )
    order_ok = bool(np.all((np.diff(codes) > 0) | ((np.diff(codes) == 0) & (np.diff(hours) >= 0))))
    counts["input_sorted"] = order_ok

    # ---- observations
    row_numbers = np.arange(len(frame))
    if fmt == "long":
        chan_raw = frame[spec.channel_col]
        _require_present(chan_raw, loc, spec.channel_col, "channel name")
        _check_label_collisions(chan_raw, loc, spec.channel_col, "channel names")
        chan_str = chan_raw.astype(str)
        values = _numeric_column(frame[spec.value_col], loc, spec.value_col, channel=chan_raw)
        # factorize first: the channel names are few, the rows many
        name_codes, names_found = pd.factorize(chan_str)
        found = sorted(str(c) for c in names_found)
        if channels is None:
            channels = found
        channels = _channel_names(channels, source)
        index = {c: j for j, c in enumerate(channels)}
        lookup = np.array([index.get(str(c), -1) for c in names_found], dtype=np.int64)
        chan_codes = lookup[name_codes] if len(lookup) else np.zeros(0, dtype=np.int64)
        unknown = chan_codes < 0
        if unknown.any():
            pos = int(np.flatnonzero(unknown)[0])
            names = sorted(set(chan_str[unknown]))
            raise DataValidationError(
                f"{loc(pos, spec.channel_col)}: unknown channel(s) {names}; known channels: "
                f"{channels}"
            )
        present = ~np.isnan(values)
        counts["missing_values_skipped"] = int((~present).sum())
        e_codes, e_times, e_chan, e_vals, e_rows = (
            codes[present],
            hours[present],
            chan_codes[present],
            values[present],
            row_numbers[present],
        )
    else:
        reserved = {spec.id_col, spec.time_col, *spec.static_cols}
        for extra in (spec.label_col, spec.split_col):
            if extra is not None:
                reserved.add(extra)
        value_cols = spec.value_cols
        if value_cols is None:
            value_cols = [c for c in frame.columns if c not in reserved]
            if channels is None:
                _warn_per_series_columns(frame, value_cols, codes, source)
        _require_columns(frame, value_cols, source, "value")
        if not value_cols:
            raise DataValidationError(f"{source}: wide table has no value columns")
        repeated = [c for c in value_cols if (frame.columns == c).sum() > 1]
        if repeated:
            raise DataValidationError(
                f"{source}: column {show(repeated[0])} appears more than once; give every value "
                f"column a distinct name"
            )
        raw_cols = list(value_cols)
        value_cols = _channel_names(raw_cols, source, "value columns")
        if channels is None:
            channels = value_cols
        channels = _channel_names(channels, source)
        unknown = [k for k, c in enumerate(value_cols) if c not in channels]
        if unknown:
            observed = np.flatnonzero(
                frame[[raw_cols[k] for k in unknown]].notna().to_numpy().any(1)
            )
            where = loc(int(observed[0]), value_cols[unknown[0]]) if len(observed) else source
            raise DataValidationError(
                f"{where}: unknown channel column(s) {[value_cols[k] for k in unknown]}; known "
                f"channels: {channels}"
            )
        mat = np.column_stack(
            [_numeric_column(frame[raw], loc, name) for raw, name in zip(raw_cols, value_cols)]
        )  # (R, Cin)
        present = ~np.isnan(mat)
        counts["missing_values_skipped"] = int((~present).sum())
        counts["rows_without_observation"] = int((~present.any(1)).sum())
        r, j = np.nonzero(present)
        col_to_chan = np.array([channels.index(c) for c in value_cols], dtype=np.int64)
        e_codes, e_times, e_chan, e_vals, e_rows = (
            codes[r],
            hours[r],
            col_to_chan[j],
            mat[r, j],
            row_numbers[r],
        )

    static = None
    if spec.static_cols:
        static = _per_series_values(frame, codes, num_series, spec.static_cols, loc, series_ids)
    labels = None
    if spec.label_col is not None:
        labels = _per_series_values(
            frame, codes, num_series, [spec.label_col], loc, series_ids,
            id_col=spec.id_col, time_col=spec.time_col, label_col=spec.label_col,
        )[:, 0]

    table = SeriesTable.from_long(
        series_ids,
        e_codes,
        e_times,
        e_chan,
        e_vals,
        channels,
        time_origin=spec.time_origin,
        duplicates=spec.duplicates,
        static=static,
        static_names=spec.static_cols,
        labels=labels,
        time_axis=axis,
        row_numbers=e_rows,
        source=source,
    )
    if spec.max_span_hours is not None and table.num_series:
        nonempty = table.lengths > 0
        span = np.zeros(table.num_series)
        span[nonempty] = (
            table.times[table.offsets[1:][nonempty] - 1] - table.times[table.offsets[:-1][nonempty]]
        )
        too_long = np.flatnonzero(span > spec.max_span_hours)
        if len(too_long):
            s = int(too_long[0])
            raise DataValidationError(
                f"{source}: series {show(series_ids[s])} spans {span[s]:.4g} hours, more than "
                f"max_span_hours={spec.max_span_hours:g} (column {spec.time_col!r}); check "
                f"time_unit (now {spec.time_unit!r}) or raise max_span_hours"
            )
    counts["series_without_observation"] = int((table.lengths == 0).sum())
    table.info.update(counts)
    return table


def load_table(
    source: TableSource,
    spec: TableSpec | None = None,
    channels: Sequence[str] | None = None,
    time_axis: TimeAxis | None = None,
) -> SeriesTable:
    """Read ``source`` (DataFrame / CSV / Parquet) and validate it into a ``SeriesTable``."""
    spec = spec or TableSpec()
    frame, name = read_table(source, encoding=spec.encoding)
    return table_from_frame(frame, spec, source=name, channels=channels, time_axis=time_axis)


SPLIT_VALUES = ("train", "val", "test")


def split_values(frame: pd.DataFrame, spec: TableSpec, loc: _Locator) -> tuple[pd.Series, np.ndarray]:
    """The split names of column ``spec.split_col`` (stripped, lower case) and where they are
    given; a value that is not a split name raises, located by ``loc``."""
    col = spec.split_col
    raw = frame[col]
    present = raw.notna().to_numpy()
    names = raw.astype(str).str.strip().str.lower()
    bad = present & ~names.isin(SPLIT_VALUES).to_numpy()
    if bad.any():
        pos = _first(bad)
        unknown = sorted({str(v) for v in raw[bad]})[:10]
        raise DataValidationError(
            f"{loc(pos, col)}: split value {show(raw.iloc[pos])} is not one of "
            f"{list(SPLIT_VALUES)} ({int(bad.sum())} such rows; values {unknown}). Map them "
            f"first, e.g. df[{col!r}] = df[{col!r}].replace({{'validation': 'val'}})"
        )
    return names, present


def splits_from_column(frame: pd.DataFrame, spec: TableSpec, source: str) -> dict[str, list]:
    """``{"train": ids, "val": ids, "test": ids}`` from the column ``spec.split_col``.

    Values are ``train``, ``val`` or ``test`` (case and surrounding spaces ignored); a series
    gives its split on every row or on some rows only (empty cells are ignored); a series with
    no split value is in no split (left out, as with explicit ``splits``).

    Raises:
        DataValidationError: the column is missing, a value is not a split name, or a series
            has two different split values (naming the series, values and rows).
    """
    col = spec.split_col
    assert col is not None
    _require_columns(frame, [spec.id_col, col], source, "split")
    names, present = split_values(frame, spec, _Locator(source, frame, spec.id_col))
    ids = frame[spec.id_col]
    table = pd.DataFrame({"id": ids.to_numpy(), "split": names.to_numpy()})[present]
    per_series = table.groupby("id", sort=False)["split"].unique()
    splits: dict[str, list] = {name: [] for name in SPLIT_VALUES}
    for sid, values in per_series.items():
        if len(values) > 1:
            rows = np.flatnonzero(present & (ids == sid).to_numpy())
            first = {v: int(r) for r, v in zip(rows[::-1], names.to_numpy()[rows][::-1])}
            detail = ", ".join(f"{v!r} (row {first[v]})" for v in sorted(values))
            raise DataValidationError(
                f"{source}: series {show(sid)} has different values in split column {col!r}: "
                f"{detail}; a series belongs to one split, give it one value"
            )
        splits[values[0]].append(sid)
    return splits
