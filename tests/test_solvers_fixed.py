"""Fixed-step methods (euler, midpoint, rk4): measured convergence order, exact grid hitting,
per-sample grids, padding, zero-length rows and step counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsode.solvers import odeint

ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4}
STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}

# A damped rotation: y' = A y, exact solution expm(A (t - t0)) y0.
A = torch.tensor([[-0.3, 1.5], [-1.5, -0.3]], dtype=torch.float64)


def linear_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y @ A.T


def linear_exact(y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """y0 (B, D), t (n,) or (B, n) -> (B, n, D)."""
    if t.ndim == 1:
        t = t.expand(y0.shape[0], -1)
    dt = t - t[:, :1]
    propagator = torch.linalg.matrix_exp(A * dt[..., None, None])
    return torch.einsum("bnij,bj->bni", propagator, y0)


def cos_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Non-autonomous y' = cos(t) y: catches stages evaluated at the wrong time."""
    return torch.cos(t)[:, None] * y


def cos_exact(y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 1:
        t = t.expand(y0.shape[0], -1)
    growth = torch.exp(torch.sin(t) - torch.sin(t[:, :1]))
    return y0[:, None, :] * growth[..., None]


PROBLEMS = {"linear": (linear_field, linear_exact), "cos": (cos_field, cos_exact)}
Y0 = torch.tensor([[1.0, 0.5], [-0.7, 2.0], [0.2, -1.1]], dtype=torch.float64)


class CountingField:
    """Wraps a vector field and counts batched calls."""

    def __init__(self, field):
        self.field = field
        self.calls = 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.field(t, y)


def _grid(per_sample: bool) -> torch.Tensor:
    """Grid over [t0, t0 + 2] at multiples of 0.5 (every step size below divides it)."""
    base = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    if not per_sample:
        return base
    offsets = torch.tensor([0.0, 0.75, -1.25], dtype=torch.float64)
    return base[None, :] + offsets[:, None]


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("method", sorted(ORDERS))
def test_measured_convergence_order(method: str, per_sample: bool, problem: str) -> None:
    field, exact = PROBLEMS[problem]
    t = _grid(per_sample)
    truth = exact(Y0, t)
    steps = np.array([2.0 / n for n in (16, 32, 64, 128, 256)])
    errors = []
    for h in steps:
        ys = odeint(field, Y0, t, method=method, step_size=float(h))
        errors.append((ys - truth).abs().max().item())
    errors = np.array(errors)
    assert np.all(errors > 0) and np.all(np.diff(errors) < 0), errors
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - ORDERS[method]) < 0.15, (method, slope, errors)


def test_grid_times_are_hit_exactly_when_step_does_not_divide_them() -> None:
    # Linear interpolation between rk4 steps of 0.05 would err by ~1e-4 at 0.33 and 0.77;
    # landing on the grid times keeps the rk4 error ~1e-7.
    t = torch.tensor([0.0, 0.33, 0.77, 1.0], dtype=torch.float64)
    ys = odeint(linear_field, Y0, t, method="rk4", step_size=0.05)
    err = (ys - linear_exact(Y0, t)).abs().max().item()
    assert err < 1e-5, err


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_step_larger_than_grid_spacing_takes_one_step_per_interval(method: str) -> None:
    t = torch.tensor([0.0, 0.01, 0.03, 0.04], dtype=torch.float64)
    ys = odeint(cos_field, Y0, t, method=method, step_size=0.5)
    # Reference: the same explicit scheme written out by hand, one step per grid interval.
    y = Y0.clone()
    manual = [y]
    for t0, t1 in zip(t[:-1], t[1:]):
        h = t1 - t0
        tt = t0.expand(Y0.shape[0])
        if method == "euler":
            y = y + h * cos_field(tt, y)
        elif method == "midpoint":
            y = y + h * cos_field(tt + h / 2, y + h / 2 * cos_field(tt, y))
        else:
            k1 = cos_field(tt, y)
            k2 = cos_field(tt + h / 2, y + h / 2 * k1)
            k3 = cos_field(tt + h / 2, y + h / 2 * k2)
            k4 = cos_field(tt + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        manual.append(y)
    torch.testing.assert_close(ys, torch.stack(manual, 1), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_output_shape_and_initial_value(method: str) -> None:
    t = _grid(per_sample=True)
    ys = odeint(cos_field, Y0, t, method=method, step_size=0.1)
    assert ys.shape == (3, 5, 2)
    assert torch.equal(ys[:, 0], Y0)


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_per_sample_grid_equals_solving_each_row_alone(method: str) -> None:
    t = torch.tensor(
        [[0.0, 0.3, 0.9, 1.7], [0.5, 0.6, 0.61, 2.0], [-1.0, -0.2, 0.4, 0.45]], dtype=torch.float64
    )
    batched = odeint(cos_field, Y0, t, method=method, step_size=0.1)
    for row in range(3):
        alone = odeint(cos_field, Y0[row : row + 1], t[row], method=method, step_size=0.1)
        torch.testing.assert_close(batched[row], alone[0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_padding_changes_nothing_and_costs_no_steps(method: str) -> None:
    real = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    padded = torch.tensor(
        [[0.0, 0.4, 1.0, 1.0, 1.0], [0.0, 0.5, 1.0, 2.0, 3.0]], dtype=torch.float64
    )
    sol_pad = odeint(cos_field, Y0[:2], padded, method=method, step_size=0.1, return_solution=True)
    sol_real = odeint(cos_field, Y0[:1], real, method=method, step_size=0.1, return_solution=True)
    torch.testing.assert_close(sol_pad.ys[0, :3], sol_real.ys[0], rtol=1e-12, atol=1e-13)
    # Padded outputs repeat the last real value exactly.
    assert torch.equal(sol_pad.ys[0, 3], sol_pad.ys[0, 2])
    assert torch.equal(sol_pad.ys[0, 4], sol_pad.ys[0, 2])
    assert int(sol_pad.stats.num_accepted[0]) == int(sol_real.stats.num_accepted[0]) == 10
    assert int(sol_pad.stats.num_accepted[1]) == 30


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_zero_length_row_is_a_no_op(method: str) -> None:
    t = torch.tensor([[0.0, 0.5, 1.0], [0.7, 0.7, 0.7]], dtype=torch.float64)
    sol = odeint(cos_field, Y0[:2], t, method=method, step_size=0.1, return_solution=True)
    assert torch.isfinite(sol.ys).all()
    assert torch.equal(sol.ys[1], Y0[1].expand(3, -1))
    assert int(sol.stats.num_accepted[1]) == 0
    assert int(sol.stats.status[1]) == 0


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_fixed_step_stats(method: str) -> None:
    t = torch.tensor([[0.0, 0.5, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    counting = CountingField(cos_field)
    sol = odeint(counting, Y0[:2], t, method=method, step_size=0.25, return_solution=True)
    stats = sol.stats
    assert stats.num_accepted.shape == (2,) and stats.num_rejected.shape == (2,)
    assert stats.num_accepted.tolist() == [4, 8]
    assert stats.num_rejected.tolist() == [0, 0]
    assert stats.status.tolist() == [0, 0]
    assert isinstance(stats.nfe, int)
    assert stats.nfe == counting.calls, "nfe must count every call of the vector field"
    # Batched: rows step together, so the longest row bounds the work.
    assert STAGES[method] * 8 <= stats.nfe <= STAGES[method] * 9 + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", sorted(ORDERS))
def test_dtype_is_preserved(method: str, dtype: torch.dtype) -> None:
    t = torch.linspace(0, 1, 4, dtype=dtype)
    ys = odeint(cos_field, Y0.to(dtype), t, method=method, step_size=0.1)
    assert ys.dtype == dtype
    err = (ys.double() - cos_exact(Y0, t.double())).abs().max().item()
    assert err < {"euler": 1e-1, "midpoint": 2e-3, "rk4": 1e-5}[method], err


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_backward_in_time_fixed(method: str) -> None:
    t = torch.tensor([2.0, 1.5, 0.4, 0.0], dtype=torch.float64)
    y2 = cos_exact(Y0, torch.tensor([0.0, 2.0], dtype=torch.float64))[:, 1]
    ys = odeint(cos_field, y2, t, method=method, step_size=0.01)
    err = (ys - cos_exact(y2, t)).abs().max().item()
    assert err < {1: 5e-2, 2: 1e-4, 4: 1e-8}[ORDERS[method]], err
