"""Shared fixtures: small hand-built ``IrregularBatch`` instances (no dataset needed)."""

from __future__ import annotations

import pytest
import torch

from tsode.data.batch import IrregularBatch, SeriesPart


def make_part(
    times: list[list[float]],
    num_channels: int,
    generator: torch.Generator,
    observe_prob: float = 0.7,
    dtype: torch.dtype = torch.float32,
) -> SeriesPart:
    """Pad ragged per-series time lists into a SeriesPart with random values and masks.

    Padded tails repeat the row's last real time; padded values are 0 and masked out. Every
    real time point has at least one observed channel.
    """
    lengths = torch.tensor([len(t) for t in times], dtype=torch.long)
    width = max(int(lengths.max()), 1)
    batch = len(times)
    t = torch.zeros(batch, width, dtype=dtype)
    values = torch.zeros(batch, width, num_channels, dtype=dtype)
    mask = torch.zeros(batch, width, num_channels, dtype=torch.bool)
    for b, row in enumerate(times):
        n = len(row)
        if n == 0:
            continue
        t[b, :n] = torch.tensor(row, dtype=dtype)
        t[b, n:] = row[-1]
        m = torch.rand(n, num_channels, generator=generator) < observe_prob
        m[torch.arange(n), torch.randint(num_channels, (n,), generator=generator)] = True
        mask[b, :n] = m
        values[b, :n] = torch.where(
            m, torch.randn(n, num_channels, generator=generator, dtype=dtype), torch.zeros((), dtype=dtype)
        )
    return SeriesPart(times=t, values=values, mask=mask, lengths=lengths)


def make_batch(
    context_times: list[list[float]],
    target_times: list[list[float]],
    num_channels: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> IrregularBatch:
    """An IrregularBatch from ragged context / target time lists (hours), random values."""
    gen = torch.Generator().manual_seed(seed)
    context = make_part(context_times, num_channels, gen, dtype=dtype)
    target = make_part(target_times, num_channels, gen, dtype=dtype)
    batch = len(context_times)
    return IrregularBatch(
        context=context,
        target=target,
        series_ids=[f"s{i}" for i in range(batch)],
        channels=[f"c{i}" for i in range(num_channels)],
        time_offset=torch.zeros(batch, dtype=dtype),
    )


def select_rows(batch: IrregularBatch, rows: list[int]) -> IrregularBatch:
    """Sub-batch / reordering of rows (keeps padding widths)."""
    idx = torch.tensor(rows, dtype=torch.long)

    def part(p: SeriesPart) -> SeriesPart:
        return SeriesPart(p.times[idx], p.values[idx], p.mask[idx], p.lengths[idx])

    return IrregularBatch(
        context=part(batch.context),
        target=part(batch.target),
        series_ids=[batch.series_ids[i] for i in rows],
        channels=list(batch.channels),
        time_offset=None if batch.time_offset is None else batch.time_offset[idx],
    )


@pytest.fixture
def forecast_batch() -> IrregularBatch:
    """4 series, 3 channels, ragged context lengths, targets after each context."""
    return make_batch(
        context_times=[[0.0, 0.5, 1.3, 2.0], [0.2, 1.0], [0.0, 0.4, 0.9, 1.1, 1.7, 2.5], [0.1]],
        target_times=[[2.5, 3.0], [1.4, 2.0, 2.2], [3.0], [0.6, 1.0]],
        num_channels=3,
        seed=0,
    )


@pytest.fixture
def forecast_batch64() -> IrregularBatch:
    """Tiny float64 batch for gradient comparisons (adjoint vs backprop)."""
    return make_batch(
        context_times=[[0.0, 0.5, 1.3], [0.2, 1.0]],
        target_times=[[1.8, 2.1], [1.4]],
        num_channels=2,
        seed=1,
        dtype=torch.float64,
    )


@pytest.fixture(scope="session")
def synthetic_long_frame():
    """Factory: ``num_series`` synthetic ICU series (seed 0) as a long table
    (series_id, time, channel, value)."""
    from tsode.data import SyntheticICUDataModule

    def make(num_series: int):
        dm = SyntheticICUDataModule(num_series=num_series, seed=0)
        dm.setup()
        return dm.table.to_long_frame()

    return make
