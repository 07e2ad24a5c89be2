"""`tsode fit` / `test` / `predict` on the own-table recipe template, in process: the end-of-fit
summary, test and predict runs as child runs of the fit in MLflow (with the forecasts as an
artifact), `--predictions.cutoff`, per-epoch lines instead of progress bars off a terminal,
no meaningless warnings, and `Forecaster.evaluate` logged when tracking is on."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tsode.api import Forecaster
from tsode.cli import main

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "table_forecast.yaml"
TINY = [
    "--data.init_args.data", str(REPO / "datasets" / "samples" / "icu_wide.csv"),
    "--trainer.max_epochs", "2",
    "--trainer.enable_model_summary", "false",
    "--model.init_args.hidden_dim", "4",
]
NOISE = ("dirpath has changed", "smaller than the logging interval", "configure_optimizers",
         "empty generator", "training_step")


def test_fit_summary_and_child_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capfd: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(RECIPE), *TINY]) == 0
        out = capfd.readouterr().out
        # end-of-fit summary: run id, best checkpoint, best val/mse, the next commands
        run_id = re.search(r"MLflow run:\s+([0-9a-f]{32})", out).group(1)
        ckpt = re.search(r"best checkpoint: (\S+\.ckpt)", out).group(1)
        assert Path(ckpt).is_file()
        assert re.search(r"best val/mse: [0-9.e+-]+", out)
        assert f"tsode test --config {RECIPE} --ckpt_path {ckpt}" in out
        # not a terminal: a line per epoch, no carriage-return progress frames
        assert "\r" not in out
        assert len(re.findall(r"^epoch \d+/2 .*val/mse", out, flags=re.M)) == 2

        assert main(["test", "--config", str(RECIPE), *TINY, "--ckpt_path", ckpt]) == 0
        output = tmp_path / "forecasts.csv"
        assert main(["predict", "--config", str(RECIPE), *TINY, "--ckpt_path", ckpt,
                     "--predictions.output", str(output), "--predictions.cutoff", "12",
                     "--predictions.horizon", "6"]) == 0
    noise = [str(w.message) for w in caught if any(n in str(w.message) for n in NOISE)]
    assert not noise

    client = MlflowClient(uri)
    fit_run = client.get_run(run_id)
    runs = client.search_runs([fit_run.info.experiment_id])
    children = {r.info.run_name: r for r in runs if r.info.run_id != run_id}
    assert set(children) == {"table_forecast-test", "table_forecast-predict"}
    for child in children.values():
        assert child.data.tags["mlflow.parentRunId"] == run_id
        assert child.info.status == "FINISHED"
    assert "test/mse" in children["table_forecast-test"].data.metrics
    predict_id = children["table_forecast-predict"].info.run_id
    assert [a.path for a in client.list_artifacts(predict_id, "predictions")] == [
        "predictions/forecasts.csv"]
    # forecasts from 12 h after each series' start for 6 h
    forecasts = pd.read_csv(output)
    starts = pd.read_csv(TINY[1]).groupby("series_id")["time"].min()
    since = forecasts["time"] - starts.loc[forecasts["series_id"]].to_numpy()
    assert len(forecasts) and since.min() > 12.0 and since.max() <= 18.0 + 1e-6


def test_evaluate_is_logged_as_a_child_run(tmp_path: Path) -> None:
    frame = pd.read_csv(REPO / "datasets" / "samples" / "icu_wide.csv")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fc = Forecaster("gru_dt", hidden_dim=4, tracking_uri=uri, work_dir=tmp_path, verbose=False,
                    trainer_kwargs={"max_epochs": 1, "enable_model_summary": False})
    fc.fit(frame, static_cols=["icu_unit"], label_col="lactate_high", cutoff=24.0)
    scores = fc.evaluate(frame)
    client = MlflowClient(uri)
    child = client.get_run(fc.evaluation_run_id)
    assert child.data.tags["mlflow.parentRunId"] == fc.run_id
    assert child.data.metrics["eval/all/mse"] == pytest.approx(scores.loc["all", "mse"])
    assert child.data.metrics["eval/heart_rate/n_obs"] == scores.loc["heart_rate", "n_obs"]
    assert [a.path for a in client.list_artifacts(child.info.run_id, "evaluation")] == [
        "evaluation/evaluation.csv"]
