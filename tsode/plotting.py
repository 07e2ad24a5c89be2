"""Forecast plots: observed points, predicted mean and an uncertainty band, per series and channel.

Works on the tidy tables the user surface produces (see `tsode.api.Forecaster.predict`):

    observed  columns ``series_id, time, channel, value[, part]``   (one row per observation;
              ``part`` = ``"context"`` / ``"target"`` draws held-out targets as hollow points)
    forecast  columns ``series_id, time, channel, mean[, q<level>...]`` (one row per prediction)

Figures are drawn with matplotlib's non-interactive Agg backend, so plotting works on
headless machines and inside training callbacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tsode.forecasts import quantile_level  # noqa: E402


def quantile_columns(forecast: pd.DataFrame) -> dict[float, str]:
    """Map quantile level -> column name for every ``q<level>`` column of a forecast table
    (named as :func:`tsode.forecasts.quantile_name` writes them)."""
    levels: dict[float, str] = {}
    for column in forecast.columns:
        level = quantile_level(column)
        if level is not None:
            levels[level] = str(column)
    return dict(sorted(levels.items()))


def _band_columns(forecast: pd.DataFrame) -> tuple[str, str, str] | None:
    """(lower column, upper column, label) for the widest symmetric-ish quantile band, if any."""
    levels = quantile_columns(forecast)
    lower = [q for q in levels if q < 0.5]
    upper = [q for q in levels if q > 0.5]
    if not lower or not upper:
        return None
    lo, hi = min(lower), max(upper)
    return levels[lo], levels[hi], f"{lo:g}–{hi:g} quantiles"


def plot_forecast(
    observed: pd.DataFrame,
    forecast: pd.DataFrame,
    *,
    series_ids: Sequence[Any] | None = None,
    channels: Sequence[str] | None = None,
    max_series: int = 3,
    max_channels: int = 4,
    title: str | None = None,
) -> Figure:
    """Plot observed points, the predicted mean and (when present) a quantile band.

    Args:
        observed: long table with columns ``series_id, time, channel, value`` (original units).
        forecast: tidy table with columns ``series_id, time, channel, mean`` and optionally
            quantile columns ``q0.1``, ``q0.9``, ...; the band spans the lowest quantile below
            0.5 to the highest above 0.5.
        series_ids: series to draw (default: the first ``max_series`` ids of ``forecast``).
        channels: channels to draw (default: the first ``max_channels`` forecast channels that
            have at least one observation or prediction in the chosen series).
        max_series: cap on the number of series (rows of the grid).
        max_channels: cap on the number of channels (columns of the grid).
        title: optional figure title.

    Returns:
        A matplotlib Figure with one axis per (series, channel); time in hours on the x axis.

    Raises:
        ValueError: if a required column is missing, or a requested series / channel is absent.
    """
    for name, table, required in (
        ("observed", observed, ("series_id", "time", "channel", "value")),
        ("forecast", forecast, ("series_id", "time", "channel", "mean")),
    ):
        missing = [c for c in required if c not in table.columns]
        if missing:
            raise ValueError(
                f"plot_forecast: the {name} table lacks column(s) {missing}; "
                f"it has {list(table.columns)}"
            )
    if forecast.empty:
        raise ValueError("plot_forecast: the forecast table is empty")

    if series_ids is None:
        series_ids = list(pd.unique(forecast["series_id"]))[:max_series]
    else:
        absent = [s for s in series_ids if not (forecast["series_id"] == s).any()]
        if absent:
            raise ValueError(f"plot_forecast: series {absent} not in the forecast table")
        series_ids = list(series_ids)
    chosen_fc = forecast[forecast["series_id"].isin(series_ids)]
    chosen_obs = observed[observed["series_id"].isin(series_ids)]
    if channels is None:
        present = set(chosen_obs["channel"]) | set(chosen_fc["channel"])
        channels = [c for c in pd.unique(forecast["channel"]) if c in present][:max_channels]
    else:
        absent = [c for c in channels if not (forecast["channel"] == c).any()]
        if absent:
            raise ValueError(f"plot_forecast: channel(s) {absent} not in the forecast table")
        channels = list(channels)

    band = _band_columns(forecast)
    n_rows, n_cols = len(series_ids), len(channels)
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(3.6 * n_cols, 2.6 * n_rows),
        squeeze=False,
        constrained_layout=True,
    )
    for row, series_id in enumerate(series_ids):
        for col, channel in enumerate(channels):
            ax = axes[row][col]
            obs = chosen_obs[
                (chosen_obs["series_id"] == series_id) & (chosen_obs["channel"] == channel)
            ].sort_values("time")
            fc = chosen_fc[
                (chosen_fc["series_id"] == series_id) & (chosen_fc["channel"] == channel)
            ].sort_values("time")
            if band is not None and not fc.empty:
                lo, hi, label = band
                ax.fill_between(
                    fc["time"], fc[lo], fc[hi], color="tab:blue", alpha=0.25, label=label
                )
            if not fc.empty:
                ax.plot(fc["time"], fc["mean"], color="tab:blue", lw=1.5, label="predicted mean")
            if not obs.empty and "part" in obs.columns:
                context = obs[obs["part"] != "target"]
                target = obs[obs["part"] == "target"]
                ax.scatter(context["time"], context["value"], s=10, color="black", zorder=3,
                           label="observed (context)")
                ax.scatter(target["time"], target["value"], s=14, facecolors="none",
                           edgecolors="tab:red", zorder=3, label="observed (target)")
            elif not obs.empty:
                ax.scatter(
                    obs["time"], obs["value"], s=10, color="black", zorder=3, label="observed"
                )
            ax.set_title(f"{series_id} · {channel}", fontsize=9)
            if row == n_rows - 1:
                ax.set_xlabel("time (h)")
            ax.tick_params(labelsize=8)
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
