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
from tsode.data import DataValidationError, TableDataModule, TaskConfig

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
    dm = TableDataModule(frame, static_cols=["age", "unit"], label_col="died", task=TaskConfig(cutoff=24.0))
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
        dm = TableDataModule(frame, task=TaskConfig(cutoff=24.0))
        dm.setup()
    assert dm.channels == ["hr", "map", "age", "unit", "died"]  # as asked, but warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TableDataModule(frame, value_cols=["hr", "map"], task=TaskConfig(cutoff=24.0)).setup()


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
        dm = TableDataModule(
            frame,
            value_cols=["hr", "map"],
            static_cols=["age"],
            task=TaskConfig(cutoff=24.0),
            splits=splits,
        )
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
    dm = TableDataModule(
        frame,
        static_cols=["age", "unit"],
        label_col="died",
        split_col="fold",
        task=TaskConfig(cutoff=24.0),
    )
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


# ---------------------------------------------------------------- 3. forecasting from a time


@pytest.fixture(scope="module")
def fitted_wide(tmp_path_factory: pytest.TempPathFactory) -> Forecaster:
    fc = tiny(work_dir=tmp_path_factory.mktemp("work"))
    return fc.fit(wide_frame(), static_cols=["age", "unit"], label_col="died", cutoff=24.0,
                  time_origin="absolute")  # cutoffs in hours of the time column


def test_predict_from_a_cutoff_uses_only_earlier_observations(fitted_wide: Forecaster) -> None:
    frame = wide_frame()
    before = frame[frame["time"] <= 20.0]  # closed boundary (the default): t <= cutoff
    out = fitted_wide.predict(frame, cutoff=20.0, horizon=4.0, step=2.0, progress=False)
    cut_by_hand = fitted_wide.predict(before, horizon=4.0, step=2.0, progress=False)
    # forecasts start at the cutoff (not at each series' last row) ...
    assert sorted(out["time"].unique()) == [22.0, 24.0]
    # ... and equal forecasts from the table cut by hand, shifted to the cutoff's grid
    grid = before.groupby("series_id")["time"].max()
    assert (grid < 20.0).any()  # so the grids differ and the test means something
    forced = fitted_wide.predict(before, times=[22.0, 24.0], progress=False)
    pd.testing.assert_frame_equal(out, forced)
    assert len(cut_by_hand) == len(out)
    # per series: a mapping series_id -> cutoff; series it does not name are skipped
    per = fitted_wide.predict(frame, cutoff={"s00": 10.0, "s01": 30.0}, horizon=2.0, step=2.0,
                              progress=False)
    assert per.groupby("series_id")["time"].max().to_dict() == {"s00": 12.0, "s01": 32.0}
    one = fitted_wide.predict(frame[frame["series_id"] == "s00"].query("time <= 10"),
                              times=[12.0], progress=False)
    # the same series alone or in a batch: equal up to float32 rounding (one ulp, ~1.2e-7)
    np.testing.assert_allclose(per[per["series_id"] == "s00"]["mean"], one["mean"], rtol=2.4e-7)
    with pytest.raises(ValueError, match=r"cutoff given for series 'nope' that are not in"):
        fitted_wide.predict(frame, cutoff={"nope": 3.0}, horizon=2.0)
    with pytest.raises(ValueError, match="cutoff must be finite"):
        fitted_wide.predict(frame, cutoff=float("nan"), horizon=2.0)
    with pytest.warns(UserWarning, match="without observations before their cutoff skipped"):
        early = fitted_wide.predict(frame, cutoff=0.0, horizon=2.0, progress=False)
    assert early.empty


def test_predict_cutoff_boundary_is_the_training_context_boundary(tmp_path: Path) -> None:
    frame = wide_frame(num_series=6)
    at = frame.groupby("series_id")["time"].nth(3)  # an observation exactly at the cutoff
    sid, t = frame.loc[at.index[0], "series_id"], float(at.iloc[0])
    # default time_origin="series_start": a cutoff counts hours since the series' first time
    relative = t - frame.loc[frame["series_id"] == sid, "time"].min()
    for boundary, keep in (("closed", frame["time"] <= t), ("open", frame["time"] < t)):
        fc = tiny(work_dir=tmp_path).fit(frame, value_cols=["hr", "map"], cutoff=24.0,
                                         context_boundary=boundary, split_fractions=(0.5, 0.5, 0))
        out = fc.predict(frame, cutoff=pd.Series({sid: relative}), horizon=1.0, step=1.0,
                         progress=False)
        assert out["time"].unique().tolist() == [t + 1.0]
        mine = frame[(frame["series_id"] == sid) & keep]
        by_hand = fc.predict(mine, times=[t + 1.0], progress=False)
        np.testing.assert_array_equal(out["mean"], by_hand["mean"])


def test_pyfunc_cutoff_params(fitted_wide: Forecaster, tmp_path: Path) -> None:
    import mlflow.pyfunc

    from tsode.pyfunc import save_pyfunc_model

    model = mlflow.pyfunc.load_model(str(save_pyfunc_model(fitted_wide, tmp_path / "model")))
    frame = wide_frame()
    params = {"horizon": 4.0, "step": 2.0}
    out = model.predict(frame, params={**params, "cutoff": 20.0})
    expected = fitted_wide.predict(frame, cutoff=20.0, horizon=4.0, step=2.0, progress=False)
    pd.testing.assert_frame_equal(out, expected)
    # per series: a column of cutoffs (one value per series; the column is no channel), named
    # as the signature declares it (MLflow drops the columns a signature does not declare)
    per = frame.assign(cutoff=frame["series_id"].map({"s00": 10.0, "s01": 30.0}))
    out = model.predict(per, params={**params, "cutoff_col": "cutoff"})
    expected = fitted_wide.predict(frame, cutoff={"s00": 10.0, "s01": 30.0}, horizon=4.0,
                                   step=2.0, progress=False)
    pd.testing.assert_frame_equal(out, expected)
    with pytest.raises(Exception, match="put the cutoffs in column 'cutoff'"):
        model.predict(per.rename(columns={"cutoff": "cut"}), params={**params, "cutoff_col": "cut"})
    per.loc[per.index[0], "cutoff"] = 11.0
    with pytest.raises(Exception, match="series 's00' has different cutoffs in column 'cutoff'"):
        model.predict(per, params={**params, "cutoff_col": "cutoff"})


# ---------------------------------------------------------------- 5. output precision


def test_outputs_carry_no_float32_noise(fitted_wide: Forecaster, tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from tsode.prediction_writer import ForecastWriter

    frame = wide_frame()
    out = fitted_wide.predict(frame, horizon=2.0, step=1.0, progress=False)
    assert out["mean"].dtype == np.float64
    shortest = [float(str(np.float32(v))) for v in out["mean"]]
    np.testing.assert_array_equal(out["mean"].to_numpy(), shortest)
    # observations written by `tsode predict` (ForecastWriter) are the source's values
    dm = TableDataModule(
        frame,
        static_cols=["age", "unit"],
        label_col="died",
        task=TaskConfig(cutoff=24.0),
        time_origin="absolute",
        split_fractions=(0.5, 0.25, 0.25),
    )
    path = tmp_path / "forecasts.csv"
    trainer = pl.Trainer(callbacks=[ForecastWriter(output=str(path))], logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(fitted_wide.model, datamodule=dm)
    written = pd.read_csv(path).dropna(subset=["observed"])
    source = frame.melt(["series_id", "time"], ["hr", "map"], "channel", "source")
    joined = written.merge(source, on=["series_id", "time", "channel"], how="left")
    assert len(joined) > 10 and joined["source"].notna().all()
    np.testing.assert_array_equal(joined["observed"], joined["source"])
    # the observed points of forecast_split (plots) too
    observed, _ = fitted_wide.forecast_split(dm, split="test", max_series=2)
    joined = observed.merge(source, on=["series_id", "time", "channel"], how="left")
    np.testing.assert_array_equal(joined["value"], joined["source"])


# ---------------------------------------------------------------- 6. progress, 8. warnings

NOISE = (
    "dirpath has changed",
    "configure_optimizers",
    "is an empty generator",
    "training_step` returned `None`",
    "training_step returned None",
    "smaller than the logging interval",
)


@pytest.mark.parametrize("model", ["gru_dt", "locf"])
def test_fit_off_a_terminal_logs_a_line_per_epoch_and_no_noise(
    model: str, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    frame = wide_frame()
    trainer = {"max_epochs": 2, "enable_model_summary": False, "log_every_n_steps": 50}
    fc = Forecaster(model, trainer_kwargs=trainer, tracking=False, verbose=False,
                    work_dir=tmp_path, **({"hidden_dim": 4} if model == "gru_dt" else {}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fc.fit(frame, value_cols=["hr", "map"], cutoff=24.0, batch_size=4)
    out = capfd.readouterr()  # stdout / stderr are pipes here, not terminals
    assert "\r" not in out.out and "\r" not in out.err
    lines = [line for line in out.out.splitlines() if line.startswith("epoch ")]
    epochs = 2 if model == "gru_dt" else 1  # a parameter-free baseline runs one epoch
    assert len(lines) == epochs, out.out
    assert "train/loss" in lines[0] or model == "locf"
    assert "val/mse" in lines[-1]
    noise = [str(w.message) for w in caught if any(n in str(w.message) for n in NOISE)]
    assert not noise
