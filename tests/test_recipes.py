"""Every recipe in recipes/ really runs: a fast_dev_run (one train and one val batch) through the
`tsode` entry point, by name (``--recipe``: single files and every composed PhysioNet
combination). PhysioNet recipes run on the synthetic PhysioNet-format sample records in
datasets/samples/physionet2012 (the real data is not needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tsode.cli import run
from tsode.recipes import load_recipe, recipe_files, recipe_names

REPO = Path(__file__).resolve().parents[1]
RECIPES = recipe_names()
PHYSIONET_SAMPLES = REPO / "datasets" / "samples" / "physionet2012"


def test_recipes_exist() -> None:
    names = set(RECIPES)
    assert "quickstart" in names
    for task in ("forecast", "interpolation", "extrapolation"):
        for model in ("latent_ode", "latent_ode_poisson", "odernn", "ncde", "gru_dt", "locf", "mean"):
            assert f"physionet_{task}_{model}" in names
    for model in ("latent_ode", "latent_ode_poisson", "odernn", "gru_dt"):
        assert f"physionet_classification_{model}" in names


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module (fast_dev_run logs nothing; creating a SQLite store is slow)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_composed_recipe_files_and_merge() -> None:
    files = recipe_files("physionet_classification_latent_ode")
    assert [f.name for f in files] == [
        "base.yaml", "task_classification.yaml", "model_latent_ode.yaml", "classification_latent_ode.yaml"
    ]
    assert [f.name for f in recipe_files("physionet_forecast_odernn")] == [
        "base.yaml", "task_forecast.yaml", "model_odernn.yaml"
    ]
    assert recipe_files("quickstart") == [REPO / "recipes" / "quickstart.yaml"]
    config = load_recipe("physionet_forecast_locf")
    assert config["trainer"]["callbacks"] == []  # a later list replaces the base's
    assert config["trainer"]["max_epochs"] == 1
    assert config["data"]["init_args"]["task"] == {"kind": "forecast", "cutoff": 24.0, "horizon": 24.0}
    assert config["data"]["init_args"]["loader"] == {"batch_size": 64}
    classification = load_recipe("physionet_classification_odernn")
    assert classification["data"]["init_args"]["loader"] == {"batch_size": 50}
    assert classification["checkpoint"] == {"monitor": "val/auroc", "mode": "max"}


def test_unknown_recipe_name_lists_the_known_ones(capsys: pytest.CaptureFixture) -> None:
    from tsode.cli import main

    assert main(["fit", "--recipe", "physionet_forecast_nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'physionet_forecast_nope'" in err and "physionet_forecast_odernn" in err
    assert main(["fit", "--config", "recipes/physionet_forecast_odernn.yaml"]) == 2
    assert "use --recipe physionet_forecast_odernn" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_fast_dev_run(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_uri: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    config = load_recipe(recipe)
    args = [
        "fit", "--recipe", recipe,
        "--trainer.fast_dev_run", "true",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]
    data_class = config["data"]["class_path"]
    if "PhysioNet2012" in data_class:
        args += [
            "--data.init_args.root", str(PHYSIONET_SAMPLES),
            "--data.init_args.cache_dir", str(tmp_path / "cache"),
            "--data.init_args.progress", "false",
            "--data.init_args.loader.batch_size", "4",
        ]
    elif "SyntheticICU" in data_class:
        args += ["--data.init_args.num_series", "24", "--data.init_args.loader.batch_size", "8"]
    elif "TableDataModule" in data_class:  # a path relative to the repository root
        args += ["--data.init_args.data", str(REPO / config["data"]["init_args"]["data"])]
    cli = run(args)
    trainer = cli.trainer
    assert trainer.state.finished
    # the MLflow run is named after the recipe, not after its last overlay file
    assert cli.config["fit"]["trainer"]["logger"]["init_args"]["run_name"] == recipe
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 1  # one train batch ran
    if config["data"]["init_args"]["task"]["kind"] == "classification":
        assert cli.model.num_classes == 2  # linked from the data module
        score = trainer.callback_metrics["val/ce"]  # and one validation batch was scored
    else:
        score = trainer.callback_metrics["val/mse"]  # and one validation batch was scored
    assert math.isfinite(float(score))


@pytest.mark.parametrize("recipe", ["physionet_forecast_locf", "physionet_classification_latent_ode"])
def test_cli_composes_the_overlays_as_load_recipe_does(
    recipe: str, capsys: pytest.CaptureFixture
) -> None:
    """LightningCLI's own merge of the overlay files (lists replaced, mappings merged) is the
    one :func:`load_recipe` reproduces; a command-line override of one task field keeps the
    others."""
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--recipe", recipe, "--data.init_args.task.cutoff", "12", "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    expected = load_recipe(recipe)
    task = resolved["data"]["init_args"]["task"]
    assert task["cutoff"] == 12.0
    assert {k: task[k] for k in expected["data"]["init_args"]["task"] if k != "cutoff"} == {
        k: v for k, v in expected["data"]["init_args"]["task"].items() if k != "cutoff"
    }
    assert resolved["data"]["init_args"]["loader"]["batch_size"] == expected["data"]["init_args"]["loader"]["batch_size"]
    callbacks = resolved["trainer"]["callbacks"] or []
    assert [c["class_path"] for c in callbacks] == [
        c["class_path"] for c in expected["trainer"].get("callbacks") or []
    ]
    assert resolved["checkpoint"]["monitor"] == expected["checkpoint"]["monitor"]
    assert resolved["model"]["class_path"] == expected["model"]["class_path"]
    for key, value in (expected["model"].get("init_args") or {}).items():
        if not isinstance(value, dict):
            assert resolved["model"]["init_args"][key] == value, key
