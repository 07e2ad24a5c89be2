"""Baselines: exact LOCF values, fitted channel mean, GRU-dt."""

from __future__ import annotations

import torch
from conftest import make_batch

from tsode.models.baselines import LOCF, ChannelMean, GRUDelta, last_observed


def test_locf_carries_each_channel_forward_strictly_before_the_query():
    batch = make_batch([[0.0, 1.0, 2.0]], [[3.0]], num_channels=2, seed=0)
    ctx = batch.context
    ctx.values[:] = torch.tensor([[[1.0, 10.0], [2.0, 0.0], [0.0, 0.0]]])
    ctx.mask[:] = torch.tensor([[[True, True], [True, False], [False, False]]])
    model = LOCF(num_channels=2)
    times = torch.tensor([[0.0, 0.5, 1.0, 1.5, 5.0]])
    pred = model.forecast(batch, times).mean[0]
    expected = torch.tensor([[0.0, 0.0], [1.0, 10.0], [1.0, 10.0], [2.0, 10.0], [2.0, 10.0]])
    torch.testing.assert_close(pred, expected)


def test_last_observed_ignores_padding():
    batch = make_batch([[0.0, 1.0], [0.5]], [[2.0], [1.0]], num_channels=2, seed=1)
    filled, seen = last_observed(batch.context)
    assert not seen[1, 1].any() or torch.equal(seen[1, 1], seen[1, 0])
    torch.testing.assert_close(filled[1, 1], filled[1, 0])


def test_channel_mean_fits_observed_training_values():
    batch = make_batch([[0.0, 1.0, 2.0], [0.5, 0.7]], [[3.0], [1.0, 2.0]], num_channels=3, seed=3)
    model = ChannelMean(num_channels=3)
    model.fit_batch(batch)
    vals, masks = [], []
    for p in (batch.context, batch.target):
        m = p.mask & p.time_mask.unsqueeze(-1)
        vals.append((p.values * m).sum(dim=(0, 1)))
        masks.append(m.sum(dim=(0, 1)))
    expected = (vals[0] + vals[1]) / (masks[0] + masks[1])
    torch.testing.assert_close(model.channel_mean.float(), expected)
    pred = model.forecast(batch, batch.target.times).mean
    torch.testing.assert_close(pred[1, 0], expected)


def test_gru_dt_depends_on_elapsed_time():
    batch = make_batch([[0.0, 1.0]], [[2.0]], num_channels=2, seed=0)
    torch.manual_seed(0)
    model = GRUDelta(num_channels=2, hidden_dim=4, decoder_hidden_dim=8)
    out = model.forecast(batch, torch.tensor([[1.5, 6.0]])).mean
    assert out.shape == (1, 2, 2)
    assert not torch.allclose(out[0, 0], out[0, 1])
