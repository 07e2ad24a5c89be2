"""The MLflow pyfunc model: its signature, and the input documented in docs/tracking.md (long
and wide) through the Python API and the `mlflow models predict` command (slow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models import Model

from tsode.api import Forecaster
from tsode.data import SyntheticICUDataModule
from tsode.pyfunc import CUTOFF_COLUMN, save_pyfunc_model

torch.set_num_threads(1)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tracking.md"
TINY_TRAINER = {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False}


def _documented() -> tuple[str, str, dict]:
    """The long and wide ``observations.csv`` blocks and the ``curl`` request body of the docs."""
    text = DOCS.read_text()
    section = text[text.index("## The logged model"):]
    blocks = re.findall(r"```csv\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "docs/tracking.md: expected a long and a wide ```csv block"
    body = re.search(r"-d '(\{.*?\})'", section, flags=re.S)
    assert body is not None, "docs/tracking.md: no curl request body"
    return blocks[0], blocks[1], json.loads(body.group(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Forecaster, Path]:
    """A forecaster fitted on a *wide* table with format="wide" (the long documented input
    was refused by such a model), saved as an MLflow model directory."""
    work = tmp_path_factory.mktemp("pyfunc")
    dm = SyntheticICUDataModule(num_series=24, seed=3)
    dm.setup()
    long = dm.table.to_long_frame()
    wide = long.pivot_table(index=["series_id", "time"], columns="channel", values="value")
    wide = wide.reset_index().rename_axis(columns=None)
    wide["age"] = wide["series_id"].str[-2:].astype(float)  # a static covariate
    fc = Forecaster("gru_dt", hidden_dim=4, trainer_kwargs=TINY_TRAINER, tracking=False,
                    verbose=False, work_dir=work / "outputs")
    fc.fit(wide, format="wide", static_cols=["age"], cutoff=24.0, batch_size=8)
    return fc, save_pyfunc_model(fc, work / "model")


def test_saved_model_signature_lists_the_input_columns(saved: tuple[Forecaster, Path]) -> None:
    fc, path = saved
    signature = Model.load(str(path)).signature
    assert signature is not None and signature.inputs is not None
    assert signature.inputs.required_input_names() == ["series_id", "time"]
    channels = ["heart_rate", "lactate", "map", "resp_rate", "temp"]
    assert fc.data.channels == channels
    assert signature.inputs.optional_input_names() == [
        "channel", "value", *channels, "age", CUTOFF_COLUMN
    ]
    assert signature.outputs.input_names() == ["series_id", "time", "channel", "mean"]
    params = {p.name: p.default for p in signature.params.params}
    assert params["horizon"] == pytest.approx(fc.data.default_horizon)
    assert {"step", "quantiles", "max_points_per_series", "cutoff", "cutoff_col"} <= set(params)


def test_documented_long_and_wide_inputs_forecast_alike(
    saved: tuple[Forecaster, Path], tmp_path: Path
) -> None:
    fc, path = saved
    long_csv, wide_csv, _ = _documented()
    (tmp_path / "long.csv").write_text(long_csv)
    (tmp_path / "wide.csv").write_text(wide_csv)
    long = pd.read_csv(tmp_path / "long.csv")
    wide = pd.read_csv(tmp_path / "wide.csv")
    model = mlflow.pyfunc.load_model(str(path))
    params = {"horizon": 4.0, "step": 2.0}
    from_long = model.predict(long, params=params)
    from_wide = model.predict(wide, params=params)
    pd.testing.assert_frame_equal(from_long, from_wide)
    assert sorted(from_long["series_id"].unique()) == ["a", "b"]
    assert set(from_long["channel"]) == set(fc.data.channels)
    last = long.groupby("series_id")["time"].max()
    for sid, rows in from_long.groupby("series_id"):
        np.testing.assert_allclose(sorted(rows["time"].unique()), last[sid] + np.array([2.0, 4.0]))
    assert from_long["mean"].notna().all()
    # the model forecasts as the forecaster does, and integer values (int64 columns, as a CSV
    # of whole numbers reads) pass the signature
    direct = fc.predict(long, horizon=4.0, step=2.0, progress=False)
    pd.testing.assert_frame_equal(from_long.reset_index(drop=True), direct)
    whole = long.assign(value=long["value"].round().astype("int64"))
    assert len(model.predict(whole, params=params)) == len(direct)


@pytest.mark.slow
def test_mlflow_models_predict_on_the_documented_input(
    saved: tuple[Forecaster, Path], tmp_path: Path
) -> None:
    """`mlflow models predict` on the docs' observations.csv (defaults) and the docs' JSON
    request body (with its params) returns forecasts for the series asked for."""
    fc, path = saved
    long_csv, _, body = _documented()
    (tmp_path / "observations.csv").write_text(long_csv)
    (tmp_path / "request.json").write_text(json.dumps(body))
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    observations = pd.read_csv(tmp_path / "observations.csv")
    for source, kind in (("observations.csv", "csv"), ("request.json", "json")):
        out = tmp_path / f"{kind}.json"
        done = subprocess.run(
            [mlflow_bin, "models", "predict", "-m", str(path), "-i", str(tmp_path / source),
             "-t", kind, "-o", str(out), "--env-manager", "local"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        forecast = pd.DataFrame(json.loads(out.read_text())["predictions"])
        assert list(forecast.columns) == ["series_id", "time", "channel", "mean"]
        assert forecast["mean"].notna().all()
        assert set(forecast["channel"]) == set(fc.data.channels)
        if kind == "csv":  # default horizon and step: the training task's, on a 24-point grid
            assert sorted(forecast["series_id"].unique()) == ["a", "b"]
            expected = fc.predict(observations, horizon=fc.data.default_horizon, progress=False)
        else:
            assert forecast["series_id"].unique().tolist() == ["a"]
            requested = pd.DataFrame(body["dataframe_split"]["data"],
                                     columns=body["dataframe_split"]["columns"])
            expected = fc.predict(requested, progress=False, **body["params"])
            assert sorted(forecast["time"].unique()) == [3.5, 5.5]  # last time 1.5 + 2, + 4
        np.testing.assert_allclose(forecast["time"], expected["time"])
        np.testing.assert_allclose(forecast["mean"], expected["mean"], rtol=1e-6)
