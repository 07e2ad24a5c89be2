"""Forecaster under DDP: only rank 0 writes (save, evaluation runs); predict writes nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from tsode.api import Forecaster, process_rank

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fitted(synthetic_long_frame, tmp_path_factory) -> tuple[Forecaster, pd.DataFrame]:  # noqa: ANN001
    frame: pd.DataFrame = synthetic_long_frame(10)
    fc = Forecaster(
        "gru_dt", hidden_dim=4, tracking=False, work_dir=tmp_path_factory.mktemp("w"),
        verbose=False,
        trainer_kwargs={"max_epochs": 1, "enable_progress_bar": False,
                        "enable_model_summary": False},
    )
    return fc.fit(frame, cutoff=24.0, batch_size=4), frame


def test_save_on_a_non_zero_rank_writes_nothing(
    fitted: tuple[Forecaster, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fc, frame = fitted
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # as in the second DDP process
    assert process_rank() == 1
    with caplog.at_level("INFO", logger="tsode.api"):
        assert fc.save(tmp_path / "fc") == tmp_path / "fc"
    assert not (tmp_path / "fc").exists()
    assert f"save: process rank 1 does not write {tmp_path / 'fc'} (rank 0 saves)" in caplog.text
    before = sorted(tmp_path.iterdir())
    out = fc.predict(frame, horizon=2.0, progress=False)  # computed, nothing written
    assert len(out) > 0 and sorted(tmp_path.iterdir()) == before
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    fc.save(tmp_path / "fc")
    assert sorted(p.name for p in (tmp_path / "fc").iterdir()) == ["config.yaml", "forecaster.pt"]


def test_evaluate_on_a_non_zero_rank_logs_no_run(
    fitted: tuple[Forecaster, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    fc, frame = fitted
    logged: list[object] = []
    monkeypatch.setattr(fc, "tracking", True)
    monkeypatch.setattr(fc, "run_id", "r" * 32)
    monkeypatch.setattr(fc, "fit_summary", {**fc.fit_summary, "tracking_uri": "sqlite:///x.db"})
    monkeypatch.setattr(fc, "_log_evaluation", lambda *args: logged.append(args))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    fc.evaluate(frame, batch_size=4)
    assert logged == []
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    fc.evaluate(frame, batch_size=4)
    assert len(logged) == 1
