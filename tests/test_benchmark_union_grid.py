"""benchmarks/union_grid.py: the reference implementation's union-grid batching of the ODE-RNN
and the latent ODE (benchmark rows only) computes the same function as the models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from test_models_properties import ODE_MODELS, SMALL, build, loss_and_pred

from tsode.models.blocks import ODEFunc, solve_from
from tsode.solvers import SolverConfig

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_union_grid", REPO / "benchmarks/union_grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


union_grid = _load_benchmark()


def test_solve_union_equals_per_sample():
    torch.manual_seed(0)
    f = ODEFunc(3, 8, 2, init_std=0.5).double()
    solver = SolverConfig(method="dopri5", rtol=1e-8, atol=1e-9)
    y0 = torch.randn(2, 3, dtype=torch.float64)
    t0 = torch.tensor([0.5, 2.0], dtype=torch.float64)
    times = torch.tensor([[0.7, 1.5, 3.0], [2.0, 2.1, 2.1]], dtype=torch.float64)
    a = solve_from(solver, f, y0, t0, times)
    b = union_grid.solve_union(solver, f, y0, t0, times)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(a[1, 0], y0[1])


@pytest.mark.parametrize("name", ODE_MODELS)
def test_union_grid_computes_the_same_function(name, forecast_batch):
    extra = {"anchor": "first"} if name == "latent_ode" else {}  # union batching: reference model
    model = build(name, **extra)
    union = union_grid.UNION_MODELS[name](
        num_channels=3, solver=SolverConfig(method="dopri5", rtol=1e-6, atol=1e-7), **SMALL[name], **extra
    )
    union.load_state_dict(model.state_dict())
    if name == "latent_ode":
        union.sample_eps = model.sample_eps
    loss, pred = loss_and_pred(model, forecast_batch)
    loss_u, pred_u = loss_and_pred(union, forecast_batch)
    torch.testing.assert_close(loss_u, loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred_u, pred, rtol=1e-4, atol=1e-5)


def test_union_latent_ode_needs_the_reference_anchor():
    with pytest.raises(ValueError, match="anchor='first'"):
        union_grid.UnionLatentODE(num_channels=2, anchor="last")
