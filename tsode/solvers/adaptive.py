"""Adaptive embedded Runge-Kutta integration with per-row step sizes.

Every batch row has its own time, step size, accept/reject decision and output pointer, so one
hard row never forces small steps on the others. Rows that finished (or whose padded tail has
zero length) are frozen by masked merges (``torch.where``), not Python branches. Evaluation times
are served by dense output, so they never force extra steps. One host synchronisation per step
(a single small ``tolist``) decides loop termination and how many outputs fall in the step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsode.solvers.solution import Solution, SolverError, SolverStats, Status, failure_message
from tsode.solvers.stepping import (
    VectorField,
    check_field_output,
    dense_evaluate,
    error_ratio,
    rk_step,
)
from tsode.solvers.tableaus import ButcherTableau

SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
# PI controller exponents (Söderlind's PI.4.2), divided by (error order + 1).
PI_ALPHA = 0.7
PI_BETA = 0.4


def initial_step_size(
    func: VectorField,
    t0: Tensor,
    y0: Tensor,
    f0: Tensor,
    direction: Tensor,
    span: Tensor,
    order: int,
    rtol: float,
    atol: float,
) -> Tensor:
    """Hairer-Norsett-Wanner starting step per row (one extra evaluation). Returns (B,) >= 0."""
    with torch.no_grad():
        scale = atol + rtol * y0.abs()
        d0 = (y0 / scale).pow(2).mean(-1).sqrt().to(t0.dtype)
        d1 = (f0 / scale).pow(2).mean(-1).sqrt().to(t0.dtype)
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp(min=1e-300))
        h0 = torch.minimum(h0, span).clamp(min=torch.finfo(t0.dtype).tiny)
        y1 = y0 + (direction * h0).to(y0.dtype).unsqueeze(-1) * f0
        f1 = func((t0 + direction * h0).to(y0.dtype), y1)
        d2 = ((f1 - f0) / scale).pow(2).mean(-1).sqrt().to(t0.dtype) / h0
        d_max = torch.maximum(d1, d2)
        h1 = torch.where(
            d_max <= 1e-15,
            torch.clamp(h0 * 1e-3, min=1e-6),
            (0.01 / d_max.clamp(min=1e-300)) ** (1.0 / (order + 1)),
        )
        return torch.minimum(100 * h0, h1)


def step_size_factor(ratio: Tensor, previous_ratio: Tensor, accepted: Tensor, finite: Tensor,
                     error_order: int) -> Tensor:
    """PI controller: factor for the next step size from this and the last accepted error ratio.

    Rejected steps use the plain I-controller and never grow; non-finite steps shrink maximally.
    """
    exponent = 1.0 / (error_order + 1)
    safe_ratio = torch.where(finite, ratio, torch.ones_like(ratio)).clamp(min=1e-10)
    pi = SAFETY * safe_ratio ** (-PI_ALPHA * exponent) * previous_ratio ** (PI_BETA * exponent)
    i_only = SAFETY * safe_ratio ** (-exponent)
    factor = torch.where(
        accepted, pi.clamp(MIN_FACTOR, MAX_FACTOR), i_only.clamp(MIN_FACTOR, SAFETY)
    )
    return torch.where(finite, factor, torch.full_like(factor, MIN_FACTOR))


def scalar_step_size_factor(
    ratio: float, previous_ratio: float, accepted: bool, finite: bool, error_order: int
) -> float:
    """:func:`step_size_factor` for one batch-shared step, on Python floats (the adjoint's
    backward solve, where tensor work per step would only add overhead)."""
    if not finite:
        return MIN_FACTOR
    exponent = 1.0 / (error_order + 1)
    safe_ratio = max(ratio, 1e-10)
    if not accepted:
        return min(max(SAFETY * safe_ratio ** (-exponent), MIN_FACTOR), SAFETY)
    pi = SAFETY * safe_ratio ** (-PI_ALPHA * exponent) * previous_ratio ** (PI_BETA * exponent)
    return min(max(pi, MIN_FACTOR), MAX_FACTOR)


def solve_adaptive(
    func: VectorField,
    y0: Tensor,
    t_eval: Tensor,
    tableau: ButcherTableau,
    *,
    rtol: float,
    atol: float,
    max_steps: int,
    first_step: float | Tensor | None = None,
    throw: bool = True,
) -> Solution:
    """Integrate ``y0`` (B, D) over per-row output times ``t_eval`` (B, n) with ``tableau``.

    Each row is integrated from ``t_eval[:, 0]`` to ``t_eval[:, -1]`` (either direction); padded
    tails (repeated last time) cost nothing. Returns a :class:`Solution` with ``ys`` (B, n, D).
    """
    batch, n = t_eval.shape
    time_dtype = t_eval.dtype
    # Step control runs on detached offsets from each row's start time; gradients with respect
    # to the times flow only through the offsets of the outputs (dense output) and through the
    # start time added back where the vector field is evaluated. That makes backpropagation
    # through the solver differentiate correctly with respect to every entry of t.
    start = t_eval[:, 0]
    offsets = t_eval - start.unsqueeze(1)
    field = _shifted(func, start, y0.dtype)
    t_eval = offsets.detach()
    t0 = t_eval[:, 0]
    t_end = t_eval[:, -1]
    direction = torch.where(t_end < t0, -1.0, 1.0).to(time_dtype)
    span = (t_end - t0) * direction
    signed_eval = (t_eval - t0.unsqueeze(1)) * direction.unsqueeze(1)  # >= 0, non-decreasing

    # Outputs at the start time are y0 itself.
    num_initial = (signed_eval <= 0).sum(dim=1)
    next_output = num_initial.clone()
    done = next_output >= n

    t = t0.clone()
    y = y0
    f0 = check_field_output(field(t, y0), y0)
    nfe = 1
    if first_step is not None:
        h_abs = torch.as_tensor(first_step, dtype=time_dtype, device=t0.device)
        h_abs = h_abs.detach().abs().expand_as(t0).clone()
    else:
        h_abs = initial_step_size(
            field, t0, y0.detach(), f0.detach(), direction, span, tableau.order, rtol, atol
        )
        nfe += 1
    h_abs = torch.where(span > 0, h_abs, torch.ones_like(h_abs))

    previous_ratio = torch.ones_like(t0)
    num_steps = torch.zeros(batch, dtype=torch.long, device=y0.device)
    num_accepted = torch.zeros_like(num_steps)
    status = torch.zeros_like(num_steps)
    eps = torch.finfo(time_dtype).eps
    magnitude = torch.maximum(torch.maximum(t0.abs(), t_end.abs()), span)
    min_step = (4 * eps * magnitude).clamp(min=torch.finfo(time_dtype).tiny)
    # Without a graph to build (e.g. the adjoint's forward pass), outputs go straight into one
    # buffer, so memory does not grow with the number of steps; with a graph they are kept per
    # step and scattered once at the end (in-place writes would break autograd).
    direct = not torch.is_grad_enabled()
    output_buffer = y0.new_zeros(batch, n + 1, y0.shape[-1]) if direct else None
    output_values: list[Tensor] = []
    output_columns: list[Tensor] = []

    finished = bool(done.all())
    while not finished:
        remaining = (t_end - t) * direction
        last = h_abs >= remaining
        h_try = torch.where(last, remaining, h_abs)
        h_try = torch.where(done, torch.zeros_like(h_try), h_try)
        h_signed = direction * h_try
        y_new, error, stages, evaluations = rk_step(field, tableau, t, h_signed, y, f0)
        nfe += evaluations

        with torch.no_grad():
            ratio = error_ratio(error, y, y_new, rtol, atol).to(time_dtype)
            finite = torch.isfinite(ratio) & torch.isfinite(y_new).all(dim=-1)
            active = ~done
            accept = active & finite & (ratio <= 1.0)
            t_new = torch.where(last, t_end, t + h_signed)
            t_new = torch.where(accept, t_new, t)
            reached = ((t_eval - t_new.unsqueeze(1)) * direction.unsqueeze(1) <= 0).sum(dim=1)
            new_next_output = torch.where(accept, reached, next_output)
            num_new_outputs = new_next_output - next_output

            factor = step_size_factor(ratio, previous_ratio, accept, finite, tableau.error_order)
            proposed = h_try * factor
            # A step shortened to land on the end says little about the next step size.
            proposed = torch.where(accept & last, torch.maximum(proposed, h_abs), proposed)
            h_abs = torch.where(active, proposed, h_abs)
            previous_ratio = torch.where(accept, ratio.clamp(min=1e-4), previous_ratio)
            num_steps += active.long()
            num_accepted += accept.long()
            done_next = done | (accept & last)
            still_running = ~done_next
            underflow = still_running & (h_abs < min_step)
            out_of_steps = still_running & (num_steps >= max_steps)
            status = torch.where(
                underflow,
                torch.where(finite, Status.STEP_SIZE_UNDERFLOW, Status.NON_FINITE_STATE),
                status,
            )
            status = torch.where(out_of_steps, Status.MAX_STEPS_REACHED, status)
            failed = status != Status.SUCCESS
            done_next = done_next | failed
            max_new, finished_flag, failed_flag = torch.stack(
                [num_new_outputs.max(), done_next.all().long(), failed.any().long()]
            ).tolist()

        # Dense output for the outputs that fall inside the accepted steps, all at once.
        if max_new > 0:
            ks = torch.arange(int(max_new), device=y0.device)
            columns = next_output.unsqueeze(1) + ks  # (B, m)
            valid = ks.unsqueeze(0) < num_new_outputs.unsqueeze(1)
            t_out = offsets.gather(1, columns.clamp(max=n - 1))
            safe_h = torch.where(accept, h_signed, torch.ones_like(h_signed))
            theta = torch.where(valid, (t_out - t.unsqueeze(1)) / safe_h.unsqueeze(1), 0.0)
            values = dense_evaluate(tableau, y, safe_h, stages, theta)
            # Outputs at the step's end take the step's own solution, exactly (the polynomial
            # matches it only up to rounding, through stages evaluated at the end time); the
            # polynomial still carries the derivative with respect to the output time (an
            # exact zero in value).
            end_values = y_new.unsqueeze(1)
            if theta.requires_grad:
                fixed_theta = dense_evaluate(tableau, y, safe_h, stages, theta.detach())
                end_values = end_values + (values - fixed_theta)
            values = torch.where((theta == 1.0).unsqueeze(-1), end_values, values)
            targets = torch.where(valid, columns, n)
            if direct:
                index = targets.unsqueeze(-1).expand(-1, -1, values.shape[-1])
                output_buffer.scatter_(1, index, values)
            else:
                output_values.append(values)
                output_columns.append(targets)

        accept_col = accept.unsqueeze(-1)
        y = torch.where(accept_col, y_new, y)
        f0 = torch.where(accept_col, stages[-1], f0) if tableau.fsal else None
        t = t_new
        next_output = new_next_output
        done = done_next
        finished = bool(finished_flag)
        if failed_flag and throw:
            raise SolverError(
                failure_message(status, t + start.detach(), t_end + start.detach(), tableau.name),
                status,
            )

    ys = _assemble_outputs(y0, n, num_initial, output_values, output_columns, output_buffer)
    if bool((status != Status.SUCCESS).any()):
        unreached = torch.arange(n, device=y0.device).unsqueeze(0) >= next_output.unsqueeze(1)
        ys = torch.where(unreached.unsqueeze(-1), torch.full_like(ys, float("nan")), ys)
    stats = SolverStats(
        nfe=nfe,
        num_steps=num_steps,
        num_accepted=num_accepted,
        num_rejected=num_steps - num_accepted,
        status=status,
        next_step=h_abs,
    )
    return Solution(ys=ys, ts=offsets + start.unsqueeze(1), stats=stats)


def _shifted(func: VectorField, start: Tensor, state_dtype: torch.dtype) -> VectorField:
    """Vector field of offsets from each row's start: (offset (B,), y) -> func(start + offset, y)."""
    start = start.to(state_dtype)

    def field(offset: Tensor, y: Tensor) -> Tensor:
        return func(start + offset.to(state_dtype), y)

    return field


def _assemble_outputs(
    y0: Tensor,
    n: int,
    num_initial: Tensor,
    values: list[Tensor],
    columns: list[Tensor],
    filled: Tensor | None = None,
) -> Tensor:
    """Scatter dense outputs (each (B, m, D) with columns (B, m)) into (B, n, D), or take the
    already ``filled`` (B, n + 1, D) buffer.

    Invalid writes go to a dummy column n that is dropped; outputs at the start time are y0.
    """
    batch, dim = y0.shape
    if filled is not None:
        buffer = filled[:, :n]
    elif values:
        stacked = torch.cat(values, dim=1)
        index = torch.cat(columns, dim=1).unsqueeze(-1).expand(-1, -1, dim)
        buffer = y0.new_zeros(batch, n + 1, dim).scatter(1, index, stacked)[:, :n]
    else:
        buffer = y0.new_zeros(batch, n, dim)
    at_start = torch.arange(n, device=y0.device).unsqueeze(0) < num_initial.unsqueeze(1)
    return torch.where(at_start.unsqueeze(-1), y0.unsqueeze(1), buffer)
