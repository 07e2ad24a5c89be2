"""Adaptive methods (bosh3, dopri5, tsit5) against scipy's DOP853 at rtol=1e-10, atol=1e-12:
accuracy, error scaling with tolerance, step efficiency, dense output, per-sample grids,
padding, backward integration and independence of rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from tsode.solvers import odeint

METHODS = ["bosh3", "dopri5", "tsit5"]
# scipy's embedded pair with the same orders, used to sanity-check step counts.
SCIPY_TWIN = {"bosh3": "RK23", "dopri5": "RK45", "tsit5": "RK45"}
# Global error / rtol measured at rtol=1e-3..1e-9 on these problems is 0.1-30 for every method
# (scipy's and torchdiffeq's pairs behave alike for the 5th-order pairs); allow 10x more.
ERROR_FACTOR = {"bosh3": 3e2, "dopri5": 3e2, "tsit5": 3e2}
# Minimum slope of log(error) vs log(rtol) (measured 0.8-1.2).
MIN_SLOPE = {"bosh3": 0.6, "dopri5": 0.6, "tsit5": 0.6}

# A tolerance each method reaches in few steps (bosh3 needs ~10x the steps of 5th-order pairs).
TIGHT_RTOL = {"bosh3": 1e-6, "dopri5": 1e-8, "tsit5": 1e-8}

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LINEAR_A = torch.tensor(
    [[-0.1, 1.0, 0.2], [-1.0, -0.1, 0.3], [0.0, -0.4, -0.5]], dtype=torch.float64
)


def linear(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y @ LINEAR_A.T


def van_der_pol(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mu = 1.0
    return torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], dim=-1)


def lotka_volterra(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    prey, predator = y[:, 0], y[:, 1]
    return torch.stack([1.5 * prey - prey * predator, prey * predator - 3.0 * predator], dim=-1)


class NeuralField(torch.nn.Module):
    """Random non-autonomous MLP vector field f(t, y) = W2 tanh(W1 [y, sin t] + b1) + b2."""

    def __init__(self, dim: int = 4, hidden: int = 16, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(
            torch.randn(hidden, dim + 1, generator=gen, dtype=torch.float64)
        )
        self.b1 = torch.nn.Parameter(0.5 * torch.randn(hidden, generator=gen, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(
            torch.randn(dim, hidden, generator=gen, dtype=torch.float64) / hidden**0.5
        )
        self.b2 = torch.nn.Parameter(0.1 * torch.randn(dim, generator=gen, dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([y, torch.sin(t)[:, None].to(y.dtype)], dim=-1)
        return torch.tanh(inp @ self.w1.T + self.b1) @ self.w2.T + self.b2


NEURAL = NeuralField()

# name -> (field, y0 rows, end time)
PROBLEMS: dict[str, tuple[Field, torch.Tensor, float]] = {
    "linear": (
        linear,
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0], [0.3, 0.2, 2.0]], dtype=torch.float64),
        5.0,
    ),
    "van_der_pol": (
        van_der_pol,
        torch.tensor([[2.0, 0.0], [1.0, 1.0], [-0.5, 0.3]], dtype=torch.float64),
        6.0,
    ),
    "lotka_volterra": (
        lotka_volterra,
        torch.tensor([[1.0, 1.0], [2.0, 0.5], [0.5, 2.0]], dtype=torch.float64),
        6.0,
    ),
    "neural": (
        NEURAL,
        torch.tensor(
            [[0.5, -0.5, 1.0, 0.0], [-1.0, 0.2, 0.3, 0.8], [0.0, 0.0, 0.0, 0.0]],
            dtype=torch.float64,
        ),
        3.0,
    ),
}


def _numpy_field(field: Field) -> Callable[[float, np.ndarray], np.ndarray]:
    def f(t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            tt = torch.tensor([t], dtype=torch.float64)
            return field(tt, torch.as_tensor(y, dtype=torch.float64)[None])[0].numpy()

    return f


def reference(field: Field, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """DOP853 at rtol=1e-10, atol=1e-12, row by row. t (n,) or (B, n) -> (B, n, D)."""
    if t.ndim == 1:
        t = t.expand(y0.shape[0], -1)
    out = []
    for row in range(y0.shape[0]):
        times = t[row].numpy()
        if times[0] == times[-1]:
            out.append(np.repeat(y0[row].numpy()[None], len(times), axis=0))
            continue
        # scipy wants strictly monotone t_eval: solve at the unique times, then expand.
        unique, inverse = np.unique(times, return_inverse=True)
        if times[-1] < times[0]:
            unique, inverse = unique[::-1], len(unique) - 1 - inverse
        sol = solve_ivp(
            _numpy_field(field),
            (times[0], times[-1]),
            y0[row].numpy(),
            method="DOP853",
            rtol=1e-10,
            atol=1e-12,
            t_eval=unique,
        )
        assert sol.success
        out.append(sol.y.T[inverse])
    return torch.tensor(np.stack(out), dtype=torch.float64)


def scipy_steps(field: Field, y0: torch.Tensor, end: float, method: str, rtol: float, atol: float):
    return [
        len(
            solve_ivp(
                _numpy_field(field), (0.0, end), row.numpy(), method=method, rtol=rtol, atol=atol
            ).t
        )
        - 1
        for row in y0
    ]


class CountingField:
    def __init__(self, field: Field):
        self.field = field
        self.calls = 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.field(t, y)


_REF_CACHE: dict[str, torch.Tensor] = {}


def _problem_grid(name: str) -> tuple[Field, torch.Tensor, torch.Tensor, torch.Tensor]:
    field, y0, end = PROBLEMS[name]
    t = torch.linspace(0.0, end, 7, dtype=torch.float64)
    if name not in _REF_CACHE:
        _REF_CACHE[name] = reference(field, y0, t)
    return field, y0, t, _REF_CACHE[name]


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method", METHODS)
def test_accuracy_against_scipy_and_scaling_with_tolerance(method: str, problem: str) -> None:
    field, y0, t, ref = _problem_grid(problem)
    rtols = [1e-3, 1e-5, 1e-7] if method != "bosh3" else [1e-3, 3e-5, 1e-6]
    errors = []
    for rtol in rtols:
        ys = odeint(field, y0, t, method=method, rtol=rtol, atol=rtol * 1e-3)
        assert ys.shape == ref.shape
        errors.append((ys - ref).abs().max().item())
    errors = np.array(errors)
    assert np.all(np.diff(errors) < 0), f"error does not shrink with rtol: {errors}"
    slope = np.polyfit(np.log(rtols), np.log(errors), 1)[0]
    assert slope > MIN_SLOPE[method], (slope, errors)
    assert errors[-1] < ERROR_FACTOR[method] * rtols[-1], errors


@pytest.mark.parametrize("method", METHODS)
def test_tight_tolerance_reaches_reference(method: str) -> None:
    field, y0, t, ref = _problem_grid("van_der_pol")
    rtol = TIGHT_RTOL[method] / 10
    ys = odeint(field, y0, t, method=method, rtol=rtol, atol=rtol * 1e-3)
    err = (ys - ref).abs().max().item()
    assert err < ERROR_FACTOR[method] * rtol, err


@pytest.mark.parametrize("problem", ["van_der_pol", "lotka_volterra"])
@pytest.mark.parametrize("method", METHODS)
def test_step_count_comparable_to_scipy(method: str, problem: str) -> None:
    """A broken error estimate or controller shows up as far too many (or too few) steps."""
    field, y0, end = PROBLEMS[problem]
    rtol, atol = 1e-6, 1e-9
    t = torch.tensor([0.0, end], dtype=torch.float64)
    sol = odeint(field, y0, t, method=method, rtol=rtol, atol=atol, return_solution=True)
    ours = sol.stats.num_accepted.tolist()
    theirs = scipy_steps(field, y0, end, SCIPY_TWIN[method], rtol, atol)
    for mine, ref_steps in zip(ours, theirs):
        assert ref_steps / 3 <= mine <= 2 * ref_steps + 5, (ours, theirs)


@pytest.mark.parametrize("method", METHODS)
def test_dense_output_needs_no_extra_steps_and_is_accurate(method: str) -> None:
    field, y0, end = PROBLEMS["van_der_pol"]
    rtol = TIGHT_RTOL[method]
    atol = rtol * 1e-3
    coarse_t = torch.tensor([0.0, end], dtype=torch.float64)
    dense_t = torch.linspace(0.0, end, 301, dtype=torch.float64)
    coarse = odeint(field, y0, coarse_t, method=method, rtol=rtol, atol=atol, return_solution=True)
    dense = odeint(field, y0, dense_t, method=method, rtol=rtol, atol=atol, return_solution=True)
    extra = dense.stats.num_accepted - coarse.stats.num_accepted
    assert extra.abs().max().item() <= 2, (coarse.stats.num_accepted, dense.stats.num_accepted)
    # End point agrees with the coarse solve, and interpolated points with the reference.
    torch.testing.assert_close(dense.ys[:, -1], coarse.ys[:, -1], rtol=0, atol=100 * rtol)
    ref = reference(field, y0, dense_t[::10])
    err = (dense.ys[:, ::10] - ref).abs().max().item()
    assert err < ERROR_FACTOR[method] * rtol, err


def _irregular_grid(batch: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(batch, 1, generator=gen, dtype=torch.float64) * 2 - 1
    gaps = torch.rand(batch, n - 1, generator=gen, dtype=torch.float64) * 0.8
    return torch.cat([start, start + gaps.cumsum(1)], dim=1)


@pytest.mark.parametrize("method", METHODS)
def test_per_sample_grids_match_reference_and_solving_each_row_alone(method: str) -> None:
    _, y0, _ = PROBLEMS["neural"]
    t = _irregular_grid(3, 6, seed=1)
    rtol = TIGHT_RTOL[method]
    atol = rtol * 1e-3
    sol = odeint(NEURAL, y0, t, method=method, rtol=rtol, atol=atol, return_solution=True)
    ref = reference(NEURAL, y0, t)
    assert (sol.ys - ref).abs().max().item() < ERROR_FACTOR[method] * rtol
    for row in range(3):
        alone = odeint(
            NEURAL,
            y0[row : row + 1],
            t[row : row + 1],
            method=method,
            rtol=rtol,
            atol=atol,
            return_solution=True,
        )
        shared = odeint(NEURAL, y0[row : row + 1], t[row], method=method, rtol=rtol, atol=atol)
        # Same answer as alone: far below the solver's own error (~rtol), i.e. the same steps.
        torch.testing.assert_close(sol.ys[row], alone.ys[0], rtol=0, atol=1e-3 * rtol)
        torch.testing.assert_close(shared[0], alone.ys[0], rtol=0, atol=1e-3 * rtol)
        assert int(sol.stats.num_accepted[row]) == int(alone.stats.num_accepted[0])


@pytest.mark.parametrize("method", METHODS)
def test_padding_changes_nothing_and_costs_no_steps(method: str) -> None:
    _, y0, _ = PROBLEMS["neural"]
    rtol = TIGHT_RTOL[method]
    atol = rtol * 1e-3
    real = torch.tensor([0.0, 0.4, 1.3], dtype=torch.float64)
    padded = torch.tensor(
        [
            [0.0, 0.4, 1.3, 1.3, 1.3, 1.3],
            [0.0, 0.5, 1.0, 2.0, 2.5, 3.0],
            [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],
        ],
        dtype=torch.float64,
    )
    sol_pad = odeint(NEURAL, y0, padded, method=method, rtol=rtol, atol=atol, return_solution=True)
    sol_real = odeint(
        NEURAL, y0[:1], real, method=method, rtol=rtol, atol=atol, return_solution=True
    )
    torch.testing.assert_close(sol_pad.ys[0, :3], sol_real.ys[0], rtol=0, atol=1e-3 * rtol)
    for k in range(3, 6):
        assert torch.equal(sol_pad.ys[0, k], sol_pad.ys[0, 2])
    assert int(sol_pad.stats.num_accepted[0]) == int(sol_real.stats.num_accepted[0])
    assert int(sol_pad.stats.num_rejected[0]) == int(sol_real.stats.num_rejected[0])
    # A row of identical times (zero-length integration) is a no-op and takes no steps.
    assert torch.equal(sol_pad.ys[2], y0[2].expand(6, -1))
    assert int(sol_pad.stats.num_accepted[2]) == 0
    assert sol_pad.stats.status.tolist() == [0, 0, 0]


@pytest.mark.parametrize("method", METHODS)
def test_backward_in_time(method: str) -> None:
    field, y0, end = PROBLEMS["van_der_pol"]
    rtol = TIGHT_RTOL[method]
    atol = rtol * 1e-3
    t_back = torch.linspace(end, 0.0, 5, dtype=torch.float64)
    ys = odeint(field, y0, t_back, method=method, rtol=rtol, atol=atol)
    ref = reference(field, y0, t_back)
    assert (ys - ref).abs().max().item() < ERROR_FACTOR[method] * rtol
    # Forward then backward returns to the start.
    fwd = odeint(field, y0, t_back.flip(0), method=method, rtol=rtol, atol=atol)
    back = odeint(field, fwd[:, -1], t_back, method=method, rtol=rtol, atol=atol)
    assert (back[:, -1] - y0).abs().max().item() < 10 * ERROR_FACTOR[method] * rtol


@pytest.mark.parametrize("method", METHODS)
def test_backward_in_time_per_sample(method: str) -> None:
    _, y0, _ = PROBLEMS["neural"]
    t = _irregular_grid(3, 5, seed=2).flip(1)  # each row decreasing, own times
    rtol = TIGHT_RTOL[method]
    atol = rtol * 1e-3
    ys = odeint(NEURAL, y0, t, method=method, rtol=rtol, atol=atol)
    ref = reference(NEURAL, y0, t)
    assert (ys - ref).abs().max().item() < ERROR_FACTOR[method] * rtol


def _relaxation(rates: torch.Tensor) -> Field:
    """y' = -k (y - cos t) per row; a large k forces small steps for stability."""

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -rates[:, None] * (y - torch.cos(t)[:, None])

    return field


@pytest.mark.parametrize("method", METHODS)
def test_hard_row_does_not_inflate_easy_rows(method: str) -> None:
    rates = torch.tensor([1.0, 1000.0, 3.0], dtype=torch.float64)
    y0 = torch.tensor([[1.0], [0.0], [-1.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    kwargs = {"method": method, "rtol": 1e-4, "atol": 1e-7, "return_solution": True}
    batch = odeint(_relaxation(rates), y0, t, **kwargs)
    accepted = batch.stats.num_accepted.tolist()
    assert accepted[1] > 10 * max(accepted[0], accepted[2]), accepted
    for row in (0, 2):
        alone = odeint(_relaxation(rates[row : row + 1]), y0[row : row + 1], t, **kwargs)
        assert accepted[row] == int(alone.stats.num_accepted[0]), (accepted, row)
        torch.testing.assert_close(batch.ys[row], alone.ys[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_stats_are_honest(method: str) -> None:
    field, y0, end = PROBLEMS["van_der_pol"]
    counting = CountingField(field)
    t = torch.linspace(0.0, end, 4, dtype=torch.float64)
    sol = odeint(counting, y0, t, method=method, rtol=1e-6, atol=1e-9, return_solution=True)
    stats = sol.stats
    assert isinstance(stats.nfe, int)
    assert stats.nfe == counting.calls, "nfe must count every call of the vector field"
    for name in ("num_accepted", "num_rejected", "status"):
        value = getattr(stats, name)
        assert value.shape == (3,), name
        assert not value.is_floating_point(), name
    assert stats.status.tolist() == [0, 0, 0]
    assert (stats.num_accepted > 0).all() and (stats.num_rejected >= 0).all()
    attempts = int((stats.num_accepted + stats.num_rejected).max())
    stages = {"bosh3": 4, "dopri5": 7, "tsit5": 7}[method]
    assert attempts <= stats.nfe <= stages * attempts + 4, (attempts, stats.nfe)
    # A loose tolerance must take fewer steps than a tight one.
    loose = odeint(field, y0, t, method=method, rtol=1e-3, atol=1e-6, return_solution=True)
    assert (loose.stats.num_accepted < stats.num_accepted).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_dtype_preserved_with_default_tolerances(method: str, dtype: torch.dtype) -> None:
    field, y0, t, ref = _problem_grid("lotka_volterra")
    ys = odeint(field, y0.to(dtype), t.to(dtype), method=method)
    assert ys.dtype == dtype
    assert torch.isfinite(ys).all()
    bound = 1e-3 if dtype == torch.float32 else ERROR_FACTOR[method] * 1e-6
    assert (ys.double() - ref).abs().max().item() < bound


def test_float32_neural_field_keeps_parameters_dtype() -> None:
    field = NeuralField(seed=3).float()
    y0 = torch.randn(5, 4)
    t = torch.rand(5, 6).sort(dim=1).values * 3
    ys = odeint(field, y0, t, method="dopri5", rtol=1e-5, atol=1e-7)
    assert ys.dtype == torch.float32 and ys.shape == (5, 6, 4)
    ref = reference(NeuralField(seed=3), y0.double(), t.double())
    assert (ys.double() - ref).abs().max().item() < 1e-3


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_rows_may_integrate_in_different_directions(method: str) -> None:
    _, y0, _ = PROBLEMS["neural"]
    t = torch.tensor(
        [[0.0, 0.5, 1.5, 2.0], [2.0, 1.2, 0.3, -0.5], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64
    )
    kwargs = {"rtol": 1e-8, "atol": 1e-11} if method == "dopri5" else {"step_size": 0.05}
    ys = odeint(NEURAL, y0, t, method=method, **kwargs)
    for row in range(3):
        alone = odeint(NEURAL, y0[row : row + 1], t[row], method=method, **kwargs)
        torch.testing.assert_close(ys[row], alone[0], rtol=0, atol=1e-11)
    assert (ys - reference(NEURAL, y0, t)).abs().max().item() < 1e-5


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_repeated_times_inside_and_at_the_start(method: str) -> None:
    """Two observations at the same time (common in real data) give the same state."""
    _, y0, _ = PROBLEMS["neural"]
    t = torch.tensor(
        [[0.0, 0.0, 0.7, 0.7, 1.4], [0.2, 0.9, 0.9, 0.9, 1.0], [0.0, 0.3, 0.6, 0.9, 1.2]],
        dtype=torch.float64,
    )
    kwargs = {"rtol": 1e-8, "atol": 1e-11} if method == "dopri5" else {"step_size": 0.05}
    ys = odeint(NEURAL, y0, t, method=method, **kwargs)
    assert torch.equal(ys[:, 0], y0)
    assert torch.equal(ys[0, 1], y0[0])
    assert torch.equal(ys[0, 2], ys[0, 3])
    assert torch.equal(ys[1, 1], ys[1, 2]) and torch.equal(ys[1, 2], ys[1, 3])
    assert (ys - reference(NEURAL, y0, t)).abs().max().item() < 1e-5


def test_throw_false_marks_failed_rows_and_keeps_the_others() -> None:
    def square(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y**2

    y0 = torch.tensor([[0.1], [1.0], [0.2]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    sol = odeint(square, y0, t, throw=False, return_solution=True, rtol=1e-8, atol=1e-10)
    assert sol.stats.status.tolist()[0] == 0 and sol.stats.status.tolist()[2] == 0
    assert sol.stats.status[1] != 0
    assert torch.isnan(sol.ys[1, 2]).all() and torch.isfinite(sol.ys[1, :2]).all()
    exact = y0 / (1 - y0 * t)  # y' = y^2 -> y0 / (1 - y0 t)
    for row in (0, 2):
        torch.testing.assert_close(sol.ys[row], exact[row][:, None], rtol=1e-6, atol=0)
    torch.testing.assert_close(sol.ys[1, 1], exact[1, 1:2], rtol=1e-6, atol=0)

