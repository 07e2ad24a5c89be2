"""Resumable fits: last.ckpt in a stable place; a resumed fit reproduces the uninterrupted one
and continues its MLflow run."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tsode.api import Forecaster

torch.set_num_threads(1)


class _ValHistory(Callback):
    """val/mse at the end of every (non-sanity) validation, by epoch, and a torch random draw
    at the first training batch of each epoch (what a stochastic model would draw)."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, float] = {}
        self.draws: dict[int, float] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.draws.setdefault(trainer.current_epoch, float(torch.rand(())))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.by_epoch[trainer.current_epoch] = float(trainer.callback_metrics["val/mse"])


@pytest.fixture(scope="module")
def frame(synthetic_long_frame) -> pd.DataFrame:  # noqa: ANN001
    full = synthetic_long_frame(12)
    return full[full["series_id"].isin(full["series_id"].unique()[:10])]


def _fit(
    frame: pd.DataFrame, work: Path, epochs: int, resume: bool = False, tracking: bool = False,
    uri: str | None = None,
) -> tuple[Forecaster, _ValHistory]:
    history = _ValHistory()
    fc = Forecaster(
        "gru_dt", hidden_dim=4, tracking=tracking, tracking_uri=uri, work_dir=work, verbose=False,
        patience=None,
        trainer_kwargs={"max_epochs": epochs, "enable_progress_bar": False,
                        "enable_model_summary": False, "callbacks": [history]},
    )
    return fc.fit(frame, resume=resume, cutoff=24.0, batch_size=4), history


def test_resumed_fit_reproduces_uninterrupted_validation_metrics(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    full, full_history = _fit(frame, tmp_path / "full", 3)
    first, first_history = _fit(frame, tmp_path / "split", 2)  # "killed" after epoch 2
    last = first.resume_dir() / "last.ckpt"
    assert last.is_file()
    resumed, resumed_history = _fit(frame, tmp_path / "split", 3, resume=True)
    assert sorted(full_history.by_epoch) == [0, 1, 2]
    assert sorted(resumed_history.by_epoch) == [2]  # only the missing epoch ran
    combined = {**first_history.by_epoch, **resumed_history.by_epoch}
    assert combined == full_history.by_epoch  # identical, not just close
    assert {**first_history.draws, **resumed_history.draws} == full_history.draws  # RNG state
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_without_checkpoint_warns_and_trains_from_scratch(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    expected = (
        f"Forecaster.fit(resume=True): no last checkpoint in "
        f"{tmp_path / 'resume' / 'tsode' / 'forecaster-gru_dt'}; training from scratch"
    )
    with pytest.warns(UserWarning) as record:
        _, history = _fit(frame, tmp_path, 1, resume=True)
    assert expected in [str(w.message) for w in record]
    assert sorted(history.by_epoch) == [0]


@pytest.mark.slow
def test_resumed_fit_continues_the_mlflow_run(frame: pd.DataFrame, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, _ = _fit(frame, tmp_path, 2, tracking=True, uri=uri)
    client = MlflowClient(uri)
    client.update_run(first.run_id, status="RUNNING")  # as a SIGKILLed fit leaves it
    resumed, _ = _fit(frame, tmp_path, 3, resume=True, tracking=True, uri=uri)
    assert resumed.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["tsode.resumed"] == "true"
    history = client.get_metric_history(first.run_id, "val/mse")
    assert sorted(m.step for m in history) == sorted({m.step for m in history})  # no duplicates
    assert len(history) == 3  # epochs 0, 1 from the first fit, 2 from the resumed one
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]  # no second run


_RECIPE = """\
seed_everything: 3
model:
  class_path: tsode.models.baselines.GRUDelta
  init_args: {hidden_dim: 4, decoder_hidden_dim: 4}
data:
  class_path: tsode.data.SyntheticICUDataModule
  init_args: {num_series: 12, loader: {batch_size: 4}, task: {kind: forecast, cutoff: 24.0}, seed: 0}
trainer:
  max_epochs: 2
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: tsode.tracking.MLflowLogger
    init_args: {experiment_name: resume}
tracking: {num_plot_series: 0, log_model: false}
"""


def _val_history(uri: str, run_id: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, "val/mse"))


@pytest.mark.slow
def test_cli_fit_ckpt_path_last_resumes_and_continues_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    from tsode.cli import run

    runs = {}
    for name in ("full", "split"):
        work = tmp_path / name
        work.mkdir()
        (work / "r.yaml").write_text(_RECIPE)
        monkeypatch.chdir(work)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        epochs = ["--trainer.max_epochs", "3"] if name == "full" else []
        cli = run(["fit", "--config", "r.yaml", *epochs])
        runs[name] = cli.trainer.logger.run_id
    uri = f"sqlite:///{tmp_path / 'split' / 'mlflow.db'}"
    last = tmp_path / "split" / "outputs" / "resume" / "resume" / "r" / "last.ckpt"
    assert last.is_file()
    MlflowClient(uri).update_run(runs["split"], status="RUNNING")  # as after a SIGKILL
    capsys.readouterr()
    cli = run(["fit", "--config", "r.yaml", "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    assert f"tsode: resuming from {last.relative_to(tmp_path / 'split')}" in capsys.readouterr().err
    assert cli.trainer.logger.run_id == runs["split"]  # the killed fit's run, continued
    run_info = MlflowClient(uri).get_run(runs["split"]).info
    assert run_info.status == "FINISHED"
    full = _val_history(f"sqlite:///{tmp_path / 'full' / 'mlflow.db'}", runs["full"])
    assert len(full) == 3 and _val_history(uri, runs["split"]) == full  # identical per epoch
    assert len(MlflowClient(uri).search_runs([run_info.experiment_id])) == 1


def test_cli_fit_ckpt_path_last_without_checkpoint_starts_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from tsode.cli import run

    (tmp_path / "r.yaml").write_text(_RECIPE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cli = run(["fit", "--config", "r.yaml", "--trainer.max_epochs", "1", "--ckpt_path", "last"])
    expected = (
        f"tsode: fit --ckpt_path last: no last checkpoint in "
        f"{Path('outputs') / 'resume' / 'resume' / 'r'}; training from scratch"
    )
    assert expected in capsys.readouterr().err
    assert cli.trainer.current_epoch == 1
    assert (tmp_path / "outputs" / "resume" / "resume" / "r" / "last.ckpt").is_file()


@pytest.mark.slow
def test_fresh_fit_closes_a_killed_fits_run_as_killed(frame: pd.DataFrame, tmp_path: Path) -> None:
    import subprocess

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed, _ = _fit(frame, tmp_path, 1, tracking=True, uri=uri)
    last = killed.resume_dir() / "last.ckpt"
    state = torch.load(last, weights_only=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    state["tsode_mlflow"]["pid"] = dead.pid  # written by a process that is gone (SIGKILL)
    torch.save(state, last)
    client = MlflowClient(uri)
    client.update_run(killed.run_id, status="RUNNING")
    fresh, _ = _fit(frame, tmp_path, 1, tracking=True, uri=uri)  # not resume=True
    assert fresh.run_id != killed.run_id
    run = client.get_run(killed.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["tsode.error"] == (
        f"the fit (process {dead.pid}) ended without closing its run (killed?); last "
        f"checkpoint {last}"
    )
    assert client.get_run(fresh.run_id).info.status == "FINISHED"
