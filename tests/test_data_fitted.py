"""``tsode.data.fitted.FittedData``: the data layer's one fitted-data object (tables -> tensors
exactly as the data module builds them, model outputs -> tidy frames in original units)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tsode.data import (
    DataValidationError,
    FittedData,
    SyntheticICUDataModule,
    TableDataModule,
    TaskConfig,
    batch_to_frame,
)
from tsode.data.fitted import build_dataset, default_horizon
from tsode.data.frames import float32_repr


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    dm = SyntheticICUDataModule(num_series=16, seed=0)
    dm.setup()
    return dm.table.to_long_frame()


@pytest.fixture(scope="module")
def datamodule(frame: pd.DataFrame) -> TableDataModule:
    dm = TableDataModule(frame, task=TaskConfig("forecast", cutoff=24.0), split_fractions=(0.5, 0.25, 0.25))
    dm.setup("fit")
    return dm


def _assert_same_batches(a, b) -> None:  # noqa: ANN001
    assert a.series_ids == b.series_ids
    assert a.channels == b.channels
    for part in ("context", "target"):
        pa, pb = getattr(a, part), getattr(b, part)
        for name in ("times", "values", "mask", "lengths"):
            torch.testing.assert_close(getattr(pa, name), getattr(pb, name), rtol=0, atol=0)
    torch.testing.assert_close(a.time_offset, b.time_offset, rtol=0, atol=0)


def test_datamodule_gives_its_fitted_state(datamodule: TableDataModule) -> None:
    fitted = datamodule.fitted
    assert isinstance(fitted, FittedData)
    assert fitted == FittedData.from_datamodule(datamodule)
    assert fitted.channels == datamodule.channels
    assert fitted.normalizer == datamodule.normalizer
    assert fitted.time_axis == datamodule.time_axis
    assert fitted.task == datamodule.task
    assert fitted.spec == datamodule.spec
    assert fitted.scale == [float(s) for s in datamodule.normalizer.std]


def test_table_and_dataset_give_the_datamodules_own_tensors(
    datamodule: TableDataModule, frame: pd.DataFrame
) -> None:
    """The rows of the test split, read back through ``table`` and ``dataset``, give exactly
    the tensors of the data module's own test dataset (same normalization, same task)."""
    fitted = datamodule.fitted
    own = datamodule.datasets["test"]
    ids = set(own.series_ids)
    rows = frame[frame["series_id"].isin(ids)]
    dataset = fitted.dataset(fitted.table(rows), datamodule.task, seed_offset=2)
    assert dataset.series_ids == own.series_ids
    positions = list(range(len(own)))
    _assert_same_batches(dataset.collate(positions), own.collate(positions))
    # and the data module's dataset_for is the same construction
    via_module = datamodule.dataset_for(fitted.table(rows), datamodule.task)
    direct = fitted.dataset(fitted.table(rows), datamodule.task)
    _assert_same_batches(via_module.collate(positions), direct.collate(positions))


def test_build_dataset_is_what_the_splits_are_built_with(datamodule: TableDataModule) -> None:
    own = datamodule.datasets["val"]
    rebuilt = build_dataset(
        own.table, datamodule.task, None, None, datamodule.normalizer,
        datamodule.static_normalizer, seed_offset=1, keep_unusable=False,
    )
    positions = list(range(len(own)))
    _assert_same_batches(rebuilt.collate(positions), own.collate(positions))


def test_to_frame_inverts_the_normalization_exactly(datamodule: TableDataModule) -> None:
    """Observations through ``to_frame`` come back as read; values in normalized units come
    back as ``value * std + mean`` (float32 repr), times in the input's representation."""
    fitted = datamodule.fitted
    dataset = datamodule.datasets["val"]
    batch = dataset.collate(list(range(len(dataset))))
    ctx = batch.context
    observed = fitted.to_frame(
        batch.series_ids, ctx.times, ctx.values, ctx.mask, time_offset=batch.time_offset,
        table=dataset.table, observed_columns=("value",),
    )
    expected = batch_to_frame(
        batch, "context", normalizer=datamodule.normalizer, time_axis=datamodule.time_axis,
        table=dataset.table,
    )
    pd.testing.assert_frame_equal(observed, expected)
    # the observations exactly as in the table (its float32 values, shortest repr)
    source = datamodule.table.to_long_frame()
    merged = observed.merge(source, on=["series_id", "time", "channel"], suffixes=("", "_in"))
    assert len(merged) == len(observed)
    np.testing.assert_array_equal(merged["value"].to_numpy(), float32_repr(merged["value_in"].to_numpy()))
    # normalized values map back with the fitted statistics
    out = fitted.to_frame(batch.series_ids, ctx.times, ctx.values, ctx.mask)
    channel = out["channel"].map({c: i for i, c in enumerate(fitted.channels)}).to_numpy()
    mean, std = fitted.normalizer.mean[channel], fitted.normalizer.std[channel]
    normalized = ctx.values[ctx.mask].double().numpy()
    back = (normalized * std + mean).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(out["value"].to_numpy(), back, rtol=1e-6, atol=1e-6)
    # spreads (std columns) are scaled by the channel std only
    spread = fitted.to_frame(
        batch.series_ids, ctx.times, ctx.values, ctx.mask, extra={"std": torch.ones_like(ctx.values)},
        std_columns=("std",),
    )
    np.testing.assert_allclose(spread["std"].to_numpy(), std.astype(np.float32), rtol=1e-7)


def test_state_dict_round_trip(datamodule: TableDataModule) -> None:
    fitted = datamodule.fitted
    again = FittedData.from_state_dict(fitted.state_dict())
    assert again == fitted
    assert again.state_dict() == fitted.state_dict()


def test_the_old_import_paths_still_work() -> None:
    import tsode
    from tsode.api import FittedData as from_api

    assert from_api is FittedData
    assert tsode.FittedData is FittedData


def test_dataset_fills_unknown_static_covariates_and_refuses_others() -> None:
    frame = pd.DataFrame(
        {
            "series_id": [1, 1, 2, 2, 3, 3, 4, 4],
            "time": [0.0, 1.0] * 4,
            "a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "age": [50, 50, 60, 60, 70, 70, 80, 80],
        }
    )
    dm = TableDataModule(frame, static_cols=["age"], task="interpolation", split_fractions=(0.5, 0.25, 0.25))
    fitted = dm.fitted
    table = fitted.table(frame.drop(columns=["age"]))  # no static column: unknown
    assert table.static_names == ["age"] and np.isnan(table.static).all()
    dataset = fitted.dataset(table, TaskConfig(kind="none"))
    assert dataset.static is not None and float(dataset.static.abs().sum()) == 0.0
    other = fitted.table(frame)
    other.static_names = ["weight"]
    with pytest.raises(DataValidationError, match="do not match the fitted"):
        fitted.dataset(other, TaskConfig(kind="none"))


def test_default_horizon() -> None:
    assert default_horizon(TaskConfig(kind="forecast", cutoff=24.0, horizon=12.0), 48.0) == 12.0
    assert default_horizon(TaskConfig(kind="forecast", cutoff=24.0), 48.0) == 24.0
    assert default_horizon(TaskConfig(kind="forecast", cutoff_fraction=0.25), 40.0) == 30.0
    assert default_horizon(TaskConfig(kind="forecast", cutoff=24.0), None) == 24.0
