"""Failure is loud and bounded: blow-up, max_steps, non-finite values and bad input raise clear
errors naming the batch rows, quickly, and never return NaN silently."""

from __future__ import annotations

import re

import pytest
import torch

import tsode.solvers.adjoint as adjoint_module
from tsode.solvers import SolverConfig, SolverError, odeint

ADAPTIVE = ["bosh3", "dopri5", "tsit5"]
FIXED = ["euler", "midpoint", "rk4"]
STAGES = {"euler": 1, "midpoint": 2, "rk4": 4, "bosh3": 4, "dopri5": 7, "tsit5": 7}


class CountingField:
    def __init__(self, field):
        self.field = field
        self.calls = 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.field(t, y)


def square(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y' = y^2 blows up at t = 1 / y0."""
    return y**2


def _failed_rows(message: str) -> set[int]:
    return {int(m) for m in re.findall(r"row (\d+)", message)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_blow_up_raises_naming_the_row(method: str) -> None:
    # Row 2 blows up at t = 1; the others would only at t = 10, 5, 3.3.
    y0 = torch.tensor([[0.1], [0.2], [1.0], [0.3]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    kwargs = {"step_size": 0.01} if method in FIXED else {}
    counting = CountingField(square)
    with pytest.raises(SolverError) as info:
        odeint(counting, y0, t, method=method, **kwargs)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert _failed_rows(message) == {2}, message
    # Bounded work: never more than max_steps (default 10_000) attempts.
    assert counting.calls <= STAGES[method] * 10_001 + 10


@pytest.mark.parametrize("method", ADAPTIVE)
def test_blow_up_reports_time_near_singularity(method: str) -> None:
    y0 = torch.tensor([[0.1], [1.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    with pytest.raises(SolverError) as info:
        odeint(square, y0, t, method=method)
    times = [float(x) for x in re.findall(r"row 1: [^;]*? at t=([-+0-9.e]+)", str(info.value))]
    assert times and 0.9 < times[0] <= 1.0 + 1e-6, str(info.value)


def _fast_oscillator(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    omega = 200.0
    return torch.stack([y[:, 1], -(omega**2) * y[:, 0]], dim=-1)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_max_steps_is_respected(method: str) -> None:
    y0 = torch.tensor([[1.0, 0.0], [0.5, 0.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    counting = CountingField(_fast_oscillator)
    with pytest.raises(SolverError) as info:
        odeint(counting, y0, t, method=method, max_steps=50)
    assert _failed_rows(str(info.value)) == {0, 1}
    assert "max_steps" in str(info.value)
    assert counting.calls <= STAGES[method] * 51 + 4, counting.calls


@pytest.mark.parametrize("method", ADAPTIVE)
def test_max_steps_enough_succeeds_and_counts_steps(method: str) -> None:
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.05], dtype=torch.float64)
    sol = odeint(_fast_oscillator, y0, t, method=method, return_solution=True)
    attempts = int(sol.stats.num_accepted[0] + sol.stats.num_rejected[0])
    assert attempts > 20
    # One step fewer than needed fails, exactly enough succeeds.
    odeint(_fast_oscillator, y0, t, method=method, max_steps=attempts)
    with pytest.raises(SolverError):
        odeint(_fast_oscillator, y0, t, method=method, max_steps=int(sol.stats.num_accepted[0]) - 1)


@pytest.mark.parametrize("method", FIXED)
def test_max_steps_respected_by_fixed_methods(method: str) -> None:
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    counting = CountingField(_fast_oscillator)
    with pytest.raises(SolverError):
        odeint(counting, y0, t, method=method, step_size=1e-4, max_steps=100)
    assert counting.calls <= STAGES[method] * 101 + 2


def _nan_after_half(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row 1 returns NaN once t > 0.5; other rows are fine."""
    out = -y
    bad = (t > 0.5) & (torch.arange(y.shape[0]) == 1)
    return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_non_finite_vector_field_raises_naming_the_row(method: str) -> None:
    y0 = torch.ones(3, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    kwargs = {"step_size": 0.1} if method in FIXED else {}
    with pytest.raises(SolverError) as info:
        odeint(_nan_after_half, y0, t, method=method, **kwargs)
    assert _failed_rows(str(info.value)) == {1}, str(info.value)


def test_error_carries_per_row_status() -> None:
    y0 = torch.tensor([[0.1], [1.0], [0.2]], dtype=torch.float64)
    with pytest.raises(SolverError) as info:
        odeint(square, y0, torch.tensor([0.0, 2.0], dtype=torch.float64))
    status = info.value.status
    assert status is not None and status.shape == (3,)
    assert status[0] == 0 and status[2] == 0 and status[1] != 0


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"method": "rk5"}, "rk5"),
        ({"method": "rk4", "step_size": 0.0}, "step_size"),
        ({"method": "rk4", "step_size": -0.1}, "step_size"),
        ({"rtol": -1.0}, "rtol"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict, pattern: str) -> None:
    y0 = torch.zeros(2, 1)
    t = torch.tensor([0.0, 1.0])
    with pytest.raises((ValueError, TypeError)) as info:
        odeint(lambda t, y: -y, y0, t, **kwargs)
    assert pattern in str(info.value)


def test_non_monotone_row_is_rejected_naming_the_row() -> None:
    y0 = torch.zeros(3, 1)
    t = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
    with pytest.raises((ValueError, SolverError)) as info:
        odeint(lambda t, y: -y, y0, t)
    assert "2" in str(info.value) and "monoton" in str(info.value).lower()


@pytest.mark.parametrize(
    "t",
    [
        torch.zeros(4, 3),  # wrong batch size
        torch.zeros(2, 3, 1),  # too many dims
        torch.tensor([0.0, float("nan")]),  # non-finite time
    ],
    ids=["batch_mismatch", "ndim", "nan_time"],
)
def test_bad_time_grids_are_rejected(t: torch.Tensor) -> None:
    with pytest.raises((ValueError, SolverError)):
        odeint(lambda t, y: -y, torch.zeros(2, 1), t)


def test_non_finite_y0_is_rejected_naming_the_row() -> None:
    y0 = torch.zeros(3, 2)
    y0[1, 0] = float("nan")
    with pytest.raises((ValueError, SolverError)) as info:
        odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]))
    assert "1" in str(info.value)


def test_wrong_vector_field_output_shape_is_rejected() -> None:
    with pytest.raises((ValueError, RuntimeError)) as info:
        odeint(lambda t, y: y[:, :1], torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    assert "shape" in str(info.value)


def test_solver_config_matches_odeint_and_passes_options() -> None:
    config = SolverConfig()
    assert (config.method, config.rtol, config.atol, config.max_steps, config.adjoint) == (
        "dopri5",
        1e-6,
        1e-8,
        10_000,
        False,
    )
    y0 = torch.tensor([[1.0, 0.5], [0.2, -0.3]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    field = lambda t, y: torch.sin(y) * torch.cos(t)[:, None]  # noqa: E731
    for kwargs in (
        {"method": "tsit5", "rtol": 1e-7, "atol": 1e-9},
        {"method": "rk4", "step_size": 0.05},
        {"method": "bosh3", "adjoint": True},
    ):
        config = SolverConfig(**kwargs)
        expected = odeint(field, y0, t, adjoint_params=(), **kwargs)
        got = config.solve(field, y0, t, adjoint_params=())
        assert torch.equal(got, expected), kwargs
        sol = config.solve(field, y0, t, return_solution=True, adjoint_params=())
        assert torch.equal(sol.ys, expected)
    with pytest.raises(SolverError):
        SolverConfig(max_steps=5).solve(_fast_oscillator, y0, torch.tensor([0.0, 10.0]).double())


@pytest.mark.parametrize(
    ("rate", "end"),
    [(100.0, 1.0), (1000.0, 0.3)],
    ids=["k100", "k1000"],
)
def test_adjoint_on_contracting_dynamics_is_right(rate: float, end: float) -> None:
    """Re-integrating a strongly contracting ODE backwards is unstable (the re-integrated state
    was off by 1e86 tolerance units for k=1000 and the gradient 54% wrong before intervals were
    split). The adjoint must return the ODE's gradient to within a few times the solve's
    error. Reference: backprop at rtol=1e-10. (At rtol=1e-5 backprop itself was 4% off for
    k=1000, the adjoint with split intervals about 2.5%.)"""
    k = torch.tensor(rate, dtype=torch.float64, requires_grad=True)

    def relax(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -k * (y - torch.cos(t)[:, None])

    y0 = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    t = torch.tensor([0.0, end / 3, end], dtype=torch.float64)
    ys = odeint(relax, y0, t, rtol=1e-10, atol=1e-12, adjoint=False)
    (exact,) = torch.autograd.grad(ys.sum(), [k])
    ys_adj = odeint(relax, y0, t, rtol=1e-5, atol=1e-7, adjoint=True, adjoint_params=(k,))
    (got,) = torch.autograd.grad(ys_adj.sum(), [k])
    torch.testing.assert_close(got, exact, rtol=3e-2, atol=0)


def test_adjoint_names_the_rows_whose_backward_reintegration_diverged(monkeypatch) -> None:
    """Without splitting (depth limit 0) the diverging re-integration raises, reporting only
    the stiff row, not the gentle row in the same batch."""
    monkeypatch.setattr(adjoint_module, "MAX_SPLIT_DEPTH", 0)
    rates = torch.tensor([[1000.0], [1.0]], dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)

    def relax(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -scale * rates * (y - torch.cos(t)[:, None])

    y0 = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    ys = odeint(relax, y0, t, rtol=1e-5, atol=1e-7, adjoint=True, adjoint_params=(scale,))
    with pytest.raises(SolverError, match="re-integrating") as info:
        ys.sum().backward()
    message = str(info.value)
    assert "row 0" in message and "row 1" not in message
    assert "adjoint=False" in message


def test_adjoint_backward_max_steps_names_rows() -> None:
    """The backward solve is bounded too, and its error names the rows that drive its step."""
    y0 = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)
    def rotation(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], -y[:, 0]], dim=-1)

    ys = odeint(rotation, y0, t, rtol=1e-3, atol=1e-5, max_steps=60, adjoint=True,
                adjoint_rtol=1e-12, adjoint_atol=1e-12)
    with pytest.raises(SolverError, match="max_steps=60") as info:
        ys.sum().backward()
    assert "hardest rows: row" in str(info.value)
