"""From batches and predictions back to tidy DataFrames in original units.

Output columns: ``series_id``, ``time`` (the source's representation: float in the source's
numeric unit, datetime or timedelta; absolute, i.e. with each series' offset added back),
``channel``, ``value`` (original units), plus any extra per-entry columns (e.g. ``std``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tsode.data.batch import IrregularBatch
from tsode.data.normalize import Normalizer
from tsode.data.series import SeriesTable
from tsode.data.timeaxis import TimeAxis

# float32 batch times are within a few ulps (2**-24 relative) of the table's float64 times
_SNAP_RELATIVE = 4e-7


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def float32_repr(values: np.ndarray) -> np.ndarray:
    """Float64 values of float32 model outputs, each the float32's shortest decimal repr
    (``68.99999618530273`` -> ``69.0``): what the model computed, without float32 noise."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return values
    with np.errstate(over="ignore"):
        return values.astype(np.float32).astype(str).astype(np.float64)


def snap_to_table_times(
    hours: np.ndarray, rows: np.ndarray, series_ids: Sequence[Any], table: SeriesTable
) -> np.ndarray:
    """Replace float32-rounded hours by the table's exact (float64) time of the same series.

    ``hours[i]`` (relative to the series' origin, as in batches) belongs to batch row
    ``rows[i]``, whose series is ``series_ids[rows[i]]``. A time is replaced by the nearest
    time of that series in ``table`` when they agree to float32 precision (so observation
    times come back exactly as they were read, e.g. ``12:45:00`` and not ``12:44:59.997``);
    other times (series not in the table, forecast query times) are returned unchanged.
    """
    return _table_rows(hours, rows, series_ids, table)[0]


def _table_rows(
    hours: np.ndarray, rows: np.ndarray, series_ids: Sequence[Any], table: SeriesTable
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`snap_to_table_times` and the table row of every snapped time (-1: none)."""
    out = np.array(hours, dtype=np.float64, copy=True)
    found = np.full(len(out), -1, dtype=np.int64)
    if len(out) == 0 or table.num_series == 0:
        return out, found
    position = {sid: i for i, sid in enumerate(table.series_ids)}
    order = np.argsort(rows, kind="stable")
    bounds = np.flatnonzero(np.diff(rows[order])) + 1
    for chunk in np.split(order, bounds):
        s = position.get(series_ids[int(rows[chunk[0]])])
        if s is None:
            continue
        known = table.times[table.offsets[s] : table.offsets[s + 1]]
        if len(known) == 0:
            continue
        h = out[chunk]
        right = np.clip(np.searchsorted(known, h), 0, len(known) - 1)
        left = np.clip(right - 1, 0, len(known) - 1)
        nearest = np.where(np.abs(known[left] - h) <= np.abs(known[right] - h), left, right)
        close = np.abs(known[nearest] - h) <= _SNAP_RELATIVE * np.maximum(1.0, np.abs(h))
        out[chunk[close]] = known[nearest[close]]
        found[chunk[close]] = table.offsets[s] + nearest[close]
    return out, found


def values_to_frame(
    series_ids: Sequence[Any],
    times: Tensor | np.ndarray,
    values: Tensor | np.ndarray,
    mask: Tensor | np.ndarray,
    channels: Sequence[str],
    time_offset: Tensor | np.ndarray | None = None,
    normalizer: Normalizer | None = None,
    time_axis: TimeAxis | None = None,
    extra: Mapping[str, Tensor | np.ndarray] | None = None,
    std_columns: Sequence[str] = ("std",),
    table: SeriesTable | None = None,
    observed_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Tidy frame of the entries selected by ``mask``.

    Args:
        series_ids: B identifiers.
        times: (B, L) hours relative to each series' origin.
        values: (B, L, C) normalized values (mapped back with ``normalizer.inverse``).
        mask: (B, L, C) bool entries to emit, or (B, L) bool time points (all channels).
        time_offset: (B,) hours added back to ``times`` (series origin).
        normalizer: inverse-maps values (None: values are emitted as given).
        time_axis: maps hours back to the source's time representation (None: float hours).
        extra: more (B, L, C) arrays to emit as columns; names in ``std_columns`` are scaled
            by the channel std only (spreads), others inverse-normalized like values.
        table: the table the batch came from: times that are its observation times (to
            float32 precision) are reported exactly (see :func:`snap_to_table_times`).
        observed_columns: columns (``"value"`` or names in ``extra``) holding observations:
            with ``table``, entries observed there are reported as read (the table's value),
            not as round-tripped through normalization in float32.

    Values (model outputs in float32) are float64 columns holding each float32's shortest
    decimal repr (:func:`float32_repr`): ``69.0``, not ``68.99999618530273``.
    """
    times_np = _np(times).astype(np.float64)
    vals = _np(values)
    m = _np(mask).astype(bool)
    if m.ndim == 2:
        m = np.broadcast_to(m[:, :, None], vals.shape)
    b, t, c = np.nonzero(m)
    hours = times_np[b, t]
    table_rows = np.full(len(hours), -1, dtype=np.int64)
    if table is not None:
        hours, table_rows = _table_rows(hours, b, series_ids, table)
    if time_offset is not None:
        hours = hours + _np(time_offset).astype(np.float64)[b]
    def as_read(name: str, column: np.ndarray) -> np.ndarray:
        column = float32_repr(column)
        if name not in observed_columns or table is None or not (table_rows >= 0).any():
            return column
        position = {ch: j for j, ch in enumerate(table.channels)}
        table_c = np.array([position.get(ch, -1) for ch in channels], dtype=np.int64)[c]
        ok = (table_rows >= 0) & (table_c >= 0)
        exact = np.full(len(column), np.nan)
        exact[ok] = table.values[table_rows[ok], table_c[ok]]
        ok &= ~np.isnan(exact) & ~np.isnan(column)
        column[ok] = float32_repr(exact[ok])
        return column

    out_vals = vals[b, t, c].astype(np.float64)
    if normalizer is not None:
        out_vals = normalizer.inverse(out_vals, c)
    out_vals = as_read("value", out_vals)
    ids = np.empty(len(series_ids), dtype=object)
    ids[:] = list(series_ids)
    data: dict[str, Any] = {
        "series_id": ids[b],
        "time": (time_axis or TimeAxis()).from_hours(hours),
        "channel": np.asarray(list(channels), dtype=object)[c],
        "value": out_vals,
    }
    for name, arr in (extra or {}).items():
        col = _np(arr)[b, t, c].astype(np.float64)
        if normalizer is not None:
            if name in std_columns:
                col = normalizer.inverse_std(col, c)
            else:
                col = normalizer.inverse(col, c)
        data[name] = as_read(name, col)
    frame = pd.DataFrame(data)
    if isinstance(data["time"], pd.Series):
        frame["time"] = data["time"].to_numpy()
    return frame


def batch_to_frame(
    batch: IrregularBatch,
    part: str = "target",
    values: Tensor | np.ndarray | None = None,
    normalizer: Normalizer | None = None,
    time_axis: TimeAxis | None = None,
    all_channels: bool = False,
    extra: Mapping[str, Tensor | np.ndarray] | None = None,
    table: SeriesTable | None = None,
) -> pd.DataFrame:
    """Tidy frame of one part of a batch (its observations, or predictions at its times).

    Args:
        batch: the batch.
        part: ``"target"`` or ``"context"``.
        values: (B, L, C) predictions in normalized units at that part's times (default: the
            batch's own observed values).
        all_channels: emit every channel at every real time point (predictions), instead of
            only the observed entries of ``part.mask``.
        table: the table the batch came from (e.g. ``dm.table``): times are then reported
            exactly as read instead of to float32 precision.
    """
    if part not in ("target", "context"):
        raise ValueError(f"part must be 'target' or 'context', got {part!r}")
    sp = getattr(batch, part)
    mask = sp.time_mask if all_channels else sp.mask
    return values_to_frame(
        batch.series_ids,
        sp.times,
        sp.values if values is None else values,
        mask,
        batch.channels,
        time_offset=batch.time_offset,
        normalizer=normalizer,
        time_axis=time_axis,
        extra=extra,
        table=table,
        observed_columns=("value",) if values is None else (),
    )


def forecast_to_frame(
    batch: IrregularBatch,
    times: Tensor | np.ndarray,
    mean: Tensor | np.ndarray,
    normalizer: Normalizer | None = None,
    time_axis: TimeAxis | None = None,
    time_mask: Tensor | np.ndarray | None = None,
    extra: Mapping[str, Tensor | np.ndarray] | None = None,
) -> pd.DataFrame:
    """Tidy frame of a forecast ``mean`` (B, M, C) at per-series ``times`` (B, M) hours.

    ``time_mask`` (B, M) selects real query times (default: all).
    """
    times_t = torch.as_tensor(_np(times))
    if time_mask is None:
        time_mask = np.ones(times_t.shape, dtype=bool)
    return values_to_frame(
        batch.series_ids,
        times_t,
        mean,
        time_mask,
        batch.channels,
        time_offset=batch.time_offset,
        normalizer=normalizer,
        time_axis=time_axis,
        extra=extra,
    )
