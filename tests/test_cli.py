"""The `tsode` command, run as a subprocess: fit/test with overrides, --print_config, bad recipes,
and the quickstart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tsode.cli import TsodeArgumentParser, TsodeCLI, explain_parse_error, locate_key, main, run
from tsode.data import SyntheticICUDataModule
from tsode.models.baselines import LOCF

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
_SCRIPT = Path(sys.executable).parent / "tsode"  # the installed console script
TSODE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tsode"]
# a tiny, fast version of the quickstart recipe
SMALL = [
    "--data.init_args.num_series", "30",
    "--data.init_args.loader.batch_size", "16",
    "--trainer.max_epochs", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--model.init_args.latent_dim", "3",
]


def run_tsode(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        TSODE + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_fit_then_test_with_overrides_tracked_in_mlflow(tmp_path: Path) -> None:
    fit = run_tsode(["fit", "--config", str(QUICKSTART), *SMALL], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "quickstart"  # named after the recipe file
    params = run.data.params
    assert params["config.model.class_path"] == "tsode.models.latent_ode.LatentODE"
    assert params["config.model.init_args.latent_dim"] == "3"  # command-line override
    assert params["config.trainer.max_epochs"] == "1"
    assert params["config.model.init_args.num_channels"] == "5"  # linked from the data module
    assert "val/mse" in run.data.metrics and "val/mse_orig" in run.data.metrics
    # per-epoch solver cost (NFE) of the latent ODE reaches the run
    assert {"train/nfe_forward_epoch", "val/nfe_forward"} <= set(run.data.metrics), sorted(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    nested = {f"{d}/{a.path.split('/')[-1]}" for d in ("config", "data", "plots", "checkpoints")
              for a in client.list_artifacts(run.info.run_id, d)}
    assert {"config", "data", "plots", "checkpoints", "model"} <= artifacts
    assert {"config/config.yaml", "data/summary.json", "data/normalization.json",
            "plots/forecast_val.png"} <= nested
    recipe = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config/config.yaml")).read_text())
    assert recipe["model"]["init_args"]["latent_dim"] == 3  # the resolved recipe, overrides applied
    checkpoints = sorted(tmp_path.glob("outputs/*/*/checkpoints/*.ckpt"))
    assert len(checkpoints) == 1

    # the logged model serves forecasts through `mlflow models predict`
    observations = tmp_path / "obs.csv"
    dm = SyntheticICUDataModule(num_series=4, seed=7)
    dm.setup()
    dm.table.to_long_frame().to_csv(observations, index=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    served = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "models", "predict",
         "-m", f"runs:/{run.info.run_id}/model", "-i", str(observations), "-t", "csv",
         "-o", str(tmp_path / "pred.json"), "--env-manager", "local"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    predictions = pd.DataFrame(json.loads((tmp_path / "pred.json").read_text())["predictions"])
    assert set(predictions.columns) == {"series_id", "time", "channel", "mean"}
    assert predictions["series_id"].nunique() == 4
    assert predictions["mean"].notna().all()

    test = run_tsode(
        ["test", "--config", str(QUICKSTART), *SMALL, "--ckpt_path", str(checkpoints[0])], tmp_path
    )
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/mse" in test.stdout

    output = tmp_path / "forecasts.csv"
    predict = run_tsode(
        ["predict", "--config", str(QUICKSTART), *SMALL, "--ckpt_path", str(checkpoints[0]),
         "--predictions.output", str(output), "--predictions.quantiles", "[0.1, 0.9]"],
        tmp_path,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    forecasts = pd.read_csv(output)
    assert list(forecasts.columns) == ["series_id", "time", "channel", "mean", "q0.1", "q0.9",
                                       "observed"]
    assert forecasts["observed"].notna().any() and forecasts["mean"].notna().all()
    assert (forecasts["q0.1"] <= forecasts["q0.9"]).all()
    assert (forecasts["time"] > 24.0).all()  # forecast task: targets after the 24 h cutoff


def test_print_config_shows_resolved_recipe_with_overrides(tmp_path: Path) -> None:
    out = run_tsode(
        ["fit", "--config", str(QUICKSTART), "--model.latent_dim", "7",  # short form of init_args
         "--trainer.max_epochs", "3", "--data.init_args.loader.batch_size", "8", "--print_config"],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    config = yaml.safe_load(out.stdout)
    assert config["model"]["class_path"] == "tsode.models.latent_ode.LatentODE"
    assert config["model"]["init_args"]["latent_dim"] == 7
    assert config["trainer"]["max_epochs"] == 3 and config["data"]["init_args"]["loader"]["batch_size"] == 8
    assert config["model"]["init_args"]["solver"]["method"] == "rk4"
    assert config["data"]["class_path"] == "tsode.data.SyntheticICUDataModule"
    assert config["checkpoint"]["monitor"] == "val/mse"
    assert not (tmp_path / "mlflow.db").exists()  # printing a config starts no run


def _bad_recipe(tmp_path: Path, edit) -> Path:  # noqa: ANN001
    recipe = yaml.safe_load(QUICKSTART.read_text())
    edit(recipe)
    path = tmp_path / "bad_recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _fit_bad_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, edit,  # noqa: ANN001
    *extra: str,
) -> tuple[Path, str, str]:
    """Run `tsode fit` in-process on a recipe broken by ``edit``: it must exit with code 2.
    Returns the recipe path, stderr and its "tsode: invalid ..." headline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = _bad_recipe(tmp_path, edit)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), *extra])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    headline = next(line for line in stderr.splitlines() if line.startswith("tsode: invalid"))
    return path, stderr, headline


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (lambda r: r["model"]["init_args"].update(latnt_dim=3), "model.init_args.latnt_dim",
         "unknown key"),
        (lambda r: r["model"]["init_args"].update(latent_dim="many"), "model.init_args.latent_dim",
         "wrong type"),
        (lambda r: r["data"]["init_args"]["loader"].update(batch_size=[1, 2]),
         "data.init_args.loader.batch_size", "wrong type"),
        (lambda r: r.update(optimiser="adam"), "optimiser", "unknown key"),
    ],
    ids=["unknown-model-key", "wrong-type-model", "wrong-type-data", "unknown-top-level-key"],
)
def test_bad_recipe_error_names_key_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, edit, key: str,  # noqa: ANN001
    reason: str,
) -> None:
    """In-process (parsing fails before anything is built); the subprocess path is the same."""
    path, stderr, headline = _fit_bad_recipe(tmp_path, monkeypatch, capsys, edit)
    assert str(path) in headline
    assert f"'{key}'" in headline
    assert reason in headline
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_recipe_via_subprocess_exits_2_without_traceback(tmp_path: Path) -> None:
    path = _bad_recipe(tmp_path, lambda r: r["model"]["init_args"].update(latnt_dim=3))
    out = run_tsode(["fit", "--config", str(path)], tmp_path, timeout=120)
    assert out.returncode == 2
    assert f"tsode: invalid configuration in {path}: key 'model.init_args.latnt_dim'" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_recipe_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["fit", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "recipe file not found" in err and "nope.yaml" in err


def test_explain_parse_error_on_nested_messages() -> None:
    message = (
        'Parser key "model":\n  Does not validate against any of the Union subtypes\n'
        "  Errors:\n    - Problem with given class_path 'tsode.models.odernn.ODERNN':\n"
        '        Parser key "solver":\n          Parser key "rtol":\n'
        "            Expected a <class 'float'>. Got value: tight\n"
        "    - Expected a <class 'NoneType'>\n"
    )
    key, reason = explain_parse_error(message)
    assert key == "model.init_args.solver.rtol"
    assert reason.startswith("wrong type: Expected a <class 'float'>")


@pytest.mark.slow
def test_quickstart_command_prints_comparison_and_locations(tmp_path: Path) -> None:
    out = run_tsode(["quickstart", *SMALL], tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "LatentODE" in text and "LOCF" in text and "MEAN" in text and "gru_dt" in text
    assert "test/mse" in text and "test/coverage80" in text
    assert "MLflow run" in text and "forecast plot" in text
    plot_line = next(line for line in text.splitlines() if "forecast plot" in line)
    plot = Path(plot_line.split(":", 1)[1].strip())
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])[0]
    for name in ("locf", "mean", "gru_dt"):
        assert f"baseline_{name}/test/mse" in run.data.metrics
    assert "test/mse" in run.data.metrics


def test_quickstart_fails_loudly_without_the_models(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import tsode.models
    from tsode.__main__ import main  # the console script: quickstart is dispatched there

    monkeypatch.setattr(tsode.models, "MODELS", {"locf": tsode.models.MODELS["locf"]})
    assert main(["quickstart"]) == 1
    err = capsys.readouterr().err
    assert "['gru_dt', 'mean'] are not implemented yet" in err and "nothing was trained" in err


def test_no_arguments_prints_usage(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: tsode {fit,validate,test,predict}" in err and "quickstart" in err


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (lambda r: r["model"]["init_args"]["solver"].update(rtol="tight"),
         "model.init_args.solver.rtol", "wrong type"),  # a plain mapping: no init_args
        (lambda r: r["trainer"]["callbacks"][0]["init_args"].update(patiense=3),
         "trainer.callbacks[0].init_args.patiense", "unknown key"),
        (lambda r: r["model"].update(class_path="tsode.models.Nope"), "model.class_path",
         "has no attribute 'Nope'"),
        (lambda r: r["data"]["init_args"]["task"].update(kind="forecastt"),
         "data.init_args.task.kind", "task.kind must be one of"),  # rejected by the task block
        (lambda r: r["model"]["init_args"].update(anchor="bad"), "model.init_args.anchor",
         "anchor must be one of"),  # rejected by the model's constructor
        (lambda r: r["trainer"].update(accelerator="gpux"), "trainer.accelerator",
         "invalid accelerator"),  # rejected by the Trainer
    ],
    ids=["nested-mapping", "list-item", "bad-class", "data-value", "model-value", "trainer-value"],
)
def test_bad_recipe_errors_locate_nested_keys_and_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, edit, key: str,  # noqa: ANN001
    reason: str,
) -> None:
    path, stderr, headline = _fit_bad_recipe(
        tmp_path, monkeypatch, capsys, edit, "--data.init_args.num_series", "12"
    )
    assert "Traceback" not in stderr
    assert f"invalid configuration in {path}: key '{key}'" in headline
    assert reason in headline


def test_locate_key_follows_the_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(yaml.safe_load(QUICKSTART.read_text())))
    assert locate_key("model.init_args.solver.init_args.step_size", [str(recipe)]) == (
        "model.init_args.solver.step_size", str(recipe))
    assert locate_key("model.init_args.solver.init_args.rtol", [str(recipe)]) == (
        "model.init_args.solver.rtol", None)  # not in the file: a command-line override
    assert locate_key("trainer.callbacks.init_args.patience", [str(recipe)]) == (
        "trainer.callbacks[1].init_args.patience", str(recipe))  # [0] is the warm-up
    assert locate_key("trainer.devices", [str(recipe)]) == ("trainer.devices", None)


class StaticLOCF(LOCF):
    """A model that takes static covariates: the CLI must link ``num_static`` into it."""

    def __init__(
        self,
        num_channels: int,
        num_static: int = -1,
        channel_means: list[float] | None = None,
        channel_stds: list[float] | None = None,
    ) -> None:
        super().__init__(num_channels, channel_means, channel_stds)
        self.num_static = num_static


def test_num_static_and_channels_linked_from_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [
        {"series_id": s, "time": t, "hr": 60.0 + s + t, "rr": 12.0 + t, "age": 40.0 + s,
         "sex": float(s % 2)}
        for s in range(12) for t in range(4)
    ]
    data = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    args = [
        "--model", f"{__name__}.StaticLOCF",
        "--data", "tsode.data.TableDataModule",
        "--data.init_args.data", str(data),
        "--data.init_args.static_cols", "[age, sex]",
        "--data.init_args.task.cutoff", "1.5",
        "--trainer.logger", "false",
    ]
    TsodeArgumentParser.recipe_files = []
    cli = TsodeCLI(args=args, run=False)
    assert cli.model.num_static == 2 and cli.model.num_channels == 2
    assert cli.model.channel_means == pytest.approx(list(cli.datamodule.normalizer.mean))
    # a model without ``num_static`` (every model today) is built without it
    cli = TsodeCLI(args=[*args[2:], "--model", "tsode.models.baselines.LOCF"], run=False)
    assert type(cli.model) is LOCF and cli.model.num_channels == 2
    # ... also under the subcommands (where jsonargparse would pass an unexpected keyword)
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    for subcommand in ("validate", "test"):
        cli = run([subcommand, *args, *quiet])
        assert cli.model.num_static == 2
        cli = run([subcommand, *args[2:], "--model", "tsode.models.baselines.LOCF", *quiet])
        assert type(cli.model) is LOCF


def test_bad_data_is_reported_as_data_not_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    rows = [{"series_id": s, "time": t, "hr": 60.0 + t} for s in range(8) for t in range(4)]
    frame = pd.DataFrame(rows)
    frame.loc[5, "hr"] = float("inf")
    data = tmp_path / "table.csv"
    frame.to_csv(data, index=False)
    args = ["fit", "--model", "tsode.models.baselines.LOCF", "--data", "tsode.data.TableDataModule",
            "--data.init_args.data", str(data), "--trainer.logger", "false"]
    TsodeArgumentParser.recipe_files = []
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "invalid configuration" not in err
    assert "tsode: invalid data: " in err and "table.csv, row 5 (line 7), series 1, column 'hr'" in err
    frame.loc[5, "hr"] = 61.0
    frame.to_csv(data, index=False)
    with pytest.raises(SystemExit):  # a cutoff after every series ends: nothing to learn
        main([*args, "--data.init_args.task.cutoff", "50"])
    assert "tsode: invalid data: TableDataModule: task forecast (cutoff 50 h)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a negative cutoff is a bad value of the recipe key
        main([*args, "--data.init_args.task.cutoff", "-1"])
    headline = capsys.readouterr().err.splitlines()[0]
    assert "key 'data.init_args.task.cutoff'" in headline and "cutoff must be a finite number" in headline


def test_recipe_solver_mappings_reach_the_model_as_solver_configs() -> None:
    """``encoder_solver`` in a recipe (or an override) is a SolverConfig in the model."""
    from tsode.models.latent_ode import LatentODE
    from tsode.solvers import SolverConfig

    TsodeArgumentParser.recipe_files = []
    cli = TsodeCLI(args=[
        "--model", "tsode.models.latent_ode.LatentODE",
        "--model.init_args.encoder_solver", "{method: euler, step_size: 0.25}",
        "--model.init_args.latent_dim", "2",
        "--data", "tsode.data.SyntheticICUDataModule",
        "--data.init_args.num_series", "20",
        "--trainer.logger", "false",
    ], run=False)
    assert isinstance(cli.model, LatentODE)
    assert cli.model.encoder.solver == SolverConfig(method="euler", step_size=0.25)
    assert isinstance(cli.model.solver, SolverConfig)


def test_cli_tracking_callback_logs_the_forecaster_as_pyfunc_model() -> None:
    """tsode.tracking imports nothing of tsode.api: the command gives its MLflowArtifacts
    callback the forecaster to log as the pyfunc model."""
    from tsode.api import Forecaster
    from tsode.tracking import MLflowArtifacts

    TsodeArgumentParser.recipe_files = []
    cli = TsodeCLI(args=["--config", str(QUICKSTART), *SMALL, "--trainer.logger", "false"], run=False)
    artifacts = [cb for cb in cli.trainer.callbacks if isinstance(cb, MLflowArtifacts)]
    assert artifacts and all(cb.forecaster_factory == Forecaster.from_trained for cb in artifacts)


def test_find_rejected_key_passes_every_repo_recipe_and_names_a_bad_key(tmp_path: Path) -> None:
    """The structural check behind the recipe errors: silent on every recipe of the repo, and
    names the key (as written in the file) without reading jsonargparse's message."""
    from tsode.recipe_errors import find_rejected_key
    from tsode.recipes import recipe_files, recipe_names

    for name in recipe_names():
        assert find_rejected_key([str(p) for p in recipe_files(name)]) is None, name
    recipe = yaml.safe_load(QUICKSTART.read_text())
    recipe["model"]["init_args"]["optim"] = {"lr": -1.0}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert find_rejected_key([str(path)]) == ("model.init_args.optim.lr", "optim.lr must be > 0, got -1.0")


def test_a_bad_command_line_override_names_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from tsode.recipe_errors import find_rejected_key

    args = ["fit", "--config", str(QUICKSTART), "--model.init_args.latent_dim", "many",
            "--trainer.max_epochs=1"]
    assert find_rejected_key([str(QUICKSTART)], args) == (
        "model.init_args.latent_dim", "wrong type: expected int, got 'many'")
    assert find_rejected_key([str(QUICKSTART)], ["fit", "--trainer.max_epochs", "1"]) is None
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(args)
    headline = capsys.readouterr().err.splitlines()[0]
    assert "key 'model.init_args.latent_dim'" in headline and "wrong type" in headline
