"""Properties every model must have: padding / masked-out values are invisible, batch order
does not matter, gradients reach every parameter, predictions have the contract shapes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import select_rows

from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.models import MODELS
from tsode.solvers import SolverConfig

SMALL = {
    "odernn": dict(hidden_dim=6, ode_hidden_dim=8, ode_layers=2, decoder_hidden_dim=8),
    "latent_ode": dict(
        latent_dim=4, rec_dim=6, ode_hidden_dim=8, ode_layers=2, rec_ode_hidden_dim=8,
        rec_ode_layers=2, gru_units=8, decoder_hidden_dim=8, num_samples=2,
        num_predict_samples=4, poisson=True, learn_obs_std=True,
    ),
    "gru_dt": dict(hidden_dim=6, decoder_hidden_dim=8),
    "locf": {},
    "mean": {},
}
ODE_MODELS = ("odernn", "latent_ode")


def build(name: str, num_channels: int = 3, **extra) -> torch.nn.Module:
    kwargs = dict(SMALL[name], **extra)
    if name in ODE_MODELS:
        kwargs.setdefault("solver", SolverConfig(method="dopri5", rtol=1e-6, atol=1e-7))
    torch.manual_seed(0)
    model = MODELS[name](num_channels=num_channels, **kwargs)
    if name == "latent_ode":  # deterministic posterior draws: z0 = mu + std * fixed noise
        def fixed_eps(shape, like):
            gen = torch.Generator().manual_seed(123)
            return torch.randn(shape, generator=gen, dtype=like.dtype)

        model.sample_eps = fixed_eps
    if name == "mean":  # give the mean baseline something fitted
        model.value_sum += torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        model.value_count += 4.0
    return model


def scramble_hidden(part: SeriesPart, gen: torch.Generator) -> SeriesPart:
    """Change every value that is masked out or padded (times of padding are kept)."""
    hidden = ~(part.mask & part.time_mask.unsqueeze(-1))
    noise = 100.0 * torch.randn(part.values.shape, generator=gen, dtype=part.values.dtype)
    return replace(part, values=torch.where(hidden, noise, part.values))


def loss_and_pred(model, batch: IrregularBatch):
    model.eval()
    with torch.no_grad():
        result = model.compute_loss(batch)
        pred = model.forecast(batch, batch.target.times).mean
    return result.loss, pred


@pytest.mark.parametrize("name", list(SMALL))
def test_masked_and_padded_values_are_invisible(name, forecast_batch):
    model = build(name)
    loss, pred = loss_and_pred(model, forecast_batch)
    gen = torch.Generator().manual_seed(5)
    scrambled = replace(
        forecast_batch,
        context=scramble_hidden(forecast_batch.context, gen),
        target=scramble_hidden(forecast_batch.target, gen),
    )
    loss2, pred2 = loss_and_pred(model, scrambled)
    torch.testing.assert_close(loss2, loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pred2, pred, rtol=1e-6, atol=1e-7)
    # sanity: observed values do matter (the test above can fail)
    if name != "mean":
        ctx = forecast_batch.context
        shifted = replace(forecast_batch, context=replace(ctx, values=ctx.values + ctx.mask * 1.0))
        _, pred3 = loss_and_pred(model, shifted)
        assert not torch.allclose(pred3, pred)


@pytest.mark.parametrize("name", list(SMALL))
def test_padding_width_is_invisible(name, forecast_batch):
    """Extra padding columns (repeating the last time, masked out) change nothing."""
    model = build(name)
    loss, pred = loss_and_pred(model, forecast_batch)

    def pad(part: SeriesPart, extra: int) -> SeriesPart:
        b, _, c = part.values.shape
        return SeriesPart(
            times=torch.cat([part.times, part.times[:, -1:].expand(b, extra)], dim=1),
            values=torch.cat([part.values, torch.full((b, extra, c), 7.0)], dim=1),
            mask=torch.cat([part.mask, torch.zeros(b, extra, c, dtype=torch.bool)], dim=1),
            lengths=part.lengths,
        )

    padded = replace(forecast_batch, context=pad(forecast_batch.context, 3), target=pad(forecast_batch.target, 2))
    loss2, pred2 = loss_and_pred(model, padded)
    torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred2[:, : pred.shape[1]], pred, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(SMALL))
def test_batch_order_invariance(name, forecast_batch):
    model = build(name)
    perm = [2, 0, 3, 1]
    loss, pred = loss_and_pred(model, forecast_batch)
    if name == "latent_ode":  # the fixed noise is per row position: permute it with the rows
        base_eps = model.sample_eps

        def permuted_eps(shape, like):
            return base_eps(shape, like)[:, perm]

        model.sample_eps = permuted_eps
    loss2, pred2 = loss_and_pred(model, select_rows(forecast_batch, perm))
    torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred2, pred[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["odernn", "latent_ode", "gru_dt"])
def test_gradients_reach_every_parameter(name, forecast_batch):
    model = build(name)
    model.train()
    model.compute_loss(forecast_batch).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", list(SMALL))
def test_forecast_shapes_and_arbitrary_times(name, forecast_batch):
    model = build(name)
    model.eval()
    # times inside and after each context
    times = torch.tensor([[0.3, 1.0, 2.2, 4.0]] * 3 + [[0.1, 0.2, 3.0, 5.0]])
    with torch.no_grad():
        out = model.forecast(forecast_batch, times)
    assert out.mean.shape == (4, 4, 3)
    assert torch.isfinite(out.mean).all()
    if name == "latent_ode":
        assert out.samples.shape == (4, 4, 4, 3)
        q = out.quantiles()  # the model's quantile_levels
        assert q.shape == (3, 4, 4, 3) and (q[0] <= q[1]).all() and (q[1] <= q[2]).all()
        assert (out.extras["intensity"] > 0).all()


@pytest.mark.parametrize("name", ["odernn", "latent_ode", "gru_dt", "locf"])
def test_forecast_rejects_bad_times(name, forecast_batch):
    model = build(name)
    with pytest.raises(ValueError, match="non-decreasing"):
        model.forecast(forecast_batch, torch.tensor([[2.0, 1.0]] * 4))
    with pytest.raises(ValueError, match="shape"):
        model.forecast(forecast_batch, torch.ones(3, 2))


def test_latent_ode_rejects_times_before_context(forecast_batch):
    model = build("latent_ode", anchor="first")
    times = forecast_batch.target.times.clone()
    times[1, 0] = 0.0  # row 1 starts at 0.2
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        model.forecast(forecast_batch, times)


def test_latent_ode_anchored_at_the_last_time_solves_both_ways(forecast_batch):
    """anchor='last': points before the anchor come from a backward solve, later ones from a
    forward solve; both equal a direct solve from the anchor to that single point."""
    model = build("latent_ode")
    ctx = forecast_batch.context
    with torch.no_grad():
        mu, _, t_anchor = model.posterior(forecast_batch)
        last = ctx.times.gather(1, (ctx.lengths - 1).unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(t_anchor, last)
        times = torch.cat([ctx.times, forecast_batch.target.times], dim=1)  # both sides, unsorted
        z, _ = model.solve_at(mu.unsqueeze(0), t_anchor, times)
        for j in (0, times.shape[1] - 1):
            ref, _ = model.solve_latent(mu.unsqueeze(0), t_anchor, times[:, j : j + 1])
            torch.testing.assert_close(z[:, :, j], ref[:, :, 0], rtol=1e-5, atol=1e-6)
        # a forecast may ask for any time, also inside the context
        out = model.forecast(forecast_batch, ctx.times)
    assert torch.isfinite(out.mean).all()


def test_predict_step_contract(forecast_batch):
    model = build("odernn", channel_means=[1.0, 2.0, 3.0], channel_stds=[2.0, 1.0, 0.5])
    model.eval()
    with torch.no_grad():
        out = model.predict_step(forecast_batch, 0)
    assert out["forecast"].mean.shape == (4, 3, 3)
    assert out["series_ids"] == forecast_batch.series_ids
    torch.testing.assert_close(
        out["mean_original"], out["forecast"].mean * torch.tensor([2.0, 1.0, 0.5]) + torch.tensor([1.0, 2.0, 3.0])
    )


def test_registry_names():
    for name in ("odernn", "latent_ode", "locf", "mean", "gru_dt"):
        assert name in MODELS
