"""Per-channel history features (``tsode.models.history``) and the ``persistence="history"``
readout: exact against a direct sum, strict before the query, padding-invariant."""

from __future__ import annotations

import math

import pytest
import torch

from tsode.data.batch import SeriesPart
from tsode.models import MODELS
from tsode.models.blocks import ChannelReadout, forecast_heads
from tsode.models.history import channel_history

SCALES = (1.0, 6.0, 24.0)


def _part(seed: int = 0) -> tuple[SeriesPart, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch, length, channels = 4, 9, 3
    times = torch.sort(torch.rand(batch, length, generator=gen, dtype=torch.float64) * 60.0, dim=1).values
    lengths = torch.tensor([9, 5, 1, 0])
    for row, n in enumerate(lengths.tolist()):  # padded tails repeat the last real time
        times[row, n:] = times[row, max(n - 1, 0)]
    values = 3.0 * torch.randn(batch, length, channels, generator=gen, dtype=torch.float64)
    mask = torch.rand(batch, length, channels, generator=gen) < 0.5
    queries = torch.sort(torch.rand(batch, 6, generator=gen, dtype=torch.float64) * 70.0, dim=1).values
    queries[0, 0] = times[0, 3]  # a query exactly at an observation time: not "before" it
    return SeriesPart(times, values, mask, lengths), queries


def _direct(part: SeriesPart, queries: torch.Tensor, row: int, m: int, c: int) -> list[float]:
    tau = float(queries[row, m])
    seen = [
        (float(part.times[row, i]), float(part.values[row, i, c]))
        for i in range(int(part.lengths[row]))
        if float(part.times[row, i]) < tau and bool(part.mask[row, i, c])
    ]
    if not seen:
        return [0.0] * (len(SCALES) + 2)
    out = []
    for scale in SCALES:
        w = [math.exp(-(tau - t) / scale) for t, _ in seen]
        out.append(sum(wi * x for wi, (_, x) in zip(w, seen)) / sum(w))
    w = [math.exp(-(tau - t) / SCALES[-1]) for t, _ in seen]
    second = sum(wi * x * x for wi, (_, x) in zip(w, seen)) / sum(w)
    out.append(math.sqrt(max(second - out[len(SCALES) - 1] ** 2, 0.0)))
    out.append(math.log1p(len(seen)))
    return out


def test_history_matches_the_direct_weighted_sums() -> None:
    part, queries = _part()
    got = channel_history(part, queries, SCALES)
    assert got.shape == (4, 6, 3, len(SCALES) + 2) and got.dtype == torch.float64
    want = torch.tensor(
        [[[_direct(part, queries, b, m, c) for c in range(3)] for m in range(6)] for b in range(4)],
        dtype=torch.float64,
    )
    # the means to rounding; the spread is a sqrt of a difference of moments, so a single
    # observation's zero spread comes out as sqrt(rounding) ~ 1e-7
    torch.testing.assert_close(got[..., :3], want[..., :3], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[..., 3:], want[..., 3:], rtol=1e-6, atol=1e-6)
    assert bool((got[3] == 0).all())  # an empty series has no history


def test_history_survives_spans_where_the_weights_underflow() -> None:
    """Observations 5000 h before the query at a 1 h scale: exp(-5000) is 0 in float64, the
    log-space prefix sums still give the most recent value's weight its due."""
    times = torch.tensor([[0.0, 1.0, 2.0]])
    values = torch.tensor([[[1.0], [2.0], [4.0]]])
    part = SeriesPart(times, values, torch.ones(1, 3, 1, dtype=torch.bool), torch.tensor([3]))
    got = channel_history(part, torch.tensor([[5002.0]]), (1.0,))
    assert torch.isfinite(got).all()
    e = math.exp(-1.0)
    want = (1.0 * e**2 + 2.0 * e + 4.0) / (e**2 + e + 1.0)
    assert abs(float(got[0, 0, 0, 0]) - want) < 1e-5


def test_history_ignores_padding() -> None:
    part, queries = _part(seed=3)
    row = 1
    n = int(part.lengths[row])
    alone = SeriesPart(
        part.times[row : row + 1, :n], part.values[row : row + 1, :n], part.mask[row : row + 1, :n],
        part.lengths[row : row + 1],
    )
    padded = part.values.clone()
    padded[row, n:] = 1e6  # garbage in padded slots (also unmasked) must not reach the features
    noisy = SeriesPart(part.times, padded, part.mask | (torch.arange(9) >= n).view(1, 9, 1), part.lengths)
    torch.testing.assert_close(
        channel_history(noisy, queries, SCALES)[row], channel_history(alone, queries[row : row + 1], SCALES)[0]
    )


def test_history_readout_feeds_the_std_head_and_every_forecaster() -> None:
    readout, std_head = forecast_heads(None, 4, 3, "history", "gaussian")
    assert isinstance(readout, ChannelReadout) and readout.history_scales
    part, queries = _part()
    part32 = SeriesPart(part.times.float(), part.values.float(), part.mask, part.lengths)
    term, carried = readout(part32, queries.float(), torch.zeros(4, 6, 4))
    assert term.shape == (4, 6, 3) and carried.shape == (4, 6, 3 * readout.carried_per_channel)
    assert std_head is not None and std_head(torch.cat([torch.zeros(4, 6, 4), carried], -1)).shape == (4, 6, 3)
    for name in ("gru_dt", "odernn", "ncde", "latent_ode"):
        model = MODELS[name](num_channels=3, persistence="history")
        assert isinstance(model.persistence, ChannelReadout) and model.persistence.history_scales


def test_history_scales_must_be_positive() -> None:
    part, queries = _part()
    with pytest.raises(ValueError, match="positive hours"):
        channel_history(part, queries, (0.0,))
