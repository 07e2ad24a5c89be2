"""Public entry points of ``import tsode``, checkpoints loadable with torch's default
``weights_only=True``, and atomic saves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import tsode
from tsode.api import Forecaster
from tsode.data import SyntheticICUDataModule
from tsode.data.atomic import atomic_path, atomic_write_text

torch.set_num_threads(1)

FAST_TRAINER = {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False}


def test_public_entry_points_are_exported() -> None:
    from tsode import Forecaster as exported

    assert exported is Forecaster
    assert tsode.SyntheticICUDataModule is SyntheticICUDataModule
    for name in tsode.__all__:
        assert getattr(tsode, name) is not None, name
        assert name in dir(tsode)
    assert set(tsode.__all__) == {"__version__", *tsode._EXPORTS}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tsode.nope  # noqa: B018


def test_import_tsode_stays_light() -> None:
    """``import tsode`` must not pull in Lightning / MLflow / pandas (lazy exports)."""
    code = (
        "import sys, tsode; heavy = [m for m in ('lightning', 'mlflow', 'pandas') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def frame(synthetic_long_frame) -> pd.DataFrame:  # noqa: ANN001
    return synthetic_long_frame(24)


@pytest.fixture(scope="module")
def latent(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Forecaster:
    """A latent ODE built in Python with a ``SolverConfig`` (pickled into its checkpoint)."""
    fc = Forecaster(
        "latent_ode", latent_dim=3, rec_dim=4, gru_units=4, ode_hidden_dim=4,
        rec_ode_hidden_dim=4, decoder_hidden_dim=4, solver={"method": "rk4", "step_size": 4.0},
        trainer_kwargs=FAST_TRAINER, tracking=False, verbose=False,
        work_dir=tmp_path_factory.mktemp("work"),
    )
    return fc.fit(frame, cutoff=24.0, batch_size=8)


def test_lightning_checkpoint_loads_with_default_weights_only(latent: Forecaster) -> None:
    from tsode.models.latent_ode import LatentODE
    from tsode.solvers import SolverConfig

    ckpt = latent.fit_summary["best_checkpoint"]
    assert ckpt and Path(ckpt).is_file()
    raw = torch.load(ckpt, weights_only=True)  # explicit: torch's default since 2.6
    assert isinstance(raw["hyper_parameters"]["solver"], SolverConfig)
    model = LatentODE.load_from_checkpoint(ckpt)  # Lightning: torch.load's default
    assert model.hparams.solver == SolverConfig(method="rk4", step_size=4.0)
    for name, tensor in latent.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)


def test_saved_forecaster_loads_with_weights_only(
    latent: Forecaster, frame: pd.DataFrame, tmp_path: Path
) -> None:
    latent.trainer_kwargs["profiler"] = object()  # not plain data: dropped with a warning
    try:
        path = latent.save(tmp_path / "fc")
    finally:
        latent.trainer_kwargs.pop("profiler")
    payload = torch.load(path / "forecaster.pt", weights_only=True)
    assert "profiler" not in payload["options"]["trainer_kwargs"]
    loaded = Forecaster.load(path)
    pd.testing.assert_frame_equal(
        loaded.predict(frame, horizon=6.0, progress=False),
        latent.predict(frame, horizon=6.0, progress=False),
    )


def test_save_is_atomic(latent: Forecaster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = latent.save(tmp_path / "fc")
    before = (path / "forecaster.pt").read_bytes()
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        Path(f).write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        latent.save(path)
    monkeypatch.setattr(torch, "save", real_save)
    assert (path / "forecaster.pt").read_bytes() == before  # the old model is intact
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "forecaster.pt"]
    Forecaster.load(path)


def test_atomic_path_keeps_old_file_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "out.csv"
    atomic_write_text(dest, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            assert tmp.suffix == ".csv" and tmp.parent == dest.parent
            tmp.write_text("new, but never finis")
            raise RuntimeError("interrupted")
    assert dest.read_text() == "old\n"
    assert [p.name for p in dest.parent.iterdir()] == ["out.csv"]
    with atomic_path(tmp_path / "fresh.txt") as tmp:
        tmp.write_text("done")
    assert (tmp_path / "fresh.txt").read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    mode = (tmp_path / "fresh.txt").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask  # the usual permissions, not mkstemp's private 0600


def test_forecast_writer_output_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from tsode.prediction_writer import ForecastWriter

    out = tmp_path / "pred" / "forecasts.csv"
    writer = ForecastWriter(output=str(out))
    writer.frames = [pd.DataFrame({"series_id": [1], "time": [1.0], "channel": ["a"], "mean": [0.5]})]
    trainer = SimpleNamespace(is_global_zero=True)
    real_to_csv = pd.DataFrame.to_csv

    def broken_to_csv(self, path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        Path(path).write_text("series_id,ti")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(KeyboardInterrupt):
        writer.on_predict_end(trainer, None)
    assert list(out.parent.iterdir()) == []  # no truncated table, no temporary file
    monkeypatch.setattr(pd.DataFrame, "to_csv", real_to_csv)
    writer.on_predict_end(trainer, None)
    assert pd.read_csv(out)["mean"].tolist() == [0.5]
