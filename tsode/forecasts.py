"""A trained module's forecasts as tidy frames in original units.

Below both :mod:`tsode.tracking` (forecast plots of a finished fit) and :mod:`tsode.api`
(``Forecaster.predict`` / ``forecast_split``), so neither imports the other for them:

- :func:`model_forecast` — the model's mean ``(B, M, C)`` and requested quantiles
  (normalized units) at query times, the quantiles from its
  :class:`~tsode.models.forecast.Forecast` by :func:`named_quantiles`;
- :func:`quantile_name` / :func:`quantile_level` — the one naming rule of quantile columns
  (``q0.05``), for the API (and so serving), the prediction writer and the plots;
- :func:`split_forecast_frames` — observed points and a dense forecast for a few series of a
  data module split, the input of :func:`tsode.plotting.plot_forecast`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor

from tsode.data.batch import IrregularBatch
from tsode.data.fitted import FittedData

if TYPE_CHECKING:
    from tsode.models.forecast import Forecast


_QUANTILE_COLUMN = re.compile(r"^q(\d+(?:\.\d*)?(?:e[-+]?\d+)?)$")


def quantile_name(level: float) -> str:
    """Column name of a forecast quantile: ``q0.05`` (the one spelling, see :func:`quantile_level`)."""
    return f"q{level:g}"


def quantile_level(column: Any) -> float | None:
    """The level in [0, 1] of a quantile column (``q0.05`` -> 0.05, as :func:`quantile_name`
    writes it); None for any other column name."""
    match = _QUANTILE_COLUMN.match(str(column))
    if match is None:
        return None
    level = float(match.group(1))
    return level if 0.0 <= level <= 1.0 else None


def named_quantiles(forecast: Forecast, levels: Sequence[float], model: str = "the model") -> dict[str, Tensor]:
    """Quantiles ``(B, M, C)`` of ``forecast`` at ``levels`` (normalized units), named by
    :func:`quantile_name`; empty without levels. A deterministic forecast asked for quantiles
    raises ``ValueError`` naming ``model``."""
    if not levels:
        return {}
    if not forecast.is_probabilistic:
        raise ValueError(
            f"{model} is deterministic (its forecast has no samples, quantiles or std): "
            "call predict without quantiles"
        )
    try:
        qs = forecast.quantiles(levels)
    except ValueError as err:  # fixed quantiles at other levels
        raise ValueError(f"{model}: {err}") from None
    return {quantile_name(level): q for level, q in zip(levels, qs)}


def model_forecast(
    module: Any, batch: IrregularBatch, times: Tensor, quantiles: Sequence[float]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Model mean ``(B, M, C)`` and requested quantiles (normalized units; named by
    :func:`quantile_name`). A deterministic model asked for quantiles raises ``ValueError``."""
    with torch.no_grad():
        out = module.forecast(batch, times)
    return out.mean, named_quantiles(out, quantiles, type(module).__name__)


def split_forecast_frames(
    module: Any,
    datamodule: Any,
    fitted: FittedData,
    *,
    split: str = "val",
    max_series: int = 3,
    grid_points: int = 60,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Observed points and a dense forecast (mean, 5%/95% quantiles when available) for a
    few series of a data module split, in original units — the input of ``plot_forecast``.

    ``fitted`` maps the model's outputs back (the data state the model was fitted with); its
    task is the training task (forecast / extrapolation: the forecast starts at the end of
    each context; otherwise it spans the whole series).
    """
    datamodule.setup("fit")
    dataset = datamodule.datasets[split]
    if len(dataset) == 0:
        raise ValueError(f"the {split} split is empty")
    batch = dataset.collate(list(range(min(max_series, len(dataset)))))
    ctx, tgt = batch.context, batch.target
    last_ctx = ctx.times.gather(1, (ctx.lengths - 1).clamp_min(0).unsqueeze(1))
    end = torch.maximum(tgt.times.max(dim=1, keepdim=True).values, last_ctx)
    if fitted.task.kind in ("forecast", "extrapolation"):
        start = last_ctx  # forecast from the end of the context
    else:
        start = ctx.times[:, :1]  # interpolation: over the whole series
    steps = torch.linspace(0.0, 1.0, grid_points).unsqueeze(0)
    grid = start + (end - start) * steps
    with torch.no_grad():
        out = module.forecast(batch, grid)
    band = (0.05, 0.95)  # deterministic model: mean only
    mean = out.mean
    extra = named_quantiles(out, band, type(module).__name__) if out.has_quantiles(band) else {}
    forecast = fitted.to_frame(
        batch.series_ids, grid, mean, torch.ones_like(grid, dtype=torch.bool),
        channels=batch.channels, time_offset=batch.time_offset, extra=extra,
    ).rename(columns={"value": "mean"})
    observed = []
    for name, part in (("context", ctx), ("target", tgt)):
        frame = fitted.to_frame(
            batch.series_ids, part.times, part.values, part.mask, channels=batch.channels,
            time_offset=batch.time_offset, table=dataset.table, observed_columns=("value",),
        )
        frame["part"] = name
        observed.append(frame)
    return pd.concat(observed, ignore_index=True), forecast
