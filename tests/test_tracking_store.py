"""The local MLflow tracking store: created once under a file lock by concurrent processes;
store failures reported as tracking-store errors naming the URI, not as recipe errors."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from tsode.errors import TrackingStoreError
from tsode.tracking import ensure_tracking_store


def _create_store(uri: str, barrier: mp.synchronize.Barrier, results: mp.Queue) -> None:
    barrier.wait()  # all three open the fresh store at the same moment
    try:
        ensure_tracking_store(uri)
        results.put("ok")
    except Exception as err:  # reported to the parent, which asserts on it
        results.put(f"{type(err).__name__}: {err}")


@pytest.mark.slow
def test_three_processes_create_one_store_at_once(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_create_store, args=(uri, barrier, results)) for _ in range(3)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok", "ok", "ok"]
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]


def test_missing_directory_is_a_tracking_store_error(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    with pytest.raises(TrackingStoreError) as err:
        ensure_tracking_store(uri)
    assert str(err.value) == (
        f"MLflow tracking store {uri}: directory {tmp_path / 'absent'} does not exist; fix the "
        "store, or choose another with tracking_uri= / trainer.logger.init_args.tracking_uri / "
        "MLFLOW_TRACKING_URI"
    )


def test_corrupt_database_is_a_tracking_store_error(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not an sqlite database" * 100)
    uri = f"sqlite:///{db}"
    with pytest.raises(TrackingStoreError) as err:
        ensure_tracking_store(uri)
    assert str(err.value).startswith(
        f"MLflow tracking store {uri}: could not be created or opened (DatabaseError: "
    )
    assert "file is not a database" in str(err.value)


def test_cli_reports_a_broken_store_as_a_store_error_not_a_recipe_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from tsode.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    code = main([
        "fit", "--model", "tsode.models.baselines.LOCF",
        "--data", "tsode.data.SyntheticICUDataModule", "--data.init_args.num_series", "6",
        "--trainer.max_epochs", "1", "--trainer.logger.init_args.tracking_uri", uri,
    ])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"tsode: error: MLflow tracking store {uri}: directory {tmp_path / 'absent'} does not "
        "exist; fix the store, or choose another with tracking_uri= / "
        "trainer.logger.init_args.tracking_uri / MLFLOW_TRACKING_URI"
    )
    assert "invalid configuration" not in err
