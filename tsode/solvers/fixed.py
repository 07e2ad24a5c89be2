"""Fixed-step Runge-Kutta integration on per-row time grids.

Every output time is hit exactly: the interval between two consecutive output times of a row
is split into ``ceil(|interval| / step_size)`` equal steps (one step per interval when no
``step_size`` is given). Rows needing fewer steps in an interval are frozen for the rest of it,
and zero-length (padded) intervals cost no steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tsode.solvers.solution import Solution, SolverError, SolverStats, Status
from tsode.solvers.stepping import VectorField, rk_step
from tsode.solvers.tableaus import ButcherTableau


def steps_per_interval(delta: Tensor, step_size: float | None) -> Tensor:
    """Number of equal steps per row for interval lengths ``delta`` (B,): 0 for empty intervals."""
    nonempty = delta != 0
    if step_size is None:
        return nonempty.long()
    # The small relative slack keeps an interval that is an exact multiple of the step from
    # getting an extra step through rounding.
    count = torch.ceil(delta.abs() / step_size * (1 - 1e-12)).long().clamp(min=1)
    return torch.where(nonempty, count, torch.zeros_like(count))


def solve_fixed(
    func: VectorField,
    y0: Tensor,
    t_eval: Tensor,
    tableau: ButcherTableau,
    *,
    step_size: float | None,
    max_steps: int,
    throw: bool = True,
) -> Solution:
    """Integrate ``y0`` (B, D) through the per-row output times ``t_eval`` (B, n)."""
    batch, n = t_eval.shape
    outputs = [y0]
    y = y0
    nfe = 0
    num_steps = torch.zeros(batch, dtype=torch.long, device=y0.device)
    for j in range(1, n):
        t_start = t_eval[:, j - 1]
        delta = t_eval[:, j] - t_start
        count = steps_per_interval(delta, step_size)
        max_count = int(count.max())
        if int(num_steps.max()) + max_count > max_steps:
            too_many = (num_steps + count) > max_steps
            rows = torch.nonzero(too_many).flatten().tolist()[:8]
            raise SolverError(
                f"ODE solve ({tableau.name}) would exceed max_steps={max_steps} for batch row(s) "
                f"{rows} before t={t_eval[rows[0], j].item():.6g}; increase step_size or max_steps",
                torch.where(too_many, Status.MAX_STEPS_REACHED, 0),
            )
        h = delta / count.clamp(min=1)
        for k in range(max_count):
            stepping = k < count
            h_k = torch.where(stepping, h, torch.zeros_like(h))
            y_new, _, _, evaluations = rk_step(func, tableau, t_start + k * h, h_k, y)
            y = torch.where(stepping.unsqueeze(-1), y_new, y)
            nfe += evaluations
        num_steps += count
        outputs.append(y)
    ys = torch.stack(outputs, dim=1)

    finite_rows = torch.isfinite(ys).all(dim=-1)  # (B, n)
    status = torch.where(finite_rows.all(dim=1), Status.SUCCESS, Status.NON_FINITE_STATE)
    if throw and bool((status != Status.SUCCESS).any()):
        rows = torch.nonzero(status != Status.SUCCESS).flatten().tolist()
        first_bad = (~finite_rows).long().argmax(dim=1)
        where = "; ".join(
            f"row {r}: non-finite state at t={t_eval[r, first_bad[r]].item():.6g}" for r in rows[:8]
        )
        raise SolverError(
            f"ODE solve ({tableau.name}) failed for {len(rows)} batch row(s): {where}"
            f" (the solution blows up or step_size is too large)",
            status,
        )
    stats = SolverStats(
        nfe=nfe,
        num_steps=num_steps,
        num_accepted=num_steps.clone(),
        num_rejected=torch.zeros_like(num_steps),
        status=status,
    )
    return Solution(ys=ys, ts=t_eval, stats=stats)


def uniform_step_count(span: float, step_size: float | None) -> int:
    """Steps of at most ``step_size`` covering ``span`` (1 when no step size is given)."""
    if step_size is None or span == 0:
        return 1
    return max(1, math.ceil(abs(span) / step_size * (1 - 1e-12)))
