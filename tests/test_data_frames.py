"""Batches back to tables: observation times come back exactly as read (not float32-rounded)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from tsode.data import LoaderConfig, TableDataModule, TaskConfig, batch_to_frame
from tsode.data.frames import snap_to_table_times

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "samples" / "icu_long.csv"


def _module() -> tuple[TableDataModule, pd.DataFrame]:
    frame = pd.read_csv(SAMPLE, parse_dates=["time"])
    dm = TableDataModule(frame, task=TaskConfig(cutoff=24.0), loader=LoaderConfig(batch_size=64), split_fractions=(0.6, 0.2, 0.2))
    dm.setup()
    return dm, frame


def test_batch_times_map_back_to_the_exact_source_times() -> None:
    dm, frame = _module()
    batch = next(iter(dm.test_dataloader()))
    source = set(frame["time"])
    rounded = batch_to_frame(batch, "target", normalizer=dm.normalizer, time_axis=dm.time_axis)
    assert not set(rounded["time"]) <= source  # float32 batch times alone are off by ~ms
    exact = batch_to_frame(
        batch, "target", normalizer=dm.normalizer, time_axis=dm.time_axis, table=dm.table
    )
    assert set(exact["time"]) <= source
    assert (exact["time"] - rounded["time"]).abs().max() < pd.Timedelta(milliseconds=50)


def test_snapping_leaves_other_times_alone() -> None:
    dm, _ = _module()
    sid = dm.table.series_ids[0]
    known = dm.table.series(0)[0]
    hours = np.array([known[1] * (1 + 1e-7), known[1] + 0.01, 1e6], dtype=np.float64)
    out = snap_to_table_times(hours, np.zeros(3, dtype=np.int64), [sid], dm.table)
    assert out[0] == known[1]  # float32 neighbour of an observation time: snapped
    assert out[1] == hours[1] and out[2] == hours[2]  # a query time between observations: kept
    unknown = snap_to_table_times(hours, np.zeros(3, dtype=np.int64), ["nope"], dm.table)
    np.testing.assert_array_equal(unknown, hours)


def test_forecast_writer_reports_exact_times(tmp_path: Path) -> None:
    from tsode.models.forecast import Forecast
    from tsode.prediction_writer import ForecastWriter

    dm, frame = _module()
    out = tmp_path / "forecasts.csv"
    writer = ForecastWriter(output=str(out))
    trainer = SimpleNamespace(is_global_zero=True, datamodule=dm)
    writer.on_predict_start(trainer, None)
    for i, batch in enumerate(dm.predict_dataloader()):
        target = batch.target
        prediction = {"times": target.times, "forecast": Forecast(mean=target.values), "mask": target.time_mask}
        writer.write_on_batch_end(trainer, None, prediction, None, batch, i, 0)
    writer.on_predict_end(trainer, None)
    written = pd.read_csv(out, parse_dates=["time"])
    assert len(written) > 0 and set(written["time"]) <= set(frame["time"])
    observed = written.dropna(subset=["observed"])
    merged = observed.merge(frame, on=["series_id", "time", "channel"])  # joins on exact times
    assert len(merged) == len(observed)
    np.testing.assert_allclose(merged["observed"], merged["value"], rtol=1e-5)
