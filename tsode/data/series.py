"""Compact in-memory store of many irregular multichannel series.

All series are concatenated row-wise: one row per distinct (series, time point), values
``(N, C)`` with NaN where a channel was not observed. ``offsets`` delimits series, so the
rows of series ``i`` are ``offsets[i]:offsets[i + 1]``. Rows within a series are sorted by
time and times are unique. Times are float hours relative to the series' time origin
(``time_offset[i]`` hours after the table's time reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tsode.data.normalize import Normalizer
from tsode.data.timeaxis import TimeAxis

TIME_ORIGINS = ("series_start", "absolute")

#: largest magnitude a value may have: tsode computes in float32
FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataValidationError(ValueError):
    """Bad input data; the message names the source, series id, row and column involved."""


def show(value: Any) -> str:
    """``repr`` of a cell or id for error messages, without numpy's wrapper (``8``, not
    ``np.int64(8)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


@dataclass
class SeriesTable:
    """Many irregular series in one concatenated table (see module docstring).

    Attributes:
        series_ids: S original identifiers.
        offsets: (S+1,) int64 row boundaries.
        times: (N,) float64 hours since the series' origin, strictly increasing per series.
        values: (N, C) float32 original units, NaN where unobserved.
        channels: C channel names.
        time_offset: (S,) float64 hours from the table's time reference to each series' origin.
        static: (S, K) float64 static covariates (NaN unknown) or None.
        static_names: K static covariate names.
        labels: (S,) float64 series-level labels (NaN unknown) or None.
        time_axis: how hours map back to the source's time representation.
        info: free-form counters collected during ingestion (duplicates merged, rows dropped...).
        source: where the table came from (file path, ``<DataFrame>``...), for error messages.
    """

    series_ids: list[Any]
    offsets: np.ndarray
    times: np.ndarray
    values: np.ndarray
    channels: list[str]
    time_offset: np.ndarray
    static: np.ndarray | None = None
    static_names: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    time_axis: TimeAxis = field(default_factory=TimeAxis)
    info: dict[str, Any] = field(default_factory=dict)
    source: str = "<table>"

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.times = np.asarray(self.times, dtype=np.float64)
        with np.errstate(over="ignore"):
            self.values = np.asarray(self.values, dtype=np.float32)
        self.time_offset = np.asarray(self.time_offset, dtype=np.float64)
        self.channels = [str(c) for c in self.channels]
        s = len(self.series_ids)
        n = self.times.shape[0]
        if self.offsets.shape != (s + 1,) or self.offsets[0] != 0 or self.offsets[-1] != n:
            raise ValueError(f"SeriesTable: offsets must be (S+1,) from 0 to N={n}")
        if self.values.shape != (n, len(self.channels)):
            raise ValueError(
                f"SeriesTable: values shape {self.values.shape} != (N={n}, C={len(self.channels)})"
            )
        if self.values.size and np.isinf(self.values).any():
            row, col = (int(k[0]) for k in np.nonzero(np.isinf(self.values)))
            sid = self.series_ids[int(np.searchsorted(self.offsets, row, side="right")) - 1]
            raise DataValidationError(
                f"{self.source}: series {show(sid)}, channel {self.channels[col]!r}, time "
                f"{self.times[row]:g} h: value is non-finite or beyond float32 range "
                f"(|value| <= {FLOAT32_MAX:.4g}); use NaN for a missing value, or rescale"
            )
        if self.time_offset.shape != (s,):
            raise ValueError(f"SeriesTable: time_offset must be (S={s},)")
        if self.static is not None:
            self.static = np.asarray(self.static, dtype=np.float64)
            if self.static.shape != (s, len(self.static_names)):
                raise ValueError(
                    f"SeriesTable: static shape {self.static.shape} != (S={s}, K={len(self.static_names)})"
                )
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.float64).reshape(-1)
            if self.labels.shape != (s,):
                raise ValueError(f"SeriesTable: labels must be (S={s},)")

    # ------------------------------------------------------------------ basic views
    @property
    def num_series(self) -> int:
        return len(self.series_ids)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def num_static(self) -> int:
        return 0 if self.static is None else self.static.shape[1]

    @property
    def lengths(self) -> np.ndarray:
        """(S,) number of time points per series."""
        return np.diff(self.offsets)

    @property
    def row_series(self) -> np.ndarray:
        """(N,) series index of every row."""
        return np.repeat(np.arange(self.num_series), self.lengths)

    @property
    def mask(self) -> np.ndarray:
        """(N, C) bool: True where observed."""
        return ~np.isnan(self.values)

    def series(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(times (n,), values (n, C)) of series ``i``."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.times[lo:hi], self.values[lo:hi]

    def subset(self, indices: Sequence[int] | np.ndarray) -> SeriesTable:
        """A new table holding series ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        lens = self.lengths[idx]
        rows = concat_ranges(self.offsets[idx], lens)
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        return SeriesTable(
            series_ids=[self.series_ids[i] for i in idx],
            offsets=offsets,
            times=self.times[rows],
            values=self.values[rows],
            channels=list(self.channels),
            time_offset=self.time_offset[idx],
            static=None if self.static is None else self.static[idx],
            static_names=list(self.static_names),
            labels=None if self.labels is None else self.labels[idx],
            time_axis=self.time_axis,
            info=dict(self.info),
            source=self.source,
        )

    def with_channels(self, channels: Sequence[str]) -> SeriesTable:
        """Reorder/extend columns to ``channels``; channels absent here become all-NaN.

        Raises:
            DataValidationError: if this table has channels not in ``channels`` (e.g. a channel
                at predict time that the model was never trained on).
        """
        channels = [str(c) for c in channels]
        unknown = [c for c in self.channels if c not in channels]
        if unknown:
            observed = self.mask[:, [self.channels.index(c) for c in unknown]].any(1)
            where = ""
            if observed.any():
                row = int(np.flatnonzero(observed)[0])
                s = int(self.row_series[row])
                where = (
                    f", first observed in series {show(self.series_ids[s])} at time "
                    f"{self.times[row] + self.time_offset[s]:g} h"
                )
            raise DataValidationError(
                f"{self.source}: unknown channels {unknown} (column(s) or channel names){where}: "
                f"not among the {len(channels)} channels the model/data module was fitted on "
                f"({channels})"
            )
        values = np.full((self.times.shape[0], len(channels)), np.nan, dtype=np.float32)
        pos = {c: j for j, c in enumerate(channels)}
        for j, c in enumerate(self.channels):
            values[:, pos[c]] = self.values[:, j]
        out = SeriesTable(**{**self.__dict__, "values": values, "channels": channels})
        return out

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_long(
        cls,
        series_ids: Sequence[Any],
        series_codes: np.ndarray,
        times: np.ndarray,
        channel_codes: np.ndarray,
        values: np.ndarray,
        channels: Sequence[str],
        *,
        time_origin: str = "series_start",
        duplicates: str = "mean",
        static: np.ndarray | None = None,
        static_names: Sequence[str] = (),
        labels: np.ndarray | None = None,
        time_axis: TimeAxis | None = None,
        row_numbers: np.ndarray | None = None,
        source: str = "<table>",
    ) -> SeriesTable:
        """Build from long-format observations (one entry per value), vectorized.

        Args:
            series_ids: S identifiers; ``series_codes`` (M,) index into them.
            times: (M,) float hours (finite).
            channel_codes: (M,) ints indexing ``channels``.
            values: (M,) floats (finite; drop missing entries beforehand).
            time_origin: ``"series_start"`` (times re-based to each series' first observation,
                the start stored in ``time_offset``) or ``"absolute"`` (kept; offset 0).
            duplicates: policy for several values at the same (series, time, channel):
                ``"mean"`` averages them, ``"error"`` raises naming the rows.
            row_numbers: (M,) source row numbers used in error messages.

        Series without any observation are kept with zero rows only if listed in
        ``series_ids``; callers decide whether to drop them.
        """
        if time_origin not in TIME_ORIGINS:
            raise ValueError(f"time_origin must be one of {TIME_ORIGINS}, got {time_origin!r}")
        if duplicates not in ("mean", "error"):
            raise ValueError(f"duplicates must be 'mean' or 'error', got {duplicates!r}")
        series_codes = np.asarray(series_codes, dtype=np.int64)
        times = np.asarray(times, dtype=np.float64)
        channel_codes = np.asarray(channel_codes, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        huge = np.abs(values) > FLOAT32_MAX
        if huge.any():
            k = int(np.flatnonzero(huge)[0])
            row = f", row {int(row_numbers[k])}" if row_numbers is not None else ""
            raise DataValidationError(
                f"{source}{row}, series {show(series_ids[series_codes[k]])}, channel "
                f"{channels[channel_codes[k]]!r}: value {values[k]:g} is non-finite or beyond "
                f"float32 range (|value| <= {FLOAT32_MAX:.4g}; {int(huge.sum())} such entries); "
                f"use NaN for a missing value, or rescale"
            )
        num_s, num_c = len(series_ids), len(channels)
        order = _sort_order(series_codes, times, channel_codes, num_s, num_c)
        sc, tt, cc, vv = series_codes[order], times[order], channel_codes[order], values[order]
        m = len(order)
        # one row per distinct (series, time)
        new_row = np.ones(m, dtype=bool)
        if m:
            new_row[1:] = (sc[1:] != sc[:-1]) | (tt[1:] != tt[:-1])
        row_of_entry = np.cumsum(new_row) - 1
        num_rows = int(new_row.sum())
        # duplicates: same row and channel as the previous entry (entries sorted by channel)
        dup = np.zeros(m, dtype=bool)
        if m:
            dup[1:] = (~new_row[1:]) & (cc[1:] == cc[:-1])
        num_dup = int(dup.sum())
        if num_dup and duplicates == "error":
            k = int(np.flatnonzero(dup)[0])
            rows = row_numbers[order[[k - 1, k]]] if row_numbers is not None else order[[k - 1, k]]
            raise DataValidationError(
                f"{source}: duplicate entries for series {show(series_ids[sc[k]])}, channel "
                f"{channels[cc[k]]!r} at time {tt[k]:g} h (rows {int(rows[0])} and {int(rows[1])}); "
                f"{num_dup} duplicate entries in total. Use duplicates='mean' to average them."
            )
        # entries are sorted by (row, channel): average each run of equal (row, channel)
        starts = np.flatnonzero(~dup)
        run_sums = np.add.reduceat(vv, starts) if m else np.zeros(0)
        run_counts = np.diff(np.append(starts, m))
        dense = np.full((num_rows, num_c), np.nan, dtype=np.float32)
        dense.reshape(-1)[row_of_entry[starts] * num_c + cc[starts]] = run_sums / run_counts
        row_series = sc[new_row]
        row_times = tt[new_row]
        lengths = np.bincount(row_series, minlength=num_s)
        offsets = np.zeros(num_s + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        time_offset = np.zeros(num_s, dtype=np.float64)
        if time_origin == "series_start":
            has = lengths > 0
            time_offset[has] = row_times[offsets[:-1][has]]
            row_times = row_times - np.repeat(time_offset, lengths)
        return cls(
            series_ids=list(series_ids),
            offsets=offsets,
            times=row_times,
            values=dense,
            channels=list(channels),
            time_offset=time_offset,
            static=static,
            static_names=list(static_names),
            labels=labels,
            time_axis=time_axis or TimeAxis(),
            info={"duplicate_entries_merged": num_dup, "time_origin": time_origin},
            source=source,
        )

    # ------------------------------------------------------------------ back to tables
    def to_long_frame(
        self,
        id_col: str = "series_id",
        time_col: str = "time",
        channel_col: str = "channel",
        value_col: str = "value",
    ) -> pd.DataFrame:
        """Tidy long DataFrame of every observed entry, times in the source representation."""
        rows, chans = np.nonzero(self.mask)
        series = self.row_series[rows]
        hours = self.times[rows] + self.time_offset[series]
        ids = np.empty(self.num_series, dtype=object)
        ids[:] = self.series_ids
        return pd.DataFrame(
            {
                id_col: ids[series],
                time_col: self.time_axis.from_hours(hours),
                channel_col: np.asarray(self.channels, dtype=object)[chans],
                value_col: self.values[rows, chans].astype(np.float64),
            }
        )

    def normalized(self, normalizer: Normalizer) -> tuple[np.ndarray, np.ndarray]:
        """(values (N, C) float32 normalized with 0 where missing, mask (N, C) bool)."""
        mask = self.mask
        with np.errstate(over="ignore", invalid="ignore"):
            normed = normalizer.transform(self.values).astype(np.float32)
        normed[~mask] = 0.0
        overflow = ~np.isfinite(normed)
        if overflow.any():
            row, col = (int(k[0]) for k in np.nonzero(overflow))
            s = int(np.searchsorted(self.offsets, row, side="right")) - 1
            raise DataValidationError(
                f"{self.source}: series {show(self.series_ids[s])}, channel "
                f"{self.channels[col]!r}, time {self.times[row] + self.time_offset[s]:g} h: "
                f"value {float(self.values[row, col]):g} overflows float32 after normalization "
                f"with the channel's training mean {normalizer.mean[col]:g} and std "
                f"{normalizer.std[col]:g} ({int(overflow.sum())} such entries); check that this "
                f"table uses the same units as the training data"
            )
        return normed, mask


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorized."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(starts - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def _sort_order(series: np.ndarray, times: np.ndarray, channels: np.ndarray, s: int, c: int):
    """Order sorting entries by (series, time, channel), stable (equal entries keep their
    order); one int64 key sort when it fits.

    Entries already in (series, time) order (a table sorted by series and time, the channels
    of a time point in any order) need no sort of the times: the key is the time point's
    number, and the key sort meets sorted runs.
    """
    m = len(series)
    if m > 1:
        ds, dt = np.diff(series), np.diff(times)
        if np.all((ds > 0) | ((ds == 0) & (dt >= 0))):  # (series, time) already in order
            new_point = np.empty(m, dtype=bool)
            new_point[0] = True
            new_point[1:] = (ds != 0) | (dt != 0)
            if np.all(new_point[1:] | (np.diff(channels) >= 0)):
                return np.arange(m, dtype=np.int64)  # fully sorted
            point = np.cumsum(new_point, dtype=np.int64) - 1
            return np.argsort(point * max(c, 1) + channels, kind="stable")
    perm = np.argsort(times)
    ordered = times[perm]
    first = np.empty(m, dtype=bool)
    first[:1] = True
    first[1:] = ordered[1:] != ordered[:-1]
    num_times = int(first.sum())
    if float(max(s, 1)) * max(num_times, 1) * max(c, 1) >= 2**62:
        return np.lexsort((channels, times, series))
    time_rank = np.empty(m, dtype=np.int64)
    time_rank[perm] = np.cumsum(first) - 1
    key = (series * num_times + time_rank) * c + channels
    order = np.argsort(key)  # not stable: equal keys (duplicate entries) are put back below
    tied = np.zeros(m, dtype=bool)
    if m > 1:
        same = key[order[1:]] == key[order[:-1]]
        tied[1:] |= same
        tied[:-1] |= same
    if tied.any():  # runs of equal keys: their entries in input order (a stable sort)
        where = np.flatnonzero(tied)
        members = order[where]
        order[where] = members[np.lexsort((members, key[members]))]
    return order
