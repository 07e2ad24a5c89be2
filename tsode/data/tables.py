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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsode.data.series import TIME_ORIGINS, DataValidationError, SeriesTable, show
from tsode.data.timeaxis import TimeAxis, unit_to_hours

TableSource = pd.DataFrame | str | os.PathLike


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

    def __post_init__(self) -> None:
        if self.format not in ("auto", "long", "wide"):
            raise ValueError(f"format must be 'auto', 'long' or 'wide', got {self.format!r}")
        if self.time_origin not in TIME_ORIGINS:
            raise ValueError(f"time_origin must be one of {TIME_ORIGINS}, got {self.time_origin!r}")
        if self.duplicates not in ("mean", "error"):
            raise ValueError(f"duplicates must be 'mean' or 'error', got {self.duplicates!r}")
        unit_to_hours(self.time_unit)
        self.static_cols = list(self.static_cols)
        if self.value_cols is not None:
            self.value_cols = list(self.value_cols)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_table(source: TableSource) -> tuple[pd.DataFrame, str]:
    """Load a DataFrame from a DataFrame, CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet path.

    Returns the frame and a source name for error messages.
    """
    if isinstance(source, pd.DataFrame):
        return source, "<DataFrame>"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"table file not found: {path}")
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        reader, kind = pd.read_parquet, "Parquet"
    elif name.endswith((".csv", ".csv.gz", ".txt")):
        reader, kind = pd.read_csv, "CSV"
    elif name.endswith((".tsv", ".tsv.gz")):
        reader, kind = (lambda p: pd.read_csv(p, sep="\t")), "TSV"
    else:
        raise ValueError(f"{path}: unsupported table format (use .csv, .tsv or .parquet)")
    try:
        return reader(path), str(path)
    except (OSError, ValueError, UnicodeDecodeError) as error:  # pandas / pyarrow parse errors
        if isinstance(error, FileNotFoundError):
            raise
        message = str(error).strip() or type(error).__name__
        raise DataValidationError(f"{path}: cannot be read as {kind}: {message}") from error


class _Locator:
    """Formats 'source, series, row, column' locations for error messages."""

    def __init__(self, source: str, frame: pd.DataFrame, id_col: str):
        self.source = source
        self.csv = source.lower().endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt"))
        self.frame = frame
        self.id_col = id_col

    def __call__(self, pos: int, column: str | None = None) -> str:
        where = f"{self.source}, row {pos}"
        if self.csv:
            where += f" (line {pos + 2})"
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


def _parse_time_column(column: pd.Series, loc: _Locator, name: str) -> pd.Series:
    """Numeric/datetime/timedelta as is; strings parsed as numbers, datetimes or timedeltas."""
    if (
        pd.api.types.is_numeric_dtype(column)
        or pd.api.types.is_datetime64_any_dtype(column)
        or pd.api.types.is_timedelta64_dtype(column)
    ):
        if pd.api.types.is_bool_dtype(column):
            raise DataValidationError(f"{loc.source}: time column {name!r} is boolean")
        return column
    present = column.notna()
    attempts = (
        lambda c: pd.to_numeric(c, errors="coerce"),
        lambda c: pd.to_datetime(c, errors="coerce", format="mixed"),
        lambda c: pd.to_timedelta(c, errors="coerce"),
    )
    best = None
    for parse in attempts:
        try:
            parsed = parse(column)
        except (TypeError, ValueError):
            continue
        bad = present & parsed.isna()
        if not bad.any():
            return parsed
        if best is None or bad.sum() < best[1].sum():
            best = (parsed, bad)
    bad = best[1] if best is not None else present
    pos = int(np.flatnonzero(bad.to_numpy())[0])
    raise DataValidationError(
        f"{loc(pos, name)}: time {show(column.iloc[pos])} is not a number, datetime or timedelta "
        f"({int(bad.sum())} such rows)"
    )


def _numeric_column(column: pd.Series, loc: _Locator, name: str) -> np.ndarray:
    """Float64 values; NaN for missing; non-numeric or infinite entries raise."""
    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(column):
        out = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        parsed = pd.to_numeric(column, errors="coerce")
        bad = (column.notna() & parsed.isna()).to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"{loc(pos, name)}: value {show(column.iloc[pos])} is not numeric "
                f"({int(bad.sum())} such rows)"
            )
        out = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    inf = np.isinf(out)
    if inf.any():
        pos = int(np.flatnonzero(inf)[0])
        raise DataValidationError(
            f"{loc(pos, name)}: non-finite value {out[pos]} ({int(inf.sum())} such rows)"
        )
    return out


def _per_series_values(
    frame: pd.DataFrame,
    codes: np.ndarray,
    num_series: int,
    columns: Sequence[str],
    loc: _Locator,
    ids: Sequence[Any],
) -> np.ndarray:
    """(S, K): one value per series per column (first non-null); conflicting values raise."""
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
            raise DataValidationError(
                f"{loc.source}: series {show(ids[s])} has conflicting values {lo[s]:g} and {hi[s]:g} "
                f"in per-series column {col!r} (rows {rows[:5].tolist()})"
            )
        has = np.isfinite(lo)
        out[has, k] = lo[has]
    return out


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
    null_id = ids_col.isna().to_numpy()
    if null_id.any():
        pos = int(np.flatnonzero(null_id)[0])
        raise DataValidationError(
            f"{loc(pos, spec.id_col)}: missing series id ({int(null_id.sum())} such rows)"
        )
    try:
        codes, uniques = pd.factorize(ids_col, sort=True)
    except TypeError:
        codes, uniques = pd.factorize(ids_col, sort=False)
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
        null_chan = chan_raw.isna().to_numpy()
        if null_chan.any():
            pos = int(np.flatnonzero(null_chan)[0])
            raise DataValidationError(
                f"{loc(pos, spec.channel_col)}: missing channel name "
                f"({int(null_chan.sum())} such rows)"
            )
        chan_str = chan_raw.astype(str)
        values = _numeric_column(frame[spec.value_col], loc, spec.value_col)
        found = sorted(pd.unique(chan_str))
        if channels is None:
            channels = found
        channels = [str(c) for c in channels]
        index = {c: j for j, c in enumerate(channels)}
        chan_codes = chan_str.map(index)
        unknown = chan_codes.isna().to_numpy()
        if unknown.any():
            pos = int(np.flatnonzero(unknown)[0])
            names = sorted(set(chan_str[unknown]))
            raise DataValidationError(
                f"{loc(pos, spec.channel_col)}: unknown channel(s) {names}; known channels: "
                f"{channels}"
            )
        chan_codes = chan_codes.to_numpy(dtype=np.int64)
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
        if spec.label_col is not None:
            reserved.add(spec.label_col)
        value_cols = spec.value_cols
        if value_cols is None:
            value_cols = [c for c in frame.columns if c not in reserved]
        _require_columns(frame, value_cols, source, "value")
        if not value_cols:
            raise DataValidationError(f"{source}: wide table has no value columns")
        value_cols = [str(c) for c in value_cols]
        if channels is None:
            channels = value_cols
        channels = [str(c) for c in channels]
        unknown = [c for c in value_cols if c not in channels]
        if unknown:
            observed = np.flatnonzero(frame[unknown].notna().to_numpy().any(1))
            where = loc(int(observed[0]), unknown[0]) if len(observed) else source
            raise DataValidationError(
                f"{where}: unknown channel column(s) {unknown}; known channels: {channels}"
            )
        mat = np.column_stack([_numeric_column(frame[c], loc, c) for c in value_cols])  # (R, Cin)
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
        labels = _per_series_values(frame, codes, num_series, [spec.label_col], loc, series_ids)[
            :, 0
        ]

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
    frame, name = read_table(source)
    return table_from_frame(
        frame, spec or TableSpec(), source=name, channels=channels, time_axis=time_axis
    )
