"""Forecaster API: fit -> predict -> evaluate -> save -> load on the synthetic ICU data."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping

from tsode.api import Forecaster
from tsode.data import DataValidationError

torch.set_num_threads(1)  # small models: intra-op threads only add overhead

FAST_TRAINER = {
    "max_epochs": 2,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "log_every_n_steps": 1,
}


@pytest.fixture(scope="module")
def frame(synthetic_long_frame) -> pd.DataFrame:  # noqa: ANN001
    """40 synthetic ICU series as a long table (series_id, time, channel, value)."""
    return synthetic_long_frame(40)


@pytest.fixture(scope="module")
def fitted(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Forecaster:
    work = tmp_path_factory.mktemp("work")
    fc = Forecaster(
        "gru_dt",
        hidden_dim=16,
        trainer_kwargs=FAST_TRAINER,
        tracking=False,
        work_dir=work,
        verbose=False,
    )
    return fc.fit(frame, cutoff=24.0, batch_size=16)


def _last_times(frame: pd.DataFrame) -> pd.Series:
    return frame.groupby("series_id")["time"].max()


def test_fit_records_summary_and_fitted_state(fitted: Forecaster, frame: pd.DataFrame) -> None:
    summary = fitted.fit_summary
    assert summary["model"] == "gru_dt"
    assert summary["num_series"]["train"] + summary["num_series"]["val"] == 40
    assert summary["best_val_mse"] is not None and np.isfinite(summary["best_val_mse"])
    assert fitted.data.channels == sorted(frame["channel"].unique())
    # normalizer fitted on the training split only: close to, but not exactly, the full data stats
    full_means = frame.groupby("channel")["value"].mean()
    for name, mean, std in zip(fitted.data.normalizer.names, fitted.data.normalizer.mean,
                               fitted.data.normalizer.std):
        assert abs(mean - full_means[name]) < 0.5 * std


def test_predict_horizon_grid_in_original_units(fitted: Forecaster, frame: pd.DataFrame) -> None:
    forecast = fitted.predict(frame, horizon=6.0, step=2.0, progress=False)
    assert list(forecast.columns) == ["series_id", "time", "channel", "mean"]
    channels = fitted.data.channels
    assert len(forecast) == frame["series_id"].nunique() * 3 * len(channels)
    assert np.isfinite(forecast["mean"]).all()
    last = _last_times(frame)
    offsets = forecast["time"].to_numpy() - last.loc[forecast["series_id"]].to_numpy()
    np.testing.assert_allclose(np.sort(np.unique(offsets.round(4))), [2.0, 4.0, 6.0], atol=1e-3)
    # original units: each channel's forecasts live on that channel's scale, not around 0
    by_channel = forecast.groupby("channel")["mean"].mean()
    data_by_channel = frame.groupby("channel")["value"]
    for channel in channels:
        lo, hi = data_by_channel.min()[channel], data_by_channel.max()[channel]
        span = hi - lo
        assert lo - span <= by_channel[channel] <= hi + span, channel


def test_predict_explicit_times_shared_and_per_series(fitted: Forecaster, frame: pd.DataFrame) -> None:
    ids = list(frame["series_id"].unique()[:3])
    subset = frame[frame["series_id"].isin(ids)]
    shared = fitted.predict(subset, times=[50.0, 55.5], progress=False)
    assert sorted(shared["time"].unique()) == pytest.approx([50.0, 55.5])
    assert set(shared["series_id"]) == set(ids)
    per_series = pd.DataFrame({"series_id": [ids[0], ids[0], ids[1]], "time": [49.0, 52.0, 60.0]})
    out = fitted.predict(subset, times=per_series, progress=False)
    got = out.groupby("series_id")["time"].unique().map(sorted).to_dict()
    assert got[ids[0]] == pytest.approx([49.0, 52.0])
    assert got[ids[1]] == pytest.approx([60.0])
    assert ids[2] not in got  # no query times for it: no rows


def test_evaluate_returns_metrics_table(fitted: Forecaster, frame: pd.DataFrame) -> None:
    table = fitted.evaluate(frame)
    # gru_dt has a Gaussian head by default: interval coverage and CRPS beside the errors
    assert list(table.columns) == ["n_obs", "mse", "rmse", "mae", "coverage80", "coverage90", "crps"]
    assert list(table.index) == [*fitted.data.channels, "all"]
    assert table.loc["all", "n_obs"] == table["n_obs"].iloc[:-1].sum() > 0
    observed = table[table["n_obs"] > 0]
    np.testing.assert_allclose(observed["rmse"], np.sqrt(observed["mse"]))
    for column in ("mse", "coverage80", "coverage90", "crps"):
        weighted = (observed[column].iloc[:-1] * observed["n_obs"].iloc[:-1]).sum() / table.loc["all", "n_obs"]
        assert table.loc["all", column] == pytest.approx(weighted), column
    assert ((observed["coverage80"] >= 0) & (observed["coverage80"] <= observed["coverage90"])
            & (observed["coverage90"] <= 1)).all()
    assert (observed["crps"] > 0).all()


def test_evaluate_coverage_is_the_models_own_test_metric(fitted: Forecaster, frame: pd.DataFrame) -> None:
    """evaluate's pooled coverage and CRPS are what the model's ProbabilisticMetrics give on
    the same series (CRPS there in normalized units, scaled per channel here)."""
    from tsode.models.predictive import ProbabilisticMetrics

    table = fitted.evaluate(frame)
    data = fitted.data
    dataset = data.dataset(data.table(frame), data.task)
    metric = ProbabilisticMetrics(list(data.normalizer.std))
    fitted.model.eval()
    with torch.no_grad():
        batch = dataset.collate(list(range(len(dataset))))
        out = fitted.model.forecast(batch, batch.target.times)
    metric.update(out, batch.target.values, batch.target.mask)
    got = metric.compute()
    assert table.loc["all", "coverage80"] == pytest.approx(float(got["coverage80"]), abs=1e-6)
    assert table.loc["all", "coverage90"] == pytest.approx(float(got["coverage90"]), abs=1e-6)
    assert table.loc["all", "crps"] == pytest.approx(float(got["crps_orig"]), rel=1e-5)


def test_save_load_round_trip(fitted: Forecaster, frame: pd.DataFrame, tmp_path) -> None:
    path = fitted.save(tmp_path / "fc")
    config = yaml.safe_load((path / "config.yaml").read_text())
    assert config["model"]["name"] == "gru_dt"
    assert config["model"]["init_args"]["hidden_dim"] == 16
    assert config["data"]["cutoff"] == 24.0
    loaded = Forecaster.load(path)
    assert loaded.data.normalizer == fitted.data.normalizer
    assert loaded.data.channels == fitted.data.channels
    assert loaded.data.task == fitted.data.task
    pd.testing.assert_frame_equal(
        loaded.predict(frame, horizon=4.0, progress=False),
        fitted.predict(frame, horizon=4.0, progress=False),
    )
    pd.testing.assert_frame_equal(loaded.evaluate(frame), fitted.evaluate(frame))


def test_locf_forecast_is_last_observation_in_original_units(frame: pd.DataFrame, tmp_path) -> None:
    fc = Forecaster("locf", trainer_kwargs=FAST_TRAINER, tracking=False, work_dir=tmp_path,
                    verbose=False).fit(frame, cutoff=24.0)
    forecast = fc.predict(frame, horizon=3.0, step=3.0, progress=False)
    last_obs = (
        frame.sort_values("time").groupby(["series_id", "channel"])["value"].last().rename("last")
    )
    merged = forecast.join(last_obs, on=["series_id", "channel"], how="inner")
    assert len(merged) > 0
    np.testing.assert_allclose(merged["mean"], merged["last"], rtol=1e-5, atol=1e-4)


def test_probabilistic_model_quantiles_and_seeded_sampling(frame: pd.DataFrame, tmp_path) -> None:
    fc = Forecaster(
        "latent_ode",
        latent_dim=4, rec_dim=8, ode_hidden_dim=8, rec_ode_hidden_dim=8, gru_units=8,
        decoder_hidden_dim=8, num_predict_samples=16,
        solver={"method": "euler", "step_size": 4.0},
        trainer_kwargs={**FAST_TRAINER, "max_epochs": 1}, tracking=False, work_dir=tmp_path,
        verbose=False,
    )
    fc.fit(frame, cutoff=24.0, batch_size=20)
    subset = frame[frame["series_id"].isin(frame["series_id"].unique()[:4])]
    first = fc.predict(subset, horizon=4.0, step=2.0, quantiles=(0.1, 0.9), progress=False)
    assert list(first.columns) == ["series_id", "time", "channel", "mean", "q0.1", "q0.9"]
    assert (first["q0.1"] < first["q0.9"]).all()
    again = fc.predict(subset, horizon=4.0, step=2.0, quantiles=(0.1, 0.9), progress=False)
    pd.testing.assert_frame_equal(first, again)  # same seed, same samples


def test_solver_given_as_mapping_is_converted() -> None:
    fc = Forecaster("odernn", solver={"method": "rk4", "step_size": 0.5}, tracking=False)
    from tsode.solvers import SolverConfig

    assert fc.model_kwargs["solver"] == SolverConfig(method="rk4", step_size=0.5)


def test_every_solver_argument_given_as_mapping_is_converted(fitted: Forecaster, tmp_path) -> None:
    """Not only ``solver``: ``encoder_solver`` (any argument typed SolverConfig) given as a
    mapping reaches the model as a SolverConfig, from Forecaster(...) and from Forecaster.load."""
    import torch

    from tsode.models.latent_ode import LatentODE
    from tsode.solvers import SolverConfig

    euler = SolverConfig(method="euler", step_size=0.25)
    fc = Forecaster("latent_ode", encoder_solver={"method": "euler", "step_size": 0.25},
                    solver={"method": "rk4", "step_size": 0.5}, tracking=False)
    assert fc.model_kwargs["encoder_solver"] == euler
    assert fc.model_kwargs["solver"] == SolverConfig(method="rk4", step_size=0.5)
    model = LatentODE(num_channels=2, **fc.model_kwargs)
    assert model.encoder.solver == euler and model.solver.method == "rk4"
    # a saved file whose hyperparameters hold the solvers as plain mappings (as LightningCLI
    # stores them) loads with SolverConfig objects
    channels = len(fitted.data.channels)
    small = dict(latent_dim=2, rec_dim=3, ode_hidden_dim=4, rec_ode_hidden_dim=4, gru_units=4,
                 decoder_hidden_dim=4)
    module = LatentODE(num_channels=channels, encoder_solver=euler, **small)
    path = fitted.save(tmp_path / "fc")
    payload = torch.load(path / "forecaster.pt", weights_only=True)
    payload["model_class"] = "tsode.models.latent_ode.LatentODE"
    payload["hyper_parameters"] = {
        **small, "num_channels": channels,
        "encoder_solver": {"method": "euler", "step_size": 0.25},
        "solver": {"method": "rk4", "step_size": 0.5},
    }
    payload["state_dict"] = module.state_dict()
    torch.save(payload, path / "forecaster.pt")
    loaded = Forecaster.load(path).model
    assert isinstance(loaded, LatentODE)
    assert loaded.encoder.solver == euler
    assert loaded.solver == SolverConfig(method="rk4", step_size=0.5)


def test_clear_errors(fitted: Forecaster, frame: pd.DataFrame, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="unknown model 'lstm'.*latent_ode"):
        Forecaster("lstm")
    with pytest.raises(TypeError, match="latnt_dim"):
        Forecaster("latent_ode", latnt_dim=3)
    with pytest.raises(RuntimeError, match="not fitted"):
        Forecaster("gru_dt").predict(frame, horizon=1.0)
    # GRU-dt has a Gaussian head: its quantiles bracket the mean; LOCF is deterministic
    banded = fitted.predict(frame, horizon=1.0, quantiles=(0.1, 0.9), progress=False)
    assert (banded["q0.1"] < banded["mean"]).all() and (banded["mean"] < banded["q0.9"]).all()
    locf = Forecaster("locf", trainer_kwargs=FAST_TRAINER, tracking=False, work_dir=tmp_path,
                      verbose=False).fit(frame, cutoff=24.0, batch_size=16)
    with pytest.raises(ValueError, match="deterministic"):
        locf.predict(frame, horizon=1.0, quantiles=(0.5,), progress=False)
    with pytest.raises(ValueError, match="exactly one of horizon"):
        fitted.predict(frame, progress=False)
    bad = frame.copy()
    bad.loc[bad.index[5], "channel"] = "glucose"
    with pytest.raises(DataValidationError, match="glucose"):
        fitted.predict(bad, horizon=1.0, progress=False)


def test_datetime_table_round_trip(tmp_path) -> None:
    """Datetime time columns (here as ISO strings in a CSV): forecasts come back as datetimes."""
    sample = Path(__file__).resolve().parents[1] / "datasets" / "samples" / "icu_long.csv"
    frame = pd.read_csv(sample)
    fc = Forecaster("gru_dt", hidden_dim=8, trainer_kwargs={**FAST_TRAINER, "max_epochs": 1},
                    tracking=False, work_dir=tmp_path, verbose=False).fit(frame, cutoff=24.0)
    assert fc.data.time_axis.kind == "datetime"
    first = frame["series_id"].iloc[0]
    subset = frame[frame["series_id"] == first]
    wanted = ["2030-01-01 06:00", "2030-01-01 07:30"]
    out = fc.predict(subset, times=wanted, progress=False)
    assert pd.api.types.is_datetime64_any_dtype(out["time"])
    assert sorted(out["time"].unique()) == list(pd.to_datetime(wanted))
    horizon = fc.predict(subset, horizon=2.0, step=1.0, progress=False)
    last = pd.to_datetime(subset["time"]).max()
    assert sorted(horizon["time"].unique()) == [last + pd.Timedelta(hours=1), last + pd.Timedelta(hours=2)]


def test_forecaster_plot(fitted: Forecaster, frame: pd.DataFrame) -> None:
    subset = frame[frame["series_id"].isin(frame["series_id"].unique()[:2])]
    fig = fitted.plot(subset, max_channels=2)
    assert len(fig.axes) == 4
    assert all(ax.get_lines() for ax in fig.axes)  # a forecast line in every panel


def test_forecaster_plot_draws_a_band_for_probabilistic_models_only(
    fitted: Forecaster, frame: pd.DataFrame, tmp_path
) -> None:  # noqa: ANN001
    """plot asks for the 5-95 % band when the model's Forecast has a distribution (GRU-dt's
    Gaussian head) and draws the mean alone for a deterministic one (LOCF)."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    subset = frame[frame["series_id"].isin(frame["series_id"].unique()[:2])]
    locf = Forecaster("locf", trainer_kwargs=FAST_TRAINER, tracking=False, work_dir=tmp_path,
                      verbose=False).fit(frame, cutoff=24.0, batch_size=16)
    for model, banded in ((fitted, True), (locf, False)):
        fig = model.plot(subset, max_channels=2)
        bands = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
        assert bool(bands) is banded
        assert all(ax.get_lines() for ax in fig.axes)
        plt.close(fig)


class _Recorder(pl.Callback):
    """Remembers the trainer's callbacks and progress bar when fitting starts."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.callbacks = list(trainer.callbacks)
        self.progress_bar = trainer.progress_bar_callback


def test_defaults_early_stopping_progress_bar_and_summary(
    frame: pd.DataFrame, tmp_path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tsode.api.stdout_is_tty", lambda: True)  # the bar is for terminals
    default = Forecaster()
    assert default.model_name == "latent_ode" and default.patience == 10
    assert default._trainer_options()["max_epochs"] == 100
    recorder = _Recorder()
    subset = frame[frame["series_id"].isin(frame["series_id"].unique()[:12])]
    fc = Forecaster(
        "gru_dt", hidden_dim=4, tracking=False, work_dir=tmp_path,
        trainer_kwargs={"max_epochs": 1, "callbacks": [recorder]},  # otherwise the defaults
    ).fit(subset, cutoff=24.0, batch_size=8)
    kinds = {type(c).__name__ for c in recorder.callbacks}
    assert {"EarlyStopping", "ModelCheckpoint", "ModelSummary"} <= kinds
    early = next(c for c in recorder.callbacks if isinstance(c, EarlyStopping))
    assert early.monitor == "val/mse" and early.patience == 10
    assert recorder.progress_bar is not None
    out = capsys.readouterr()
    assert "tsode: trained gru_dt on" in out.out and "best val/mse" in out.out
    assert "Epoch 0" in out.out + out.err  # the training progress bar
    fc.predict(subset, horizon=2.0, batch_size=4, progress=True)
    assert "predict" in capsys.readouterr().err  # progress bar over prediction batches
    fc.predict(subset, horizon=2.0, batch_size=4, progress=False)
    assert "predict" not in capsys.readouterr().err


def test_model_given_as_module_class_or_class_path(frame: pd.DataFrame, tmp_path) -> None:
    from tsode.models.baselines import GRUDelta

    subset = frame[frame["series_id"].isin(frame["series_id"].unique()[:12])]
    quiet = {**FAST_TRAINER, "max_epochs": 1}
    by_path = Forecaster("tsode.models.baselines.GRUDelta", hidden_dim=4, tracking=False)
    assert by_path.model_class is GRUDelta and by_path.model_name == "gru_dt"
    assert Forecaster(GRUDelta, hidden_dim=4, tracking=False).model_class is GRUDelta
    built = GRUDelta(num_channels=5, hidden_dim=4, decoder_hidden_dim=4)
    fc = Forecaster(built, trainer_kwargs=quiet, tracking=False, verbose=False, work_dir=tmp_path)
    fc.fit(subset, cutoff=24.0, batch_size=8)
    assert fc.model is built  # the given module was trained in place
    loaded = Forecaster.load(fc.save(tmp_path / "fc"))
    pd.testing.assert_frame_equal(
        loaded.predict(subset, horizon=2.0, progress=False), fc.predict(subset, horizon=2.0, progress=False)
    )
    with pytest.raises(ValueError, match="model_kwargs"):
        Forecaster(built, hidden_dim=8)
    wrong = Forecaster(GRUDelta(num_channels=3, hidden_dim=4), trainer_kwargs=quiet, tracking=False)
    with pytest.raises(ValueError, match=r"num_channels=3 but the data has 5 channels"):
        wrong.fit(subset, cutoff=24.0)
