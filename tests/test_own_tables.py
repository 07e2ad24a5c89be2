"""Own tables end to end (issue 11): default value columns, dropped-series warnings,
forecasting from a cutoff, explicit splits, output precision and quiet, summarized fits."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tsode.api import Forecaster
from tsode.data import DataValidationError, TableDataModule

torch.set_num_threads(1)

TINY_TRAINER = {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False}


def wide_frame(num_series: int = 12, points: int = 8, seed: int = 0) -> pd.DataFrame:
    """Wide table: two channels, a static ``age``, a static ``unit`` and a label ``died``."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(num_series):
        times = np.sort(rng.choice(np.arange(1, 48), size=points, replace=False)).astype(float)
        for t in times:
            rows.append({
                "series_id": f"s{s:02d}", "time": t,
                "hr": float(np.round(70 + 10 * np.sin(t / 6 + s) + rng.normal(), 3)),
                "map": float(np.round(80 + 5 * np.cos(t / 8) + rng.normal(), 3)),
                "age": 40.0 + s, "unit": float(s % 3), "died": float(s % 2),
            })
    return pd.DataFrame(rows)


def tiny(model: str = "gru_dt", **kwargs) -> Forecaster:  # noqa: ANN003
    if model == "gru_dt":
        kwargs.setdefault("hidden_dim", 4)
    return Forecaster(model, trainer_kwargs=dict(TINY_TRAINER), tracking=False, verbose=False,
                      **kwargs)


# ---------------------------------------------------------------- 1. value_cols defaults


def test_declared_static_and_label_columns_are_not_channels(tmp_path: Path) -> None:
    frame = wide_frame()
    dm = TableDataModule(frame, static_cols=["age", "unit"], label_col="died", cutoff=24.0)
    dm.setup()
    assert dm.channels == ["hr", "map"]
    assert dm.static_names == ["age", "unit"]
    fc = tiny(work_dir=tmp_path).fit(frame, static_cols=["age", "unit"], label_col="died",
                                     cutoff=24.0)
    assert fc.data.channels == ["hr", "map"]
    # at predict, a table with only one of the static columns (and the label) still reads
    # them as non-channels instead of refusing them as unknown channels
    partial = frame.drop(columns=["unit"])
    out = fc.predict(partial, horizon=2.0, step=1.0, progress=False)
    assert set(out["channel"]) == {"hr", "map"}


def test_undeclared_per_series_columns_are_warned_about() -> None:
    frame = wide_frame()
    with pytest.warns(UserWarning, match=r"\['age', 'unit', 'died'\] hold one value per series"):
        dm = TableDataModule(frame, cutoff=24.0)
        dm.setup()
    assert dm.channels == ["hr", "map", "age", "unit", "died"]  # as asked, but warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TableDataModule(frame, value_cols=["hr", "map"], cutoff=24.0).setup()


# ---------------------------------------------------------------- 2. dropped series


def test_dropped_series_are_warned_with_counts_per_split_and_reason() -> None:
    frame = wide_frame(num_series=12)
    # three series end before the cutoff (no target); one has a single time point
    late = frame["series_id"].isin(["s00", "s01", "s02"]) & (frame["time"] > 24.0)
    frame = frame[~late]
    single = frame["series_id"] == "s03"
    frame = frame[~single | (frame["time"] == frame.loc[single, "time"].min())]
    splits = {"train": [f"s{i:02d}" for i in range(8)], "val": ["s08", "s09"],
              "test": ["s10", "s11"]}
    with pytest.warns(UserWarning) as record:
        dm = TableDataModule(frame, value_cols=["hr", "map"], static_cols=["age"],
                             cutoff=24.0, splits=splits)
        dm.setup()
    messages = [str(w.message) for w in record if "are not used" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in record]
    message = messages[0]
    assert "4 of 12 series are not used" in message
    assert "train: 1 with fewer than min_time_points=2 time points" in message
    assert "3 with nothing to predict after the cutoff" in message
    assert dm.dropped_series() == {"train": {"too_few_time_points": 1, "no_target": 3}}
    assert len(dm.datasets["train"]) == 4


# ---------------------------------------------------------------- 4. explicit splits


SPLITS = {"train": [f"s{i:02d}" for i in range(8)], "val": ["s08", "s09"], "test": ["s10", "s11"]}


def test_fit_with_explicit_splits_and_split_column(tmp_path: Path) -> None:
    frame = wide_frame()
    fc = tiny(work_dir=tmp_path).fit(frame, value_cols=["hr", "map"], cutoff=24.0,
                                     splits=SPLITS)
    assert fc.fit_summary["num_series"] == {"train": 8, "val": 2, "test": 2}
    # the same split from a column (any case, on some rows only); never a channel
    split_of = {sid: name for name, ids in SPLITS.items() for sid in ids}
    frame["fold"] = frame["series_id"].map(split_of).str.upper()
    frame.loc[frame.groupby("series_id").cumcount() == 1, "fold"] = None
    dm = TableDataModule(frame, static_cols=["age", "unit"], label_col="died",
                         split_col="fold", cutoff=24.0)
    dm.setup()
    assert dm.channels == ["hr", "map"]
    for name, ids in SPLITS.items():
        assert [dm.table.series_ids[i] for i in dm.split_indices[name]] == ids
    fc = tiny(work_dir=tmp_path).fit(frame, static_cols=["age", "unit"], label_col="died",
                                     split_col="fold", cutoff=24.0)
    assert fc.fit_summary["num_series"] == {"train": 8, "val": 2, "test": 2}
    assert fc.data.channels == ["hr", "map"]


def test_split_column_errors_name_the_series_and_values() -> None:
    frame = wide_frame()
    frame["fold"] = "train"
    frame.loc[frame.index[3], "fold"] = "val"
    with pytest.raises(DataValidationError, match=r"series 's00' has different values in split "
                       r"column 'fold': 'train' \(row 0\), 'val' \(row 3\)"):
        TableDataModule(frame, split_col="fold", value_cols=["hr"]).setup()
    frame["fold"] = "validation"
    with pytest.raises(DataValidationError, match=r"split value 'validation' is not one of "
                       r"\['train', 'val', 'test'\]"):
        TableDataModule(frame, split_col="fold", value_cols=["hr"]).setup()
    with pytest.raises(ValueError, match="either splits= .* or split_col="):
        TableDataModule(frame, split_col="fold", splits=SPLITS)
    with pytest.raises(ValueError, match=r"unknown split names \['valid'\]"):
        TableDataModule(frame, splits={"train": ["s00"], "valid": ["s01"]})
