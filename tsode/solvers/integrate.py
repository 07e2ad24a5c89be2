"""The one integration loop: every solve in tsode (fixed-step, adaptive, and the adjoint's backward
solve) runs through :func:`integrate`.

Every batch row has its own time, step size, accept/reject decision, output pointer and jump
pointer, so one hard row never forces small steps on the others (unless the controller's
``error_norm="batch"`` asks for shared steps). Rows that finished (or whose padded tail has zero
length) are frozen by masked merges (``torch.where``), not Python branches. Adaptive methods serve
output times by dense output, so they never force extra steps; fixed-step methods end a step on
every output time. One host synchronisation per step (a single small ``tolist``) decides loop
termination and how many outputs fall in the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tsode.solvers.controller import Controller, initial_step_size, steps_per_interval
from tsode.solvers.solution import Solution, SolverError, SolverStats, Status, failure_message
from tsode.solvers.stepping import VectorField, check_field_output, dense_evaluate, rk_step
from tsode.solvers.tableaus import ButcherTableau


@dataclass
class StepInfo:
    """What :func:`integrate` reports to its ``on_step`` hook after every attempted step.

    Attributes:
        accepted: (B,) bool, rows whose step was accepted; ``any_accepted`` the same as a bool.
        h: (B,) the signed step tried (0 for finished rows).
        evaluations: vector-field evaluations of this step (one fewer when the first stage was
            reused from the previous step).
        ratio: (B,) per-row error ratios (None for fixed-step methods).
        y_new: (B, D) the step's end states (accepted or not); t_new: (B,) offsets reached.
    """

    accepted: Tensor
    any_accepted: bool
    h: Tensor
    evaluations: int
    ratio: Tensor | None
    y_new: Tensor
    t_new: Tensor


class _Field:
    """Vector field of offsets from each row's start: (offset (B,), y) -> func(start + offset, y).

    With jump times, every time is clamped into the current segment ``[lo, hi]`` between the
    last jump reached and (just before) the next one, so a step ending on a jump evaluates the
    field as the limit from its own side, whatever the rounding of start + offset.
    """

    def __init__(self, func: VectorField, start: Tensor, state_dtype: torch.dtype) -> None:
        self.func = func
        self.start = start.to(state_dtype)
        self.state_dtype = state_dtype
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def __call__(self, offset: Tensor, y: Tensor) -> Tensor:
        t = self.start + offset.to(self.state_dtype)
        if self.lo is not None:
            t = torch.minimum(torch.maximum(t, self.lo), self.hi)
        return self.func(t, y)


class _Jumps:
    """Per-row jump times as sorted positions along each row's direction, with a pointer."""

    def __init__(self, jump_times: Tensor, start: Tensor, shift: Tensor, direction: Tensor,
                 state_dtype) -> None:
        batch = start.shape[0]
        jumps = torch.as_tensor(jump_times).to(device=start.device, dtype=start.dtype).detach()
        if jumps.dim() == 1:
            jumps = jumps.unsqueeze(0).expand(batch, -1)
        if jumps.dim() != 2 or jumps.shape[0] != batch:
            raise ValueError(
                f"jump_times must be shared (K,) or per row (batch={batch}, K), got shape "
                f"{tuple(jumps.shape)}"
            )
        if not bool(torch.isfinite(jumps).all()):
            raise ValueError("jump_times must be finite")
        position = (jumps - start.unsqueeze(1)) * direction.unsqueeze(1)
        position, order = torch.sort(position, dim=1)
        jumps = jumps.gather(1, order)
        inf = torch.full_like(position[:, :1], float("inf"))
        self.position = position  # (B, K) positions along the row's direction
        self.next_position = torch.cat([position, inf], dim=1)  # + "no more jumps"
        # The jumps in the loop's time coordinate (times minus ``shift``), to land on exactly.
        self.coordinate = torch.cat([jumps - shift.unsqueeze(1), inf], dim=1)
        far = (direction.unsqueeze(1) * inf).to(state_dtype)
        # Absolute times, with a sentinel before the first and after the last jump.
        self.times = torch.cat([-far, jumps.to(state_dtype), far], dim=1)

    def reached(self, position: Tensor) -> Tensor:
        """Number of jumps at or before ``position`` (B,) per row."""
        return (self.position <= position.unsqueeze(1)).sum(dim=1)

    def segment(self, pointer: Tensor) -> tuple[Tensor, Tensor]:
        """Bounds [lo, hi] of the times the field may see between the last jump reached and the
        next one: hi is just below the later of the two (a jump starts its interval)."""
        index = pointer.unsqueeze(1)
        previous = self.times.gather(1, index).squeeze(1)
        following = self.times.gather(1, index + 1).squeeze(1)
        lo = torch.minimum(previous, following)
        hi = torch.maximum(previous, following)
        hi = torch.nextafter(hi, torch.full_like(hi, -float("inf")))
        return lo, hi


def integrate(
    func: VectorField,
    y0: Tensor,
    t_eval: Tensor,
    tableau: ButcherTableau,
    controller: Controller,
    *,
    max_steps: int,
    first_step: float | Tensor | None = None,
    throw: bool = True,
    on_step: Callable[[StepInfo], None] | None = None,
) -> Solution:
    """Integrate ``y0`` (B, D) over per-row output times ``t_eval`` (B, n) with ``tableau``.

    Each row is integrated from ``t_eval[:, 0]`` to ``t_eval[:, -1]`` (either direction); padded
    tails (repeated last time) cost nothing. ``first_step`` (adaptive methods): initial step
    size, a float or per row (B,) (default: Hairer's heuristic, one extra evaluation).
    ``on_step`` is called after every attempted step with a :class:`StepInfo`.
    Returns a :class:`Solution` with ``ys`` (B, n, D).
    """
    batch, n = t_eval.shape
    time_dtype = t_eval.dtype
    adaptive = tableau.adaptive
    batch_norm = controller.error_norm == "batch"
    # Step control runs on detached offsets from each row's start time; gradients with respect
    # to the times flow only through the offsets of the outputs (dense output; the step sizes of
    # fixed-step methods) and through the start time added back where the vector field is
    # evaluated. That makes backpropagation through the solver differentiate correctly with
    # respect to every entry of t.
    # Fixed-step methods step in absolute times (their step counts and sizes come from the
    # differences of the given times, as a user would compute them).
    start = t_eval[:, 0] if adaptive else torch.zeros_like(t_eval[:, 0])
    offsets = t_eval - start.unsqueeze(1)
    field = _Field(func, start, y0.dtype)
    t_eval = offsets.detach()
    t0 = t_eval[:, 0]
    t_end = t_eval[:, -1]
    direction = torch.where(t_end < t0, -1.0, 1.0).to(time_dtype)
    span = (t_end - t0) * direction
    signed_eval = (t_eval - t0.unsqueeze(1)) * direction.unsqueeze(1)  # >= 0, non-decreasing

    jumps = None
    if controller.jump_times is not None:
        jumps = _Jumps(controller.jump_times, t0 + start.detach(), start.detach(), direction,
                       y0.dtype)
        jump_pointer = jumps.reached(torch.zeros_like(t0))
        field.lo, field.hi = jumps.segment(jump_pointer)

    # Outputs at the start time are y0 itself.
    num_initial = (signed_eval <= 0).sum(dim=1)
    next_output = num_initial.clone()
    done = next_output >= n

    t = t0.clone()
    y = y0
    nfe = 0
    num_steps = torch.zeros(batch, dtype=torch.long, device=y0.device)
    num_accepted = torch.zeros_like(num_steps)
    status = torch.zeros_like(num_steps)
    if adaptive:
        f0 = check_field_output(field(t, y0), y0)
        nfe = 1
        if first_step is not None:
            h_abs = torch.as_tensor(first_step, dtype=time_dtype, device=t0.device)
            h_abs = h_abs.detach().abs().expand_as(t0).clone()
        else:
            h_abs = initial_step_size(
                field, t0, y0.detach(), f0.detach(), direction, span, tableau.order,
                controller.rtol, controller.atol,
            )
            nfe += 1
        h_abs = controller.clamp(h_abs)
        if batch_norm:  # one step size for the batch: the smallest proposal of a moving row
            h_abs = torch.where(span > 0, h_abs, torch.full_like(h_abs, float("inf"))).min()
            h_abs = torch.where(torch.isfinite(h_abs), h_abs, 1.0).expand_as(t0).clone()
        h_abs = torch.where(span > 0, h_abs, torch.ones_like(h_abs))
        previous_ratio = torch.ones_like(t0)
    else:
        f0 = None
        # Fixed steps: the interval between the last stop and the next is split into equal
        # steps; ``segment_start`` and the step sizes keep the graph to the output times.
        segment_start = offsets[:, 0]
        step_in_segment = torch.zeros_like(num_steps)
        h_abs = None
        if jumps is None:  # the stops are the output times: step counts and sizes known now
            lengths = offsets[:, 1:] - offsets[:, :-1]
            interval_count = steps_per_interval(lengths.detach(), controller.dt_max).clamp(min=1)
            interval_step = lengths / interval_count
    if adaptive:
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
        active = ~done
        # The next stop: the end, the next jump and (fixed steps) the next output time.
        if adaptive:
            stop = t_end
        else:
            next_time = offsets.gather(1, next_output.clamp(max=n - 1).unsqueeze(1)).squeeze(1)
            stop = next_time.detach()
        if jumps is not None:
            jump_position = jumps.next_position.gather(1, jump_pointer.unsqueeze(1)).squeeze(1)
            stop_position = (stop - t0) * direction
            jump_first = jump_position < stop_position
            jump_time = jumps.coordinate.gather(1, jump_pointer.unsqueeze(1)).squeeze(1)
            stop = torch.where(jump_first, jump_time, stop)
        if adaptive:
            remaining = (stop - t) * direction
            clipped = h_abs >= remaining
            h_try = torch.where(clipped, remaining, h_abs)
            h_try = torch.where(done, torch.zeros_like(h_try), h_try)
            h_signed = direction * h_try
            t_step = t
        else:
            if jumps is None:
                stop_graph = next_time
                interval = (next_output - 1).clamp(min=0, max=n - 2).unsqueeze(1)
                count = interval_count.gather(1, interval).squeeze(1)
                h_signed = interval_step.gather(1, interval).squeeze(1)
            else:
                stop_graph = torch.where(jump_first, stop, next_time)
                delta = stop_graph - segment_start
                count = steps_per_interval(delta.detach(), controller.dt_max).clamp(min=1)
                h_signed = delta / count
            h_signed = torch.where(done, torch.zeros_like(h_signed), h_signed)
            clipped = step_in_segment + 1 >= count
            t_step = segment_start + step_in_segment * h_signed
        y_new, error, stages, evaluations = rk_step(field, tableau, t_step, h_signed, y, f0)
        nfe += evaluations

        with torch.no_grad():
            if adaptive:
                row_ratio, ratio = controller.error_ratio(error, y, y_new, active)
                row_ratio, ratio = row_ratio.to(time_dtype), ratio.to(time_dtype)
                finite = torch.isfinite(ratio) & torch.isfinite(y_new).all(dim=-1)
                if batch_norm:
                    finite = finite & bool_all(finite | done)
                accept = active & finite & (ratio <= 1.0)
            else:
                row_ratio = None
                finite = torch.isfinite(y_new).all(dim=-1)
                accept = active & finite
            t_new = torch.where(clipped, stop, (t_step + h_signed).detach())
            t_new = torch.where(accept, t_new, t)
            reached = ((t_eval - t_new.unsqueeze(1)) * direction.unsqueeze(1) <= 0).sum(dim=1)
            new_next_output = torch.where(accept, reached, next_output)
            num_new_outputs = new_next_output - next_output
            landed = accept & clipped
            # Landed on a jump (also where a jump coincides with the end or an output time).
            if jumps is not None:
                jumped = landed & (jump_position <= (stop - t0) * direction)
            else:
                jumped = torch.zeros_like(landed)

            if adaptive:
                factor = controller.factor(
                    ratio, previous_ratio, accept, finite, tableau.error_order
                )
                if batch_norm:
                    proposed = h_abs * factor
                else:
                    proposed = h_try * factor
                    # A step shortened to land on a stop says little about the next step size.
                    proposed = torch.where(landed, torch.maximum(proposed, h_abs), proposed)
                h_abs = torch.where(active, controller.clamp(proposed), h_abs)
                if controller.dt_min is not None:  # error control asks for less than dt_min
                    below = active & ~accept & finite & (proposed < controller.dt_min)
                    h_abs = torch.where(below, torch.zeros_like(h_abs), h_abs)
                previous_ratio = torch.where(accept, ratio.clamp(min=1e-4), previous_ratio)
            num_steps += active.long()
            num_accepted += accept.long()
            done_next = done | (landed & (new_next_output >= n))
            still_running = ~done_next
            if adaptive:
                underflow = still_running & (h_abs < min_step)
                status = torch.where(
                    underflow,
                    torch.where(finite, Status.STEP_SIZE_UNDERFLOW, Status.NON_FINITE_STATE),
                    status,
                )
            else:
                status = torch.where(active & ~finite, Status.NON_FINITE_STATE, status)
            out_of_steps = still_running & (num_steps >= max_steps)
            status = torch.where(out_of_steps, Status.MAX_STEPS_REACHED, status)
            failed = status != Status.SUCCESS
            done_next = done_next | failed
            max_new, finished_flag, failed_flag, any_accepted, any_jumped = torch.stack(
                [num_new_outputs.max(), done_next.all().long(), failed.any().long(),
                 accept.any().long(), jumped.any().long()]
            ).tolist()

        # Outputs that fall inside the accepted steps, all at once.
        if max_new > 0:
            ks = torch.arange(int(max_new), device=y0.device)
            columns = next_output.unsqueeze(1) + ks  # (B, m)
            valid = ks.unsqueeze(0) < num_new_outputs.unsqueeze(1)
            targets = torch.where(valid, columns, n)
            if adaptive:
                values = _dense_outputs(tableau, offsets, columns, valid, accept, t, h_signed,
                                        y, y_new, stages, n)
            else:  # fixed steps end on every output time
                values = y_new.unsqueeze(1).expand(-1, int(max_new), -1)
            if direct:
                index = targets.unsqueeze(-1).expand(-1, -1, values.shape[-1])
                output_buffer.scatter_(1, index, values)
            else:
                output_values.append(values)
                output_columns.append(targets)

        if on_step is not None:
            on_step(StepInfo(accept, bool(any_accepted), h_signed, evaluations, row_ratio,
                             y_new, t_new))
        accept_col = accept.unsqueeze(-1)
        y = torch.where(accept_col, y_new, y)
        if not adaptive:
            segment_start = torch.where(
                landed, stop_graph, segment_start
            )
            step_in_segment = torch.where(landed, 0, step_in_segment + accept.long())
        if jumps is not None and any_jumped:
            jump_pointer = torch.where(landed, jumps.reached((t_new - t0) * direction),
                                       jump_pointer)
            field.lo, field.hi = jumps.segment(jump_pointer)
        # The last stage was evaluated on the far side of a jump: not reusable there.
        if tableau.fsal and not any_jumped:
            f0 = torch.where(accept_col, stages[-1], stages[0])
        else:
            f0 = None
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


def bool_all(mask: Tensor) -> Tensor:
    """``mask.all()`` as a 0-dim tensor (no host synchronisation)."""
    return mask.all()


def _dense_outputs(tableau, offsets, columns, valid, accept, t, h_signed, y, y_new, stages, n):
    """Dense output (B, m, D) at the output columns (B, m) inside the accepted steps."""
    t_out = offsets.gather(1, columns.clamp(max=n - 1))
    safe_h = torch.where(accept, h_signed, torch.ones_like(h_signed))
    theta = torch.where(valid, (t_out - t.unsqueeze(1)) / safe_h.unsqueeze(1), 0.0)
    values = dense_evaluate(tableau, y, safe_h, stages, theta)
    # Outputs at the step's end take the step's own solution, exactly (the polynomial matches it
    # only up to rounding, through stages evaluated at the end time); the polynomial still
    # carries the derivative with respect to the output time (an exact zero in value).
    end_values = y_new.unsqueeze(1)
    if theta.requires_grad:
        fixed_theta = dense_evaluate(tableau, y, safe_h, stages, theta.detach())
        end_values = end_values + (values - fixed_theta)
    return torch.where((theta == 1.0).unsqueeze(-1), end_values, values)


def _assemble_outputs(
    y0: Tensor,
    n: int,
    num_initial: Tensor,
    values: list[Tensor],
    columns: list[Tensor],
    filled: Tensor | None = None,
) -> Tensor:
    """Scatter outputs (each (B, m, D) with columns (B, m)) into (B, n, D), or take the already
    ``filled`` (B, n + 1, D) buffer.

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
