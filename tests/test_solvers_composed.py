"""The composed solver's parts: the Controller (jump times, dt_min / dt_max, error norm), the
one integration loop and the gradient strategies through it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from tsode.solvers import Adjoint, Backprop, Controller, SolverConfig, Status, integrate, odeint
from tsode.solvers.tableaus import get_tableau

JUMP = 0.37


def square_wave(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dy/dt = +1 before JUMP, -1 from JUMP on (right-continuous, like a path's knots)."""
    sign = torch.where(t < JUMP, 1.0, -1.0).to(y.dtype)
    return sign[:, None].expand_as(y).clone()


def square_exact(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t < JUMP, t, 2 * JUMP - t)


def _record_steps(method: str, y0, t, controller: Controller, **kwargs):
    steps = []

    def on_step(info):
        steps.append((info.accepted.clone(), info.h.clone(), info.t_new.clone()))

    solution = integrate(
        kwargs.pop("func", square_wave), y0, t, get_tableau(method), controller,
        max_steps=10_000, on_step=on_step, **kwargs,
    )
    return solution, steps


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "rk4"])
def test_jump_times_are_hit_exactly_and_seen_from_the_left(method: str) -> None:
    y0 = torch.zeros(2, 1, dtype=torch.float64)
    t = torch.tensor([[0.0, 0.2, 1.0], [0.0, 0.5, 1.0]], dtype=torch.float64)
    controller = Controller(rtol=1e-6, atol=1e-9, jump_times=torch.tensor([JUMP, 5.0], dtype=torch.float64),
                            dt_max=None if get_tableau(method).adaptive else 0.25)
    solution, steps = _record_steps(method, y0, t, controller)
    # Exact for a piecewise-constant field only if no stage of a step sees the other side.
    torch.testing.assert_close(solution.ys[..., 0], square_exact(t), rtol=0, atol=1e-12)
    for row in range(2):
        ends = [float(t_new[row]) for accepted, _, t_new in steps if bool(accepted[row])]
        assert JUMP in ends, ends
    assert int(solution.stats.num_rejected.sum()) == 0


def test_without_jump_times_the_discontinuity_costs_rejections() -> None:
    y0 = torch.zeros(1, 1, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    sol = odeint(square_wave, y0, t, rtol=1e-6, atol=1e-9, return_solution=True)
    jumped = odeint(square_wave, y0, t, rtol=1e-6, atol=1e-9, return_solution=True,
                    jump_times=torch.tensor([JUMP], dtype=torch.float64))
    assert int(sol.stats.num_rejected[0]) > 0 == int(jumped.stats.num_rejected[0])
    assert jumped.stats.nfe < sol.stats.nfe


def test_per_row_jump_times_with_padding_and_backward_rows() -> None:
    jumps = torch.tensor([[0.3, 0.6, 0.6], [0.45, 0.45, 0.45], [0.5, 0.2, 0.9]],
                         dtype=torch.float64)

    inf = float("inf")
    flips = torch.tensor([[0.3, 0.6, inf], [0.45, inf, inf], [0.2, 0.5, 0.9]],
                         dtype=torch.float64)

    def field(t, y):  # the slope flips at each row's own jumps
        count = (t[:, None] >= flips).sum(dim=1)
        return ((-1.0) ** count).to(y.dtype)[:, None]

    y0 = torch.zeros(3, 1, dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    sol = odeint(field, y0, t, rtol=1e-8, atol=1e-10, jump_times=jumps, return_solution=True)
    assert int(sol.stats.num_rejected.sum()) == 0
    # Row 0: +1 on [0, .3), -1 on [.3, .6), +1 on [.6, 1]; row 1: +1, then -1 from .45.
    torch.testing.assert_close(sol.ys[0, -1, 0], torch.tensor(0.3 - 0.3 + 0.4, dtype=torch.float64))
    torch.testing.assert_close(sol.ys[1, -1, 0], torch.tensor(0.45 - 0.55, dtype=torch.float64))
    # Row 2 runs backwards from 1 to 0 over jumps .2, .5, .9 (sorted along its direction).
    # Slopes: +1 on [0, .2), -1 on [.2, .5), +1 on [.5, .9), -1 on [.9, 1].
    expected = -(-0.1 + 0.4 - 0.3 + 0.2)
    torch.testing.assert_close(sol.ys[2, -1, 0], torch.tensor(expected, dtype=torch.float64))


def test_dt_max_is_respected() -> None:
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.33, 2.0], dtype=torch.float64).expand(2, -1)

    def rotation(t, y):
        return torch.stack([y[:, 1], -y[:, 0]], dim=-1)

    solution, steps = _record_steps(
        "dopri5", y0, t, Controller(rtol=1e-3, atol=1e-6, dt_max=0.1), func=rotation
    )
    largest = max(float(h.abs().max()) for _, h, _ in steps)
    assert largest <= 0.1 * (1 + 1e-12), largest
    assert int(solution.stats.num_accepted.min()) >= math.ceil(2.0 / 0.1)
    free = odeint(rotation, y0, t, rtol=1e-3, atol=1e-6, return_solution=True)
    assert int(free.stats.num_accepted.max()) < 20  # the bound is what forced the steps
    via_odeint = odeint(rotation, y0, t, rtol=1e-3, atol=1e-6, dt_max=0.1)
    torch.testing.assert_close(via_odeint, solution.ys)


def test_dt_min_is_respected_and_fails_rows_that_need_less() -> None:
    def oscillator(t, y):
        omega = torch.tensor([1.0, 300.0], dtype=y.dtype)[:, None]
        return torch.stack([y[:, 1], -(omega[:, 0] ** 2) * y[:, 0]], dim=-1)

    y0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64).expand(2, -1)
    solution, steps = _record_steps(
        "dopri5", y0, t, Controller(rtol=1e-8, atol=1e-10, dt_min=1e-2), func=oscillator,
        throw=False,
    )
    assert solution.stats.status.tolist() == [Status.SUCCESS, Status.STEP_SIZE_UNDERFLOW]
    assert torch.isfinite(solution.ys[0]).all() and torch.isnan(solution.ys[1, -1]).all()
    # Every step row 0 tried is at least dt_min, except the last one, shortened to land on 1.
    tried = [float(h[0].abs()) for _, h, t_new in steps if float(t_new[0]) < 1.0]
    assert min(tried) >= 1e-2, min(tried)
    with pytest.raises(Exception, match="underflow"):
        odeint(oscillator, y0, t, rtol=1e-8, atol=1e-10, dt_min=1e-2)


def _linear(t, y):
    a = torch.tensor([[-0.1, 1.0, 0.2], [-1.0, -0.1, 0.3], [0.0, -0.4, -0.5]], dtype=y.dtype)
    return y @ a.T


def _scipy(y0: torch.Tensor, times: np.ndarray) -> np.ndarray:
    out = []
    for row in y0.numpy():
        sol = solve_ivp(lambda t, y: _linear(None, torch.from_numpy(y)[None])[0].numpy(),
                        (times[0], times[-1]), row, method="DOP853", t_eval=times,
                        rtol=1e-12, atol=1e-14)
        out.append(sol.y.T)
    return np.stack(out)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_batch_norm_gives_identical_steps_and_both_norms_match_scipy(method: str) -> None:
    # Rows of very different scales: with per-row norms they take different steps.
    y0 = torch.tensor([[1.0, 0.0, 0.5], [1e-3, 2e-3, 0.0], [30.0, -10.0, 5.0]],
                      dtype=torch.float64)
    times = np.linspace(0.0, 5.0, 7)
    t = torch.tensor(times)
    reference = _scipy(y0, times)
    rtol = 1e-6 if method == "bosh3" else 1e-9
    row = odeint(_linear, y0, t, method=method, rtol=rtol, atol=rtol * 1e-3,
                 return_solution=True)
    batch = odeint(_linear, y0, t, method=method, rtol=rtol, atol=rtol * 1e-3,
                   error_norm="batch", return_solution=True)
    assert len(set(batch.stats.num_steps.tolist())) == 1
    assert len(set(batch.stats.num_accepted.tolist())) == 1
    assert len(set(row.stats.num_steps.tolist())) > 1  # the rows really differ
    scale = np.abs(reference).max(axis=(1, 2), keepdims=True)
    for sol in (row, batch):
        error = np.abs(sol.ys.numpy() - reference) / scale
        assert error.max() < 3e2 * rtol, error.max()


def test_batch_norm_through_solver_config() -> None:
    y0 = torch.tensor([[1.0, 0.0, 0.5], [1e-3, 2e-3, 0.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    config = SolverConfig(rtol=1e-7, atol=1e-9, error_norm="batch")
    solution = config.solve(_linear, y0, t, return_solution=True)
    direct = odeint(_linear, y0, t, rtol=1e-7, atol=1e-9, error_norm="batch",
                    return_solution=True)
    torch.testing.assert_close(solution.ys, direct.ys, rtol=0, atol=0)
    assert solution.stats.num_steps[0] == solution.stats.num_steps[1]
    with pytest.raises(ValueError, match="error_norm"):
        SolverConfig(error_norm="max")
    with pytest.raises(ValueError, match="error_norm"):
        odeint(_linear, y0, t, error_norm="max")
    with pytest.raises(ValueError, match="dt_min"):
        Controller(dt_min=1.0, dt_max=0.5)
    with pytest.raises(ValueError, match="step_size"):
        odeint(_linear, y0, t, method="rk4", dt_max=0.1)


class _Field(torch.nn.Module):
    """tanh MLP field times a slope that changes at knots (like a CDE on a linear path)."""

    def __init__(self, knots: torch.Tensor):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, 3, generator=gen, dtype=torch.float64) * 0.7)
        self.b = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64) * 0.3)
        self.knots = knots

    def forward(self, t, y):
        interval = (t[:, None] >= self.knots).sum(dim=1)
        slope = torch.cos(1.7 * interval.to(y.dtype))[:, None]
        return torch.tanh(y @ self.w.T + self.b) * slope


@pytest.mark.parametrize("error_norm", ["row", "batch"])
@pytest.mark.parametrize("with_jumps", [False, True], ids=["smooth_grid", "knots"])
def test_adjoint_through_the_shared_loop_matches_backprop(error_norm: str,
                                                          with_jumps: bool) -> None:
    knots = torch.tensor([[0.0, 0.3, 0.7, 1.2], [0.1, 0.5, 0.6, 1.5]], dtype=torch.float64)
    field = _Field(knots if with_jumps else torch.full((2, 1), 10.0, dtype=torch.float64))
    y0 = torch.tensor([[0.5, -0.2, 0.1], [0.0, 0.4, -0.3]], dtype=torch.float64)
    options = dict(rtol=1e-10, atol=1e-12, error_norm=error_norm,
                   jump_times=knots if with_jumps else None)
    weights = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)
    grads = {}
    for strategy in ("backprop", "adjoint"):
        ys = odeint(field, y0, knots, adjoint=strategy == "adjoint", **options)
        grads[strategy] = torch.autograd.grad((ys * weights).sum(), list(field.parameters()))
    for g_bp, g_adj in zip(grads["backprop"], grads["adjoint"]):
        torch.testing.assert_close(g_adj, g_bp, rtol=1e-6, atol=1e-9)


def test_gradient_strategies_are_the_front_door_options() -> None:
    knots = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    field = _Field(torch.full((1, 1), 10.0, dtype=torch.float64))
    y0 = torch.tensor([[0.5, -0.2, 0.1]], dtype=torch.float64)
    controller = Controller(rtol=1e-9, atol=1e-11)
    tableau = get_tableau("dopri5")

    def forward(y, t):
        return integrate(field, y, t, tableau, controller, max_steps=1000)

    t_eval = knots.expand(1, -1)
    for strategy, adjoint in ((Backprop(), False), (Adjoint(rtol=1e-9, atol=1e-11), True)):
        solution = strategy.solve(field, y0, t_eval, forward, tableau=tableau,
                                  controller=controller, max_steps=1000)
        expected = odeint(field, y0, knots, rtol=1e-9, atol=1e-11, adjoint=adjoint)
        torch.testing.assert_close(solution.ys, expected, rtol=0, atol=0)
