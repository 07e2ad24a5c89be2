"""Static covariates (``batch.static``, (B, S)) enter every learned model: they change the
forecast, gradients reach their encoder, a model without them ignores them, and a model can
learn a target that only the static covariates explain."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tsode.data.batch import IrregularBatch
from tsode.models import MODELS
from tsode.solvers import SolverConfig

SMALL = {
    "odernn": dict(hidden_dim=6, ode_hidden_dim=8, ode_layers=2, decoder_hidden_dim=8),
    "latent_ode": dict(
        latent_dim=4, rec_dim=6, ode_hidden_dim=8, ode_layers=2, rec_ode_hidden_dim=8,
        rec_ode_layers=2, gru_units=8, decoder_hidden_dim=8, num_samples=2, num_predict_samples=4,
    ),
    "gru_dt": dict(hidden_dim=6, decoder_hidden_dim=8),
    "ncde": dict(hidden_dim=6, vf_width=8, vf_layers=1, decoder_width=8, decoder_layers=1),
}
RK4 = SolverConfig(method="rk4", step_size=0.25)


def build(name: str, num_static: int, num_channels: int = 3, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(SMALL[name], num_static=num_static, **extra)
    if name != "gru_dt":
        kwargs["solver"] = RK4
    model = MODELS[name](num_channels=num_channels, **kwargs)
    if name == "latent_ode":  # the same posterior draws in every call
        def fixed_eps(shape, like):
            return torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=like.dtype)

        model.sample_eps = fixed_eps
    return model.eval()


def with_static(batch: IrregularBatch, static: torch.Tensor) -> IrregularBatch:
    return replace(batch, static=static)


@pytest.mark.parametrize("name", list(SMALL))
def test_static_covariates_change_the_forecast_and_get_gradients(name, forecast_batch):
    model = build(name, num_static=2)
    static = torch.randn(forecast_batch.batch_size, 2, generator=torch.Generator().manual_seed(1))
    batch = with_static(forecast_batch, static)
    times = batch.target.times
    with torch.no_grad():
        base = model.forecast(batch, times).mean
        moved = model.forecast(with_static(batch, static + 1.0), times).mean
    valid = batch.target.time_mask
    assert (moved - base).abs()[valid].max() > 1e-5
    model.train()
    loss = model.compute_loss(batch).loss
    loss.backward()
    grad = model.static_encoder.linear.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(SMALL))
def test_a_model_without_static_inputs_ignores_them(name, forecast_batch):
    model = build(name, num_static=0)
    assert model.static_encoder is None
    static = torch.randn(forecast_batch.batch_size, 2)
    times = forecast_batch.target.times
    with torch.no_grad():
        plain = model.forecast(forecast_batch, times).mean
        given = model.forecast(with_static(forecast_batch, static), times).mean
    torch.testing.assert_close(given, plain)


def test_static_covariates_of_the_wrong_width_are_a_clear_error(forecast_batch):
    model = build("odernn", num_static=2)
    batch = with_static(forecast_batch, torch.zeros(forecast_batch.batch_size, 3))
    with pytest.raises(ValueError, match=r"static covariates have shape \(4, 3\).*\(4, 2\)"):
        model.forecast(batch, batch.target.times)


def test_odernn_learns_a_level_only_the_static_covariate_explains():
    """Targets equal the series' static covariate and every series has the same context: with
    the covariate the model fits the targets, without it it cannot."""
    from conftest import make_batch

    times = [[0.0, 0.5, 1.0, 1.5]] * 4
    batch = make_batch(context_times=times, target_times=[[2.0, 2.5]] * 4, num_channels=3, seed=0)
    static = torch.tensor([[1.5], [-1.0], [0.5], [-2.0]])
    ctx = replace(batch.context, values=torch.zeros_like(batch.context.values),
                  mask=torch.ones_like(batch.context.mask))
    target = replace(batch.target, values=static.view(4, 1, 1).expand_as(batch.target.values).clone(),
                     mask=torch.ones_like(batch.target.mask))
    batch = replace(batch, context=ctx, target=target, static=static)

    def fit(num_static: int) -> float:
        model = build("odernn", num_static=num_static, persistence=False, uncertainty="none").train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-2)
        for _ in range(150):
            opt.zero_grad()
            loss = model.compute_loss(batch).loss
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(model.compute_loss(batch).loss)

    with_cov, without = fit(1), fit(0)
    assert with_cov < 0.05
    assert without > 1.0  # the targets' variance is 1.81
