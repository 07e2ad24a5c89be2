"""A real two-process DDP run on CPU (gloo) through the `tsode` command.

`tsode fit` with ``--trainer.devices 2 --trainer.strategy ddp`` creates exactly one MLflow run;
`tsode test` of its best checkpoint on two processes gives the same test metrics as on one
process (every test series scored exactly once, metric states and logged values reduced over
both ranks), and each test run is a child run of the fit run.

Model and data are tiny (an ODE-RNN with fixed rk4 steps, 33 synthetic series): the time goes
into starting the processes. The test split has an odd number of series (5) and the eval batch
size is 2, so the ranks get unequal shares and unequal numbers of batches.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tsode.cli import main

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "tsode"  # the installed console script
TSODE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tsode.cli"]
EXPERIMENT = "ddp-test"

RECIPE = {
    "seed_everything": 0,
    "model": {
        "class_path": "tsode.models.odernn.ODERNN",
        "init_args": {
            "hidden_dim": 8, "ode_hidden_dim": 8, "ode_layers": 1, "decoder_hidden_dim": 8,
            "optim": {"lr": 0.01}, "solver": {"method": "rk4", "step_size": 4.0},
        },
    },
    "data": {
        "class_path": "tsode.data.SyntheticICUDataModule",
        "init_args": {
            # 33 series: 23 train, 5 val, 5 test (odd: DistributedSampler would pad)
            "num_series": 33, "min_obs": 10, "max_obs": 20,
            "task": {"kind": "forecast", "cutoff": 24.0},
            "loader": {"batch_size": 8, "eval_batch_size": 2}, "seed": 0,
        },
    },
    "trainer": {
        "max_epochs": 2,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": {
            "class_path": "tsode.tracking.MLflowLogger",
            "init_args": {"experiment_name": EXPERIMENT},
        },
    },
    "checkpoint": {"monitor": "val/mse", "mode": "min"},
    "tracking": {"num_plot_series": 1, "log_model": False},
}

#: means of per-batch values weighted by series count (loss terms, solver cost): they depend
#: on how the test series are grouped into batches, which differs between 1 and 2 processes
BATCH_MEANS = ("test/loss", "test/std_nll", "test/nfe_forward")

CPU = ["--trainer.accelerator", "cpu"]
DDP = [*CPU, "--trainer.devices", "2", "--trainer.strategy", "ddp"]
ONE = [*CPU, "--trainer.devices", "1"]


def run_tsode(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``tsode <args>`` in ``cwd`` (this worktree's package, a SQLite store in ``cwd``)."""
    return _run(TSODE + args, cwd, timeout)


def run_tsode_python(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <args>`` in ``cwd``, with the same environment as :func:`run_tsode`."""
    return _run([sys.executable, *args], cwd, timeout)


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
               p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)  # Lightning launches the second process and picks a free port
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_two_process_ddp_fit_and_test_match_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))

    fit = run_tsode(["fit", "--config", str(recipe), *DDP], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "Starting with 2 processes" in fit.stderr, fit.stderr[-3000:]
    assert "distributed_backend=gloo" in fit.stderr

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # rank 0's run only
    fit_run = runs[0]
    assert fit_run.info.status == "FINISHED"
    assert fit_run.info.run_name == "ddp"  # named after the recipe file
    assert fit_run.data.params["config.trainer.devices"] == "2"
    checkpoints = sorted(tmp_path.glob(f"outputs/*/{fit_run.info.run_id}/checkpoints/*.ckpt"))
    assert len(checkpoints) == 1, checkpoints  # written once, by rank 0
    ckpt = str(checkpoints[0])

    scores = {}
    for name, devices in (("ddp", DDP), ("one", ONE)):
        args = ["test", "--config", str(recipe), *devices, "--ckpt_path", ckpt]
        if name == "ddp":
            out = run_tsode(args, tmp_path)
            assert out.returncode == 0, out.stderr[-3000:]
            assert "Starting with 2 processes" in out.stderr, out.stderr[-3000:]
        else:  # one process: the same entry point in this process (saves starting python)
            monkeypatch.chdir(tmp_path)
            monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
            assert main(args) == 0
        children = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{fit_run.info.run_id}'",
            order_by=["attributes.start_time DESC"],
        )
        assert len(children) == len(scores) + 1  # one new child run per `tsode test`
        child = children[0]
        assert child.info.run_name == "ddp-test" and child.info.status == "FINISHED"
        assert child.data.tags["tsode.fit_run_id"] == fit_run.info.run_id
        assert child.data.tags["tsode.subcommand"] == "test"
        assert child.data.params["config.trainer.devices"] == ("2" if name == "ddp" else "1")
        scores[name] = child.data.metrics

    # the fit created one run; each test run is its child, none is a top-level run
    top_level = [r for r in client.search_runs([experiment.experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in top_level] == [fit_run.info.run_id]

    ddp, one = scores["ddp"], scores["one"]
    assert set(ddp) == set(one)
    assert set(BATCH_MEANS) <= set(one)
    scored = sorted(set(one) - set(BATCH_MEANS) - {"epoch"})
    assert {"test/mse", "test/mae", "test/mse_orig", "test/mae_orig", "test/mse_orig/map",
            "test/mae_orig/temp", "test/crps", "test/coverage90"} <= set(scored)
    for key in scored:  # errors over entries (overall, per channel) and predictive scores
        assert ddp[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key


FORECASTER_SCRIPT = '''
import sys
from pathlib import Path

from tsode.api import Forecaster, process_rank
from tsode.data import SyntheticICUDataModule

out = Path(sys.argv[1])
dm = SyntheticICUDataModule(num_series=21, min_obs=10, max_obs=20, seed=0)
dm.setup()
frame = dm.table.to_long_frame()
fc = Forecaster(
    "gru_dt", hidden_dim=4, experiment_name="forecaster-ddp",
    tracking_uri=f"sqlite:///{out / 'mlflow.db'}", work_dir=out / "work", verbose=False,
    trainer_kwargs={"max_epochs": 1, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                    "enable_progress_bar": False, "enable_model_summary": False},
)
fc.fit(frame, cutoff=24.0, batch_size=4)
rank = process_rank()
fc.predict(frame, horizon=2.0, progress=False).to_csv(out / f"predict-{rank}.csv", index=False)
fc.save(out / "model")
fc.evaluate(frame, batch_size=4).to_csv(out / f"evaluate-{rank}.csv")
'''


@pytest.mark.slow
def test_forecaster_under_two_process_ddp(tmp_path: Path) -> None:
    """A script fitting a `Forecaster` with ``strategy="ddp"`` on 2 CPU processes runs on
    both ranks: `predict` returns every series, the same on both ranks; `save` writes one
    model (rank 0); `evaluate` gives the same scores on both ranks and logs one child run."""
    import pandas as pd

    from tsode.api import Forecaster
    from tsode.data import SyntheticICUDataModule

    script = tmp_path / "fit_ddp.py"
    script.write_text(FORECASTER_SCRIPT)
    out = run_tsode_python([str(script), str(tmp_path)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stderr, out.stderr[-3000:]

    dm = SyntheticICUDataModule(num_series=21, min_obs=10, max_obs=20, seed=0)
    dm.setup()
    frame = dm.table.to_long_frame()
    rank0, rank1 = (pd.read_csv(tmp_path / f"predict-{r}.csv") for r in (0, 1))
    pd.testing.assert_frame_equal(rank0, rank1)
    assert rank0["series_id"].nunique() == frame["series_id"].nunique() == 21
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.yaml", "forecaster.pt"]
    # the saved model (rank 0's) forecasts as both ranks did
    again = Forecaster.load(tmp_path / "model").predict(frame, horizon=2.0, progress=False)
    pd.testing.assert_frame_equal(
        rank0, again.astype({"series_id": rank0["series_id"].dtype}), check_exact=False, rtol=1e-5
    )
    pd.testing.assert_frame_equal(*(pd.read_csv(tmp_path / f"evaluate-{r}.csv") for r in (0, 1)))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("forecaster-ddp").experiment_id])
    fit_runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_name for r in fit_runs] == ["forecaster-gru_dt"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == fit_runs[0].info.run_id]
    assert [r.info.run_name for r in children] == ["forecaster-gru_dt-evaluate"]
    assert len(runs) == 2
