"""MLflow tracking: run contents read back through the MLflow client, the logged pyfunc model,
FAILED / KILLED runs, rank-0-only logging, and a real `mlflow server` (slow)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader, TensorDataset

from tsode.api import Forecaster
from tsode.data import SyntheticICUDataModule
from tsode.tracking import ERROR_TAG, MLflowLogger, flatten_config, resolve_tracking_uri

torch.set_num_threads(1)

FAST_TRAINER = {
    "max_epochs": 2,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "log_every_n_steps": 1,
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _frame(num_series: int = 40) -> pd.DataFrame:
    dm = SyntheticICUDataModule(num_series=num_series, seed=1)
    dm.setup()
    return dm.table.to_long_frame()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory):
    """One tracked fit with the *default* store (no MLFLOW_TRACKING_URI, cwd = a temp dir)."""
    work = tmp_path_factory.mktemp("tracked")
    frame = _frame()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        fc = Forecaster(
            "gru_dt", hidden_dim=8, trainer_kwargs=FAST_TRAINER, experiment_name="tracking-test",
            work_dir=work / "outputs", verbose=False,
        ).fit(frame, cutoff=24.0, batch_size=16)
    client = MlflowClient(fc.fit_summary["tracking_uri"])
    return fc, frame, work, client


def _artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    paths = []
    for item in client.list_artifacts(run_id, path):
        paths.extend(_artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return paths


def test_default_store_is_sqlite_file_in_working_directory(tracked) -> None:
    fc, _, work, _ = tracked
    assert fc.fit_summary["tracking_uri"] == f"sqlite:///{work.resolve() / 'mlflow.db'}"
    assert (work / "mlflow.db").is_file()
    assert (work / "mlruns").is_dir()  # artifacts next to it


def test_run_holds_config_metrics_data_checkpoint_plot_and_model(tracked) -> None:
    fc, _, _, client = tracked
    run = client.get_run(fc.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["config.model.name"] == "gru_dt"
    assert params["config.model.init_args.hidden_dim"] == "8"
    assert params["config.data.cutoff"] == "24.0"
    assert params["config.trainer.max_epochs"] == "2"
    history = client.get_metric_history(fc.run_id, "val/mse")
    assert len(history) == 2  # one value per epoch
    assert {"train/loss_step", "train/loss_epoch", "val/mae", "val/mse_orig"} <= set(run.data.metrics)

    artifacts = set(_artifact_paths(client, fc.run_id))
    assert {"config/config.yaml", "data/summary.json", "data/normalization.json",
            "plots/forecast_val.png", "model/MLmodel"} <= artifacts
    assert any(p.startswith("checkpoints/") and p.endswith(".ckpt") for p in artifacts)

    local = Path(client.download_artifacts(fc.run_id, "config/config.yaml"))
    config = yaml.safe_load(local.read_text())
    assert config["model"]["init_args"]["num_channels"] == len(fc.data.channels)
    summary = json.loads(Path(client.download_artifacts(fc.run_id, "data/summary.json")).read_text())
    assert summary["num_series"] == 40
    stats = json.loads(Path(client.download_artifacts(fc.run_id, "data/normalization.json")).read_text())
    assert stats["names"] == fc.data.channels
    np.testing.assert_allclose(stats["mean"], fc.data.normalizer.mean)
    np.testing.assert_allclose(stats["std"], fc.data.normalizer.std)
    png = Path(client.download_artifacts(fc.run_id, "plots/forecast_val.png")).read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000


def test_logged_pyfunc_model_predicts_like_the_forecaster(tracked) -> None:
    fc, frame, _, _ = tracked
    mlflow.set_tracking_uri(fc.fit_summary["tracking_uri"])
    model = mlflow.pyfunc.load_model(f"runs:/{fc.run_id}/model")
    subset = frame[frame["series_id"].isin(frame["series_id"].unique()[:5])]
    served = model.predict(subset, params={"horizon": 6.0, "step": 2.0})
    direct = fc.predict(subset, horizon=6.0, step=2.0, progress=False)
    pd.testing.assert_frame_equal(served.reset_index(drop=True), direct)
    default = model.predict(subset)  # default horizon: what the training task left to predict
    assert default["time"].max() > subset["time"].max()


def test_logged_model_has_a_signature_with_the_input_columns(tracked) -> None:
    fc, frame, _, _ = tracked
    mlflow.set_tracking_uri(fc.fit_summary["tracking_uri"])
    signature = mlflow.models.get_model_info(f"runs:/{fc.run_id}/model").signature
    assert signature is not None
    # fitted on a long table with the default names: id and time required; the long and
    # the wide format's columns (one per fitted channel) and the cutoff column optional
    assert signature.inputs.required_input_names() == ["series_id", "time"]
    assert signature.inputs.optional_input_names() == [
        "channel", "value", *fc.data.channels, "cutoff"
    ]
    assert signature.outputs.input_names() == ["series_id", "time", "channel", "mean"]
    assert {p.name for p in signature.params.params} == {
        "horizon", "step", "quantiles", "max_points_per_series", "cutoff", "cutoff_col"
    }


class _Toy(pl.LightningModule):
    """Tiny module whose training step raises ``error`` (to crash a tracked run)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.error = error

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.log("train/loss", 1.0)
        raise self.error

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2)


def _crash(tmp_path: Path, error: BaseException) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLflowLogger(experiment_name="crash", tracking_uri=uri, save_dir=str(tmp_path))
    trainer = pl.Trainer(
        max_epochs=1, logger=logger, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((type(error), SystemExit)):
            trainer.fit(_Toy(error))
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores Ctrl-C after an interrupt
    return MlflowClient(uri), logger.run_id


def test_crashed_run_is_failed_with_the_error(tmp_path: Path) -> None:
    client, run_id = _crash(tmp_path, ValueError("boom: bad batch"))
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[ERROR_TAG] == "ValueError: boom: bad batch"
    text = Path(client.download_artifacts(run_id, "error.txt")).read_text()
    assert "Traceback" in text and "boom: bad batch" in text


def test_interrupted_run_is_killed(tmp_path: Path) -> None:
    client, run_id = _crash(tmp_path, KeyboardInterrupt())
    assert client.get_run(run_id).info.status == "KILLED"


def test_only_rank_zero_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLflowLogger(experiment_name="ranks", tracking_uri=uri)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger.log_metrics({"val/mse": 1.0}, step=0)
    logger.log_config({"model": {"name": "x"}})
    logger.log_hyperparams({"lr": 0.1})
    assert not logger.initialized  # no run was created from a non-zero rank
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    logger.log_metrics({"val/mse": 1.0}, step=0)
    assert logger.initialized
    assert MlflowClient(uri).get_run(logger.run_id).data.metrics["val/mse"] == 1.0


def test_tracking_uri_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri() == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"  # recipe wins


def test_flatten_config() -> None:
    flat = flatten_config({"a": {"b": 1, "c": [1, 2]}, "cb": [{"x": 1}, 3]}, prefix="config.")
    assert flat == {"config.a.b": 1, "config.a.c": [1, 2], "config.cb.0.x": 1, "config.cb.1": 3}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log_path: Path, seconds: float) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"server at {url} did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(1)


def _stop(server: subprocess.Popen) -> None:
    """Terminate the server's process group (kill it if it does not stop)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.mark.slow
def test_fit_tracked_on_a_real_mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log_file = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_until_up(f"{uri}/health", server, tmp_path / "server.log", 120)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        fc = Forecaster(
            "gru_dt", hidden_dim=8, trainer_kwargs={**FAST_TRAINER, "max_epochs": 1},
            experiment_name="server-test", work_dir=tmp_path / "outputs", verbose=False,
        ).fit(_frame(30), cutoff=24.0, batch_size=16)
        assert fc.fit_summary["tracking_uri"] == uri
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default
        client = MlflowClient(uri)
        run = client.get_run(fc.run_id)
        assert run.info.status == "FINISHED"
        assert "val/mse" in run.data.metrics
        assert run.data.params["config.model.name"] == "gru_dt"
        artifacts = set(_artifact_paths(client, fc.run_id))
        assert {"config/config.yaml", "plots/forecast_val.png", "model/MLmodel"} <= artifacts
        assert any((tmp_path / "server-artifacts").rglob("forecast_val.png"))  # stored by the server
    finally:
        _stop(server)
        log_file.close()


@pytest.mark.slow
def test_logged_model_served_over_http(tracked, tmp_path: Path) -> None:
    """`mlflow models serve` on the logged model answers /invocations like Forecaster.predict."""
    fc, frame, _, _ = tracked
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # mlflow runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": fc.fit_summary["tracking_uri"],
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    log_file = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"runs:/{fc.run_id}/model",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log", 180)
        subset = frame[frame["series_id"].isin(frame["series_id"].unique()[:3])]
        body = {"dataframe_split": json.loads(subset.to_json(orient="split", index=False)),
                "params": {"horizon": 4.0, "step": 2.0}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            served = pd.DataFrame(json.loads(response.read())["predictions"])
        direct = fc.predict(subset, horizon=4.0, step=2.0, progress=False)
        assert list(served.columns) == list(direct.columns)
        assert served["series_id"].tolist() == direct["series_id"].tolist()
        np.testing.assert_allclose(served["time"], direct["time"])
        np.testing.assert_allclose(served["mean"], direct["mean"], rtol=1e-5)
    finally:
        _stop(server)
        log_file.close()
