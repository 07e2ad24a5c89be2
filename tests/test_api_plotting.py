"""plot_forecast: one axis per (series, channel), band from quantile columns, clear errors."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from tsode.plotting import plot_forecast, quantile_columns


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    observed = pd.DataFrame({
        "series_id": ["a", "a", "a", "b", "b"],
        "time": [0.0, 1.0, 3.5, 0.5, 4.0],
        "channel": ["hr", "hr", "hr", "map", "hr"],
        "value": [80.0, 82.0, 90.0, 70.0, 75.0],
        "part": ["context", "context", "target", "context", "target"],
    })
    times = np.repeat([2.0, 3.0, 4.0], 2)
    forecast = pd.DataFrame({
        "series_id": ["a", "b"] * 3 + ["a", "b"] * 3,
        "time": np.concatenate([times, times]),
        "channel": ["hr"] * 6 + ["map"] * 6,
        "mean": np.linspace(70, 90, 12),
    })
    forecast["q0.1"] = forecast["mean"] - 5
    forecast["q0.9"] = forecast["mean"] + 5
    return observed, forecast


def test_grid_band_and_points() -> None:
    observed, forecast = _tables()
    fig = plot_forecast(observed, forecast, title="t")
    assert matplotlib.get_backend().lower() == "agg"
    axes = fig.axes
    assert len(axes) == 4  # 2 series x 2 channels
    assert [ax.get_title() for ax in axes] == ["a · hr", "a · map", "b · hr", "b · map"]
    a_hr = axes[0]
    line = a_hr.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [2.0, 3.0, 4.0])
    bands = [c for c in a_hr.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    ys = bands[0].get_paths()[0].vertices[:, 1]
    mean = forecast.query("series_id == 'a' and channel == 'hr'")["mean"]
    assert ys.min() == pytest.approx(mean.min() - 5) and ys.max() == pytest.approx(mean.max() + 5)
    scatter_counts = [len(c.get_offsets()) for c in a_hr.collections if not isinstance(c, PolyCollection)]
    assert sorted(scatter_counts) == [1, 2]  # 2 context points, 1 held-out target


def test_selection_and_errors() -> None:
    observed, forecast = _tables()
    fig = plot_forecast(observed, forecast, series_ids=["b"], channels=["map"])
    assert [ax.get_title() for ax in fig.axes] == ["b · map"]
    assert quantile_columns(forecast) == {0.1: "q0.1", 0.9: "q0.9"}
    no_band = plot_forecast(observed, forecast.drop(columns=["q0.1", "q0.9"]))
    assert not any(isinstance(c, PolyCollection) for ax in no_band.axes for c in ax.collections)
    with pytest.raises(ValueError, match=r"forecast table lacks column\(s\) \['mean'\]"):
        plot_forecast(observed, forecast.drop(columns=["mean"]))
    with pytest.raises(ValueError, match=r"series \['zz'\] not in the forecast"):
        plot_forecast(observed, forecast, series_ids=["zz"])
    with pytest.raises(ValueError, match="empty"):
        plot_forecast(observed, forecast.iloc[:0])
