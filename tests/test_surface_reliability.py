"""Reliability of the public surface (issue 10): bounded recipes, bounded predict requests,
exact query times, clear errors for empty splits, bad checkpoints, solver failures and
non-finite weights. Every test is fast (tiny data, 1 epoch)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tsode.api import Forecaster, load_checkpoint_weights
from tsode.errors import (
    CheckpointFileError,
    RecipeFileError,
    ResourceLimitError,
    SeriesSolverError,
    SplitError,
)
from tsode.solvers import SolverConfig

torch.set_num_threads(1)

TINY_TRAINER = {
    "max_epochs": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
}


def _forecaster(model: str, work: Path, **kwargs) -> Forecaster:  # noqa: ANN003
    return Forecaster(model, trainer_kwargs=TINY_TRAINER, tracking=False, verbose=False,
                      work_dir=work, **kwargs)


@pytest.fixture(scope="module")
def frame(synthetic_long_frame) -> pd.DataFrame:  # noqa: ANN001
    return synthetic_long_frame(8)


@pytest.fixture(scope="module")
def fitted(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Forecaster:
    """A tiny ODE-RNN (1 epoch, 8 series): has an ODE solver whose failures can be provoked."""
    work = tmp_path_factory.mktemp("surface")
    return _forecaster("odernn", work, hidden_dim=4, ode_hidden_dim=4, decoder_hidden_dim=4).fit(
        frame, cutoff=24.0, batch_size=8
    )


@pytest.fixture(scope="module")
def saved(fitted: Forecaster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted.save(tmp_path_factory.mktemp("saved") / "fc")


# ---------------------------------------------------------------------- 2. resource bounds


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": float("nan")}, "horizon must be finite"),
        ({"horizon": float("inf")}, "horizon must be finite"),
        ({"horizon": "24"}, r"horizon must be a number of hours, got '24' \(str\)"),
        ({"horizon": True}, "horizon must be a number of hours"),
        ({"horizon": -1.0}, "horizon must be > 0 hours, got -1.0"),
        ({"horizon": 0}, "horizon must be > 0 hours"),
        ({"horizon": 1.0, "step": 0.0}, "step must be > 0 hours"),
        ({"horizon": 1.0, "step": float("nan")}, "step must be finite"),
        ({"horizon": 1.0, "step": "fast"}, "step must be a number of hours"),
        ({"horizon": 1.0, "batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"horizon": 1.0, "batch_size": 2.5}, "batch_size must be an integer >= 1"),
        ({"horizon": 1.0, "quantiles": (float("nan"),)}, "quantile level must be finite"),
        ({"horizon": 1.0, "max_points_per_series": 0}, "max_points_per_series must be"),
        ({"times": [30.0], "step": 1.0}, "step= applies to horizon="),
    ],
)
def test_predict_rejects_bad_request_parameters(
    fitted: Forecaster, frame: pd.DataFrame, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fitted.predict(frame, progress=False, **kwargs)


def test_predict_caps_points_per_series_fast(fitted: Forecaster, frame: pd.DataFrame) -> None:
    start = time.perf_counter()
    with pytest.raises(ResourceLimitError) as info:
        fitted.predict(frame, horizon=1, step=1e-7, progress=False)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "10,000,000 forecast times per series" in message
    assert "max_points_per_series=100,000" in message and "max_points_per_series=N" in message
    # the cap is configurable, and also bounds explicit times
    with pytest.raises(ResourceLimitError, match="5 forecast times per series.*=4"):
        fitted.predict(frame, horizon=5.0, step=1.0, max_points_per_series=4, progress=False)
    with pytest.raises(ResourceLimitError, match="times= asks for 3 forecast times"):
        fitted.predict(frame, times=[50.0, 51.0, 52.0], max_points_per_series=2, progress=False)
    out = fitted.predict(frame, horizon=5.0, step=1.0, max_points_per_series=5, progress=False)
    assert out.groupby("series_id")["time"].nunique().eq(5).all()


# ---------------------------------------------------------------------- 3. exact query times


def test_predict_returns_query_times_exactly(fitted: Forecaster, frame: pd.DataFrame) -> None:
    ids = list(frame["series_id"].unique()[:2])
    subset = frame[frame["series_id"].isin(ids)]
    awkward = [33.9021, 47.1, 50.3000001, 0.1 + 0.2 + 48.0, 61.123456789]
    out = fitted.predict(subset, times=awkward, progress=False)
    assert set(out["time"]) == set(awkward)  # exact float equality, no float noise
    assert len(out.merge(pd.DataFrame({"time": awkward}), on="time")) == len(out)
    # per-series table, unsorted, with awkward decimals: joined back exactly by value
    query = pd.DataFrame({"series_id": [ids[1], ids[0], ids[0]], "time": [52.7771, 49.9999, 33.9021]})
    per_series = fitted.predict(subset, times=query, progress=False)
    joined = query.merge(per_series, on=["series_id", "time"], how="inner")
    assert len(joined) == len(per_series) == 3 * len(fitted.data.channels)


def test_predict_returns_datetime_query_times_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2030-01-01 00:00:00")
    rows = []
    for sid in ("a", "b", "c", "d"):
        for k in range(12):
            stamp = start + pd.Timedelta(minutes=int(37 * k + rng.integers(0, 5)), seconds=7)
            rows.append((sid, stamp, "x", float(rng.normal())))
    frame = pd.DataFrame(rows, columns=["series_id", "time", "channel", "value"])
    fc = _forecaster("locf", tmp_path).fit(frame, cutoff=3.0, split_fractions=(0.5, 0.5, 0.0))
    wanted = ["2030-01-01 07:33:21.123457", "2030-01-01 09:00:00.000001"]
    out = fc.predict(frame, times=wanted, progress=False)
    assert pd.api.types.is_datetime64_any_dtype(out["time"])
    assert set(out["time"]) == set(pd.to_datetime(wanted))


# ---------------------------------------------------------------------- 4. before the context


def test_predict_time_before_series_context_is_an_error(fitted: Forecaster, frame: pd.DataFrame) -> None:
    first = frame.groupby("series_id")["time"].min()
    sid = first.index[1]
    query = pd.DataFrame({"series_id": [first.index[0], sid], "time": [60.0, first[sid] - 0.5]})
    with pytest.raises(ValueError) as info:
        fitted.predict(frame, times=query, progress=False)
    message = str(info.value)
    assert f"series {sid!r}" in message and "before its first observation" in message
    assert f"query time {float(first[sid] - 0.5)!r} for series" in message
    assert f"({float(first[sid])!r})" in message
    with pytest.raises(ValueError, match="before its first observation"):
        fitted.predict(frame, times=[-5.0], progress=False)


def test_predict_non_finite_query_time_names_row(fitted: Forecaster, frame: pd.DataFrame) -> None:
    sid = frame["series_id"].iloc[0]
    query = pd.DataFrame({"series_id": [sid, sid], "time": [60.0, float("nan")]})
    with pytest.raises(ValueError, match=rf"times table row 1 \(series {sid!r}\).*not a finite"):
        fitted.predict(frame, times=query, progress=False)


# ---------------------------------------------------------------------- 5. empty validation split


@pytest.mark.parametrize(
    ("num_series", "fractions", "counts"),
    [
        (1, (0.8, 0.2, 0.0), "train 1, val 0, test 0 series"),
        (2, (0.8, 0.2, 0.0), "train 2, val 0, test 0 series"),
        (8, (1.0, 0.0, 0.0), "train 8, val 0, test 0 series"),
    ],
)
def test_fit_with_empty_validation_split_is_a_tsode_error(
    frame: pd.DataFrame, tmp_path: Path, num_series: int, fractions, counts: str  # noqa: ANN001
) -> None:
    frame = frame[frame["series_id"].isin(frame["series_id"].unique()[:num_series])]
    fc = _forecaster("gru_dt", tmp_path, hidden_dim=4)
    start = time.perf_counter()
    with pytest.raises(SplitError) as info:
        fc.fit(frame, cutoff=24.0, split_fractions=fractions)
    assert time.perf_counter() - start < 3.0  # before any training
    message = str(info.value)
    assert "validation split is empty" in message and counts in message
    assert "more series" in message and "split_fractions" in message
    assert "val/mse` which is not available" not in message


# ---------------------------------------------------------------------- 7. solver failures


def test_predict_solver_failure_names_series_and_batch(fitted: Forecaster, frame: pd.DataFrame) -> None:
    ids = list(frame["series_id"].unique())
    last = frame.groupby("series_id")["time"].max()
    query = pd.DataFrame(
        {"series_id": ids[:4], "time": [last[ids[0]] + 0.01, last[ids[1]] + 1e5,
                                        last[ids[2]] + 0.02, last[ids[3]] + 0.01]}
    )
    solver = fitted.model.solver
    fitted.model.solver = SolverConfig(method="dopri5", max_steps=20, rtol=1e-7, atol=1e-9)
    try:
        with pytest.raises(SeriesSolverError) as info:
            fitted.predict(frame, times=query, batch_size=8, progress=False)
    finally:
        fitted.model.solver = solver
    error = info.value
    assert error.series_ids == [ids[1]] and error.stage == "predict" and error.batch_idx == 0
    assert f"series {ids[1]!r} (predict, batch 0)" in str(error)
    assert "max_steps reached" in str(error)


def test_fit_solver_failure_names_series_stage_epoch_and_batch(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    fc = Forecaster("odernn", hidden_dim=4, ode_hidden_dim=4, decoder_hidden_dim=4,
                    solver={"method": "dopri5", "max_steps": 1}, tracking=False, verbose=False,
                    work_dir=tmp_path, trainer_kwargs={**TINY_TRAINER, "num_sanity_val_steps": 0})
    with pytest.raises(SeriesSolverError) as info:
        fc.fit(frame, cutoff=24.0, batch_size=4)
    error = info.value
    assert error.stage == "train" and error.epoch == 0 and error.batch_idx == 0
    assert error.series_ids and set(error.series_ids) <= set(frame["series_id"])
    assert "(train, epoch 0, batch 0)" in str(error)
    assert all(repr(sid) in str(error) for sid in error.series_ids[:8])


# ---------------------------------------------------------------------- 8. non-finite weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_load_refuses_non_finite_weights_naming_parameter(saved: Path, tmp_path: Path, bad: float) -> None:
    payload = torch.load(saved / "forecaster.pt", weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    payload["state_dict"][name] = payload["state_dict"][name].clone()
    payload["state_dict"][name].view(-1)[0] = bad
    out = tmp_path / "nan"
    out.mkdir()
    torch.save(payload, out / "forecaster.pt")
    with pytest.raises(CheckpointFileError, match=rf"forecaster.pt: non-finite .* in '{name}' \(1 of"):
        Forecaster.load(out)
    ckpt = tmp_path / "nan.ckpt"
    torch.save({"state_dict": payload["state_dict"]}, ckpt)
    with pytest.raises(CheckpointFileError, match=rf"nan.ckpt: non-finite .*'{name}'"):
        load_checkpoint_weights(ckpt)
    assert Forecaster.load(saved).data is not None  # the intact file still loads


def test_recipe_file_error_is_a_value_error() -> None:
    assert issubclass(RecipeFileError, ValueError)


# ---------------------------------------------------------------------- 1. recipe files (CLI)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
SMALL_CLI = [
    "--data.init_args.num_series", "8",
    "--data.init_args.loader.batch_size", "8",
    "--trainer.max_epochs", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--model.init_args.latent_dim", "2",
]


def _alias_bomb(levels: int = 9, width: int = 9, under_tags: bool = False) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for k in range(1, levels):
        lines.append(f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * width)}]")
    if under_tags:  # nested under a logger's tags, where jsonargparse would walk it
        body = "\n".join("    " + line for line in lines)
        return (
            "trainer:\n  logger:\n    class_path: tsode.tracking.MLflowLogger\n    init_args:\n"
            f"      tags:\n{body.replace('    ', '        ', 1)}\n"
        ).replace("\n    a", "\n        a")
    return "\n".join(lines) + "\n"


@pytest.fixture
def cli_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.mark.parametrize("under_tags", [False, True])
def test_recipe_alias_bomb_refused_within_a_second(
    cli_dir: Path, capsys: pytest.CaptureFixture, under_tags: bool
) -> None:
    from tsode.cli import main

    recipe = cli_dir / "bomb.yaml"
    recipe.write_text(_alias_bomb(under_tags=under_tags))
    start = time.perf_counter()
    assert main(["fit", "--config", str(recipe)]) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err
    assert f"tsode: invalid recipe: {recipe}: the recipe expands to more than 100,000 YAML nodes" in err
    assert "Traceback" not in err


def test_recipe_too_large_refused(cli_dir: Path) -> None:
    from tsode.cli import MAX_RECIPE_BYTES, check_recipe_file

    recipe = cli_dir / "big.yaml"
    recipe.write_text("# " + "x" * MAX_RECIPE_BYTES + "\n")
    with pytest.raises(RecipeFileError, match=r"big.yaml: recipe file is [\d,]+ bytes, more than"):
        check_recipe_file(recipe)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("seed_everything: 0\nseed_everything: 1\n", "seed_everything", 2),
        ("model:\n  init_args:\n    lr: 0.1\n    latent_dim: 3\n    lr: 0.2\n", "lr", 5),
        ("trainer:\n  callbacks:\n    - class_path: a\n      init_args: {patience: 1, patience: 2}\n",
         "patience", 4),
    ],
)
def test_recipe_duplicate_key_names_key_and_line(
    cli_dir: Path, capsys: pytest.CaptureFixture, text: str, key: str, line: int
) -> None:
    from tsode.cli import main

    recipe = cli_dir / "dup.yaml"
    recipe.write_text(text)
    assert main(["fit", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}: duplicate key '{key}' at line {line}" in err


def test_shipped_recipes_pass_the_recipe_checks() -> None:
    from tsode.cli import check_recipe_file

    recipes = sorted((REPO / "recipes").glob("**/*.yaml"))
    assert len(recipes) > 10  # single recipes and the PhysioNet overlays
    for recipe in recipes:
        assert isinstance(check_recipe_file(recipe), dict), recipe


# ---------------------------------------------------------------------- 5. empty split (CLI)


def test_cli_fit_with_empty_validation_split_is_one_line(cli_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from tsode.cli import main

    code = main(["fit", "--config", str(QUICKSTART), *SMALL_CLI,
                 "--data.init_args.split_fractions", "[1.0, 0.0, 0.0]"])
    assert code == 1
    assert not list(cli_dir.rglob("*.ckpt"))  # refused before any training
    err = capsys.readouterr().err
    assert "tsode: error: tsode fit: the validation split is empty (train 8, val 0, test 0 series" in err
    assert "checkpoint.monitor: null" in err
    assert "not available" not in err and "Traceback" not in err


# ---------------------------------------------------------------------- 6. bad --ckpt_path (CLI)


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("subcommand", ["test", "predict"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such checkpoint file"),
        (b"", "not a readable checkpoint (0 bytes; truncated or corrupt?)"),
        (b"PK\x03\x04truncated", "not a readable checkpoint"),
        ("evil", "checkpoint holds objects torch.load(weights_only=True) refuses"),
        ("no_state", "not a Lightning checkpoint (no 'state_dict' mapping)"),
    ],
)
def test_cli_bad_ckpt_path_is_one_line_naming_file(
    cli_dir: Path, capsys: pytest.CaptureFixture, subcommand: str, content, message: str  # noqa: ANN001
) -> None:
    from tsode.cli import main

    ckpt = cli_dir / "model.ckpt"
    if content == "evil":
        torch.save({"state_dict": {}, "payload": _Evil()}, ckpt)
    elif content == "no_state":
        torch.save({"weights": torch.zeros(2)}, ckpt)
    elif content is not None:
        ckpt.write_bytes(content)
    code = main([subcommand, "--config", str(QUICKSTART), *SMALL_CLI, "--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("tsode:")]
    assert lines == [f"tsode: error: {ckpt}: " + lines[0].split(f"{ckpt}: ", 1)[1]]
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (cli_dir / "PWNED").exists()


def test_cli_ckpt_naming_foreign_class_is_refused(cli_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from tsode.cli import main

    ckpt = cli_dir / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)},
                "hyper_parameters": {"_class_path": "subprocess.Popen", "args": ["touch", "PWNED"]}}, ckpt)
    assert main(["test", "--config", str(QUICKSTART), "--ckpt_path", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert f"tsode: error: {ckpt}: names model class 'subprocess.Popen'" in err
    assert not (cli_dir / "PWNED").exists()


# ---------------------------------------------------------------------- 2. pyfunc params


def test_pyfunc_params_are_validated(saved: Path, frame: pd.DataFrame) -> None:
    from types import SimpleNamespace

    from tsode.pyfunc import ARTIFACT_KEY, ForecasterModel

    model = ForecasterModel()
    model.load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: str(saved)}))
    with pytest.raises(ValueError, match="horizon must be finite"):
        model.predict(None, frame, params={"horizon": float("inf")})
    with pytest.raises(ValueError, match="horizon must be > 0 hours, got 0"):
        model.predict(None, frame, params={"horizon": 0})
    with pytest.raises(ValueError, match="horizon must be a number of hours, got 'abc'"):
        model.predict(None, frame, params={"horizon": "abc"})
    with pytest.raises(ResourceLimitError, match="max_points_per_series"):
        model.predict(None, frame, params={"horizon": 1.0, "step": 1e-7})
    out = model.predict(None, frame, params={"horizon": 2.0, "step": 1.0})
    assert out.groupby("series_id")["time"].nunique().eq(2).all()


# ---------------------------------------------------------------------- encodings
def test_a_latin1_table_fitted_with_its_encoding_is_also_read_so_at_predict(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    table = frame.copy()
    table["channel"] = table["channel"].astype(str) + "_é"
    path = tmp_path / "latin1.csv"
    table.to_csv(path, index=False, encoding="latin-1")
    fc = _forecaster("locf", tmp_path).fit(path, cutoff=24.0, batch_size=8, encoding="latin-1")
    out = fc.predict(path, horizon=1.0, progress=False)
    assert set(out["channel"]) == set(table["channel"])


def test_alias_bomb_in_a_command_line_value_refused_within_a_second(
    cli_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """jsonargparse parses option values as YAML: a value on the command line gets the same
    bounds as a recipe file."""
    from tsode.cli import main

    bomb = "{" + _alias_bomb().strip().replace("\n", ", ") + "}"
    start = time.perf_counter()
    assert main(["fit", "--config", str(QUICKSTART), "--trainer.logger.init_args.tags", bomb]) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err
    assert ("tsode: invalid recipe: command-line value of --trainer.logger.init_args.tags: the recipe "
            "expands to more than 100,000 YAML nodes") in err
    assert "Traceback" not in err


def test_oversized_command_line_value_refused(cli_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from tsode.cli import MAX_RECIPE_BYTES, main

    huge = "x" * (MAX_RECIPE_BYTES + 1)
    assert main(["fit", "--config", str(QUICKSTART), f"--model.init_args.lr={huge}"]) == 2
    err = capsys.readouterr().err
    assert "command-line value of --model.init_args.lr" in err and "more than the" in err
