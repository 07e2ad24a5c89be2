"""Every recipe in recipes/ really runs: a fast_dev_run (one train and one val batch) through the
`tsode` entry point. PhysioNet recipes run on the synthetic PhysioNet-format sample records in
datasets/samples/physionet2012 (the real data is not needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tsode.cli import run

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
PHYSIONET_SAMPLES = REPO / "datasets" / "samples" / "physionet2012"


def test_recipes_exist() -> None:
    names = {p.stem for p in RECIPES}
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


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_fast_dev_run(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_uri: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    config = yaml.safe_load(recipe.read_text())
    args = [
        "fit", "--config", str(recipe),
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
            "--data.init_args.batch_size", "4",
        ]
    elif "SyntheticICU" in data_class:
        args += ["--data.init_args.num_series", "24", "--data.init_args.batch_size", "8"]
    elif "TableDataModule" in data_class:  # a path relative to the repository root
        args += ["--data.init_args.data", str(REPO / config["data"]["init_args"]["data"])]
    cli = run(args)
    trainer = cli.trainer
    assert trainer.state.finished
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 1  # one train batch ran
    if config["data"]["init_args"].get("task") == "classification":
        assert cli.model.num_classes == 2  # linked from the data module
        score = trainer.callback_metrics["val/ce"]  # and one validation batch was scored
    else:
        score = trainer.callback_metrics["val/mse"]  # and one validation batch was scored
    assert math.isfinite(float(score))
