"""The solver entry point ``odeint`` and ``SolverConfig``, the form models take solver options in."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from tsode.solvers.controller import ERROR_NORMS, Controller, ErrorNorm
from tsode.solvers.gradients import Adjoint, Backprop
from tsode.solvers.integrate import integrate
from tsode.solvers.solution import Solution
from tsode.solvers.stepping import VectorField
from tsode.solvers.tableaus import get_tableau

Method = Literal["euler", "midpoint", "rk4", "bosh3", "dopri5", "tsit5"]


def odeint(
    func: VectorField,
    y0: Tensor,
    t: Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    step_size: float | None = None,
    first_step: float | Tensor | None = None,
    max_steps: int = 10_000,
    adjoint: bool = False,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_params: tuple[Tensor, ...] | list[Tensor] | None = None,
    return_solution: bool = False,
    throw: bool = True,
    error_norm: ErrorNorm = "row",
    jump_times: Tensor | None = None,
    dt_min: float | None = None,
    dt_max: float | None = None,
) -> Tensor | Solution:
    """Solve dy/dt = func(t, y) for a batch, each row on its own time grid.

    Args:
        func: vector field ``func(t, y)`` with ``t`` (B,) (each row's current time) and ``y``
            (B, D), returning (B, D). A callable or an ``nn.Module``.
        y0: (B, D) initial states, at ``t[..., 0]``.
        t: output times, shared (n,) or per row (B, n); each row monotone (non-decreasing, or
            non-increasing to integrate backwards in time). Padded tails repeat the row's last
            time and cost nothing.
        method: ``euler``, ``midpoint``, ``rk4`` (fixed step) or ``bosh3``, ``dopri5``, ``tsit5``
            (adaptive, per-row step sizes, PI controller, dense output).
        rtol, atol: error tolerances of adaptive methods.
        step_size: fixed-step methods only: largest step, in time units (one step per output
            interval when None). Output times are always hit exactly.
        first_step: adaptive methods only: initial step size, a float or per row (B,) (default:
            Hairer's heuristic, one extra evaluation). ``Solution.stats.next_step`` of a previous
            solve is a good value when solves are chained (e.g. between observations).
        max_steps: per-row bound on attempted steps; exceeding it raises ``SolverError``.
        adjoint: compute gradients with the continuous adjoint (O(1) memory in the number of
            steps) instead of backpropagating through the solver's operations.
        adjoint_rtol, adjoint_atol: tolerances of the backward adjoint solve (default: rtol, atol).
        adjoint_params: tensors to differentiate with the adjoint; default: the parameters of
            ``func`` when it is an ``nn.Module``.
        return_solution: return a :class:`Solution` (ys, ts, stats) instead of ``ys``.
        throw: raise ``SolverError`` on failure (default); otherwise failed rows get NaN outputs
            past the failure and a non-zero ``stats.status``.
        error_norm: adaptive methods: ``"row"`` (default), each row's error its own RMS norm and
            its own steps; ``"batch"``, one RMS norm over the batch, so all rows take the same
            steps.
        jump_times: (B, K) or (K,) times the solver must step to exactly (e.g. the knots of an
            interpolated path, where the vector field is not smooth); a step ending on one
            evaluates the field as the limit from the interval it came from. See
            :class:`~tsode.solvers.controller.Controller`.
        dt_min, dt_max: adaptive methods: bounds on the step size (a row whose error control
            asks for less than ``dt_min`` fails with ``STEP_SIZE_UNDERFLOW``).

    The solve is composed of a :class:`~tsode.solvers.tableaus.ButcherTableau` (the step
    method), a :class:`~tsode.solvers.controller.Controller` (step sizes, tolerances, jump
    times, error norm) and a gradient strategy (:class:`~tsode.solvers.gradients.Backprop` or
    :class:`~tsode.solvers.gradients.Adjoint`), all run by the one loop
    :func:`~tsode.solvers.integrate.integrate`.

    Returns:
        ``ys`` (B, n, D) with ``ys[:, 0] == y0``, or a :class:`Solution`.
    """
    tableau = get_tableau(method)
    t_eval = _validate(y0, t, tableau.adaptive, step_size, first_step)
    _validate_options(rtol, atol, max_steps, adjoint_rtol, adjoint_atol)
    if error_norm not in ERROR_NORMS:
        raise ValueError(f"error_norm must be one of {ERROR_NORMS}, got {error_norm!r}")
    if not tableau.adaptive and (dt_min is not None or dt_max is not None):
        raise ValueError("dt_min and dt_max apply to adaptive methods; use step_size for "
                         "fixed-step ones")
    controller = Controller(
        rtol=rtol, atol=atol, error_norm=error_norm, jump_times=jump_times, dt_min=dt_min,
        dt_max=dt_max if tableau.adaptive else step_size,
    )
    forward = partial(
        integrate, func, tableau=tableau, controller=controller, max_steps=max_steps,
        first_step=first_step, throw=throw,
    )
    gradient = (
        Adjoint(rtol=adjoint_rtol, atol=adjoint_atol, params=adjoint_params)
        if adjoint else Backprop()
    )
    solution = gradient.solve(
        func, y0, t_eval, forward, tableau=tableau, controller=controller, max_steps=max_steps
    )
    return solution if return_solution else solution.ys


def _validate(
    y0: Tensor, t: Tensor, adaptive: bool, step_size: float | None, first_step: float | None
) -> Tensor:
    """Check shapes, finiteness and monotonicity; return per-row times (B, n) in a float dtype."""
    if not isinstance(y0, Tensor) or y0.dim() != 2:
        raise ValueError(
            f"y0 must be a (batch, dim) tensor, got shape {tuple(getattr(y0, 'shape', ()))}"
        )
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t)
    batch = y0.shape[0]
    if t.dim() == 1:
        t = t.unsqueeze(0).expand(batch, -1)
    elif t.dim() != 2 or t.shape[0] != batch:
        raise ValueError(
            f"t must be shared (n,) or per-sample (batch={batch}, n), got shape {tuple(t.shape)}"
        )
    if t.shape[1] < 1:
        raise ValueError("t must contain at least one time point")
    time_dtype = torch.promote_types(t.dtype, y0.dtype)
    if not time_dtype.is_floating_point:
        time_dtype = torch.get_default_dtype()
    t = t.to(device=y0.device, dtype=time_dtype)
    with torch.no_grad():
        bad_time = ~torch.isfinite(t).all(dim=1)
        bad_state = ~torch.isfinite(y0).all(dim=1)
        steps = t.diff(dim=1)
        increasing = (steps >= 0).all(dim=1)
        decreasing = (steps <= 0).all(dim=1)
        problems = torch.stack([bad_time.any(), bad_state.any(), (~(increasing | decreasing)).any()])
        has_bad_time, has_bad_state, has_unordered = problems.tolist()
    if has_bad_time:
        rows = torch.nonzero(bad_time).flatten().tolist()[:8]
        raise ValueError(f"t contains non-finite times in batch row(s) {rows}")
    if has_bad_state:
        rows = torch.nonzero(bad_state).flatten().tolist()[:8]
        raise ValueError(f"y0 contains non-finite values in batch row(s) {rows}")
    if has_unordered:
        rows = torch.nonzero(~(increasing | decreasing)).flatten().tolist()[:8]
        raise ValueError(
            f"t must be monotone in each row (non-decreasing, or non-increasing to integrate "
            f"backwards); batch row(s) {rows} are not"
        )
    if adaptive and step_size is not None:
        raise ValueError("step_size applies to fixed-step methods; use first_step for adaptive ones")
    if not adaptive and first_step is not None:
        raise ValueError("first_step applies to adaptive methods; use step_size for fixed-step ones")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    return t


def _validate_options(
    rtol: float, atol: float, max_steps: int, adjoint_rtol: float | None, adjoint_atol: float | None
) -> None:
    for name, value in (("rtol", rtol), ("atol", atol), ("adjoint_rtol", adjoint_rtol),
                        ("adjoint_atol", adjoint_atol)):
        if value is not None and not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be 0")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")


@dataclass
class SolverConfig:
    """Solver options a model takes as one constructor argument (a recipe's ``solver:`` block).

    Attributes:
        method: ``euler``, ``midpoint``, ``rk4``, ``bosh3``, ``dopri5`` or ``tsit5``.
        rtol, atol: tolerances of adaptive methods.
        step_size: largest step of fixed-step methods, in hours (None: one step per interval).
        max_steps: per-row bound on attempted steps.
        adjoint: continuous adjoint gradients (O(1) memory) instead of backprop through steps.
        adjoint_rtol, adjoint_atol: tolerances of the backward adjoint solve.
        error_norm: ``"row"`` (per-row step sizes) or ``"batch"`` (one error norm over the
            batch, the same steps for all rows); adaptive methods.
    """

    method: Method = "dopri5"
    rtol: float = 1e-6
    atol: float = 1e-8
    step_size: float | None = None
    max_steps: int = 10_000
    adjoint: bool = False
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None
    error_norm: ErrorNorm = "row"

    def __post_init__(self) -> None:
        get_tableau(self.method)  # fail early on an unknown method
        if self.error_norm not in ERROR_NORMS:
            raise ValueError(f"error_norm must be one of {ERROR_NORMS}, got {self.error_norm!r}")

    def solve(
        self,
        func: VectorField,
        y0: Tensor,
        t: Tensor,
        *,
        return_solution: bool = False,
        adjoint_params: tuple[Tensor, ...] | list[Tensor] | None = None,
        first_step: float | Tensor | None = None,
        jump_times: Tensor | None = None,
    ) -> Tensor | Solution:
        """``odeint`` with these options; see :func:`odeint` for shapes."""
        return odeint(
            func, y0, t, **{f.name: getattr(self, f.name) for f in fields(self)},
            adjoint_params=adjoint_params,
            return_solution=return_solution,
            first_step=first_step if get_tableau(self.method).adaptive else None,
            jump_times=jump_times,
        )
