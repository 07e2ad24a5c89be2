"""The last-observation readouts every forecaster shares (``persistence="gate"`` / ``"channel"``)."""

from __future__ import annotations

import pytest
import torch

from tsode.data.batch import SeriesPart
from tsode.models import MODELS
from tsode.models.blocks import ChannelReadout, Persistence, forecast_heads, last_observation


def _part(batch: int = 8, length: int = 6, channels: int = 3, seed: int = 0) -> SeriesPart:
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(batch, length, generator=gen) * 10.0, dim=1).values
    values = torch.randn(batch, length, channels, generator=gen)
    mask = torch.rand(batch, length, channels, generator=gen) < 0.6
    return SeriesPart(times, values, mask, torch.full((batch,), length))


def test_forecast_heads_build_the_requested_readout() -> None:
    assert isinstance(forecast_heads(None, 4, 3, True, "none")[0], Persistence)
    assert isinstance(forecast_heads(None, 4, 3, "gate", "none")[0], Persistence)
    assert isinstance(forecast_heads(None, 4, 3, "channel", "none")[0], ChannelReadout)
    assert forecast_heads(None, 4, 3, False, "none")[0] is None
    assert forecast_heads(None, 4, 3, "none", "none")[0] is None
    with pytest.raises(ValueError, match="persistence must be"):
        forecast_heads(None, 4, 3, "last", "none")


def test_channel_readout_starts_closed_and_depends_on_each_channel_alone() -> None:
    torch.manual_seed(0)
    part = _part()
    readout = ChannelReadout(num_channels=3, feature_dim=4)
    times = torch.full((8, 2), 11.0)
    features = torch.randn(8, 2, 4)
    term, carried = readout(part, times, features)
    values, _, seen = last_observation(part, times)
    assert term.shape == (8, 2, 3) and carried.shape == (8, 2, 6)
    # a new model starts as its own decoder: zero residual, a nearly closed gate
    assert term.abs().max() <= 0.02 * values.abs().max() + 1e-6
    # channel 0's term does not move when another channel's last value changes
    readout.out_weight.data.normal_()
    changed = SeriesPart(part.times, part.values.clone(), part.mask, part.lengths)
    changed.values[..., 1:] += 5.0
    before, _ = readout(part, times, features)
    after, _ = readout(changed, times, features)
    torch.testing.assert_close(before[..., 0], after[..., 0])
    assert not torch.allclose(before[..., 1:], after[..., 1:])


def test_channel_readout_learns_mean_reversion_the_gate_cannot_express() -> None:
    """Target ``0.5 * x_last`` for x_last > 0, ``x_last`` otherwise: a value-dependent
    persistence. The per-channel readout fits it; the linear-in-state gate, whose input does not
    contain the channel's value, cannot."""
    torch.manual_seed(0)
    part = _part(batch=256, length=5, channels=2, seed=1)
    times = torch.full((256, 1), 12.0)
    features = torch.zeros(256, 1, 4)
    values, _, seen = last_observation(part, times)
    target = torch.where(values > 0, 0.5 * values, values)
    errors = {}
    for name, head in (("gate", Persistence(2, 4)), ("channel", ChannelReadout(2, 4))):
        opt = torch.optim.Adam(head.parameters(), lr=0.03)
        for _ in range(400):
            opt.zero_grad()
            term, _ = head(part, times, features)
            loss = ((term - target)[seen] ** 2).mean()
            loss.backward()
            opt.step()
        errors[name] = float(loss.detach())
    baseline = float((target[seen] ** 2).mean())
    assert errors["channel"] < 0.05 * baseline
    assert errors["gate"] > 4 * errors["channel"]


@pytest.mark.parametrize("name", ["gru_dt", "odernn", "ncde", "latent_ode"])
def test_every_forecaster_accepts_the_channel_readout(name: str) -> None:
    model = MODELS[name](num_channels=3, persistence="channel")
    assert isinstance(model.persistence, ChannelReadout)
