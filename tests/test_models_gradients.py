"""Adjoint and backprop-through-the-solver gradients agree for every ODE model (float64)."""

from __future__ import annotations

import pytest
import torch
from test_models_properties import SMALL

from tsode.models import MODELS
from tsode.solvers import SolverConfig


def grads(name: str, batch, adjoint: bool) -> dict[str, torch.Tensor]:
    solver = SolverConfig(method="dopri5", rtol=1e-10, atol=1e-12, adjoint=adjoint)
    torch.manual_seed(0)
    model = MODELS[name](num_channels=batch.context.num_channels, solver=solver, **SMALL[name]).double()
    if name == "latent_ode":
        model.sample_eps = lambda shape, like: torch.randn(
            shape, generator=torch.Generator().manual_seed(3), dtype=like.dtype
        )
    model.train()
    model.reset_nfe()
    loss = model.compute_loss(batch).loss
    forward_nfe = model.total_nfe()
    loss.backward()
    backward_nfe = model.total_nfe() - forward_nfe
    assert forward_nfe > 0
    if adjoint:
        assert backward_nfe > 0, "the adjoint must evaluate the vector field backwards"
    else:
        assert backward_nfe == 0
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["odernn", "latent_ode"])
def test_adjoint_matches_backprop(name, forecast_batch64):
    backprop = grads(name, forecast_batch64, adjoint=False)
    adjoint = grads(name, forecast_batch64, adjoint=True)
    assert backprop.keys() == adjoint.keys()
    for key in backprop:
        torch.testing.assert_close(adjoint[key], backprop[key], rtol=1e-5, atol=1e-8, msg=key)
