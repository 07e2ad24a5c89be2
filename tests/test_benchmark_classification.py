"""The PhysioNet mortality benchmark's pure logic (benchmarks/classification.py): recipe
settings, model arguments, the results table and the target verdicts. No training, no data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tsode.models import MODELS
from tsode.models.base import IrregularModel
from tsode.solvers import SolverConfig

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_classification",
                                                  REPO / "benchmarks/classification.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


@pytest.mark.parametrize("model", bench.DEFAULT_MODELS)
def test_recipe_settings_are_accepted_by_the_model(model):
    import inspect

    from tsode.recipes import recipe_files

    settings = bench.recipe_settings(model)
    assert settings["recipe"] is not None  # a recipe name (composed from recipes/physionet/)
    assert all(path.is_file() for path in recipe_files(settings["recipe"]))
    assert settings["warmup_steps"] == 200
    kwargs = bench.build_model_kwargs(settings, {})
    # the model's own parameters and those it passes on to IrregularModel through **base
    accepted = set(inspect.signature(MODELS[model].__init__).parameters) | set(
        inspect.signature(IrregularModel.__init__).parameters
    )
    assert set(kwargs) <= accepted
    if "solver" in kwargs:
        assert isinstance(kwargs["solver"], SolverConfig)


def test_model_kwargs_override_the_recipe():
    settings = bench.recipe_settings("odernn")
    kwargs = bench.build_model_kwargs(settings, {"lr": 0.001, "solver": {"method": "rk4", "step_size": 0.5}})
    assert kwargs["lr"] == 0.001 and kwargs["hidden_dim"] == settings["model_kwargs"]["hidden_dim"]
    assert kwargs["solver"].method == "rk4" and kwargs["solver"].step_size == 0.5


def _row(model, seed, auroc, **extra):
    return {"model": model, "seed": seed, "test_auroc": auroc, "test_auprc": 0.5,
            "test_accuracy": 0.86, "best_val_auroc": 0.84, "epochs": 20, "best_epoch": 9,
            "seconds_per_epoch": 30.0, "seconds": 600.0, "peak_rss_mb": 900.0, **extra}


def test_render_mean_std_and_published_rows():
    rows = [_row("odernn", 0, 0.84), _row("odernn", 1, 0.86), _row("gru_dt", 0, 0.80)]
    table = bench.render(rows, ["gru_dt", "odernn", "ncde"]).splitlines()
    assert table[0].startswith("| model | data | test AUROC |")
    assert len({line.count("|") for line in table}) == 1  # every row has every column
    assert table[2].startswith("| gru_dt | A (ours) | 0.800 |")  # one seed: no ± part
    assert table[3].startswith("| odernn | A (ours) | 0.850 ± 0.014 |")
    assert not any(line.startswith("| ncde ") for line in table)  # no runs, no row
    assert "| ODE-RNN (published) | A | 0.833 ± 0.009 |" in "\n".join(table)
    assert len(table) == 4 + len(bench.PUBLISHED)


def test_target_lines():
    rows = [_row("odernn", 0, 0.86), _row("latent_ode", 0, 0.82), _row("gru_dt", 0, 0.84)]
    lines = bench.target_lines(rows)
    assert lines[0].startswith("best model: odernn test AUROC 0.860") and lines[0].endswith("met")
    assert any(line.startswith("odernn:") and line.endswith(" met") for line in lines)
    assert any(line.startswith("latent_ode:") and "MISSED by 0.010" in line for line in lines)
    assert not any(line.startswith("gru_dt:") for line in lines)  # not an ODE model
    assert bench.target_lines([]) == []
