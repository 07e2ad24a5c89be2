"""The sample files in datasets/samples load in every supported format and agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tsode.data import (
    LoaderConfig,
    TableDataModule,
    TableSpec,
    TaskConfig,
    load_physionet2012,
    load_table,
)

SAMPLES = Path(__file__).resolve().parents[1] / "datasets" / "samples"
WIDE = TableSpec(static_cols=["icu_unit"], label_col="lactate_high")


def test_csv_and_parquet_samples_agree() -> None:
    long_csv = load_table(SAMPLES / "icu_long.csv")
    long_pq = load_table(SAMPLES / "icu_long.parquet")
    wide_csv = load_table(SAMPLES / "icu_wide.csv", WIDE)
    wide_pq = load_table(SAMPLES / "icu_wide.parquet", WIDE)
    for a, b in ((long_csv, long_pq), (wide_csv, wide_pq)):
        assert a.series_ids == b.series_ids and a.channels == b.channels
        np.testing.assert_allclose(a.times, b.times, atol=1e-9)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-6)
    assert long_csv.time_axis.kind == "datetime" and wide_csv.time_axis.kind == "numeric"
    # same observations: wide holds float hours, long the same times as datetimes (minutes)
    assert long_csv.series_ids == wide_csv.series_ids
    assert sorted(long_csv.channels) == sorted(wide_csv.channels)
    wide_vals = wide_csv.with_channels(long_csv.channels).values
    assert np.isclose(np.nansum(long_csv.values), np.nansum(wide_vals), rtol=1e-6)
    assert abs(int(long_csv.mask.sum()) - int(wide_csv.mask.sum())) <= 5  # minute collisions
    assert set(np.unique(wide_csv.static[:, 0])) <= {1.0, 2.0, 3.0, 4.0}
    assert set(np.unique(wide_csv.labels)) <= {0.0, 1.0}


def test_wide_sample_trains_through_a_datamodule() -> None:
    dm = TableDataModule(
        str(SAMPLES / "icu_wide.csv"),
        static_cols=["icu_unit"],
        label_col="lactate_high",
        task=TaskConfig(cutoff=24.0),
        loader=LoaderConfig(batch_size=4),
        split_fractions=(0.6, 0.2, 0.2),
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.static.shape == (batch.batch_size, 1) and batch.labels is not None
    assert dm.channels == ["heart_rate", "resp_rate", "map", "temp", "lactate"]


def test_physionet_format_sample(tmp_path: Path) -> None:
    table = load_physionet2012(SAMPLES / "physionet2012", cache_dir=tmp_path, progress=False)
    assert table.series_ids == [900001, 900002, 900003, 900004, 900005]
    observed = {c for c, n in zip(table.channels, table.mask.sum(0)) if n}
    assert observed <= {"HR", "RespRate", "MAP", "Temp", "Lactate"} and "HR" in observed
    assert set(table.labels.tolist()) <= {0.0, 1.0}
    outcomes = pd.read_csv(SAMPLES / "physionet2012" / "Outcomes-a.txt")
    np.testing.assert_array_equal(table.labels, outcomes["In-hospital_death"].to_numpy())
