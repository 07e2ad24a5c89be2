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
from tsode.data.timeaxis import TimeAxis


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


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
    """
    times_np = _np(times).astype(np.float64)
    vals = _np(values)
    m = _np(mask).astype(bool)
    if m.ndim == 2:
        m = np.broadcast_to(m[:, :, None], vals.shape)
    b, t, c = np.nonzero(m)
    hours = times_np[b, t]
    if time_offset is not None:
        hours = hours + _np(time_offset).astype(np.float64)[b]
    out_vals = vals[b, t, c].astype(np.float64)
    if normalizer is not None:
        out_vals = normalizer.inverse(out_vals, c)
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
        data[name] = col
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
) -> pd.DataFrame:
    """Tidy frame of one part of a batch (its observations, or predictions at its times).

    Args:
        batch: the batch.
        part: ``"target"`` or ``"context"``.
        values: (B, L, C) predictions in normalized units at that part's times (default: the
            batch's own observed values).
        all_channels: emit every channel at every real time point (predictions), instead of
            only the observed entries of ``part.mask``.
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
