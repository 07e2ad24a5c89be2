"""The one integration loop: every solve in tsode (fixed-step, adaptive, and the adjoint's backward
solve) runs through :func:`integrate`.

Every batch row has its own time, step size, accept/reject decision, output pointer and jump
pointer, so one hard row never forces small steps on the others (unless the controller's
``error_norm="batch"`` asks for shared steps). Rows that finished (or whose padded tail has zero
length) are frozen by masked merges (``torch.where``), not Python branches. Adaptive methods serve
output times by dense output, so they never force extra steps; fixed-step methods end a step on
every output time. One host synchronisation per step (a single small ``tolist``) decides loop
termination and how many outputs fall in the step.

Fixed-step solves without jump times follow a schedule built once per solve
(:class:`_FixedSchedule`): every row's steps are known in advance, so the same loop takes them
with no step control, stop search, accept/reject masking or per-step synchronisation (many
tiny solves, e.g. an ODE-RNN's 1-3 Euler steps per observation interval, are dominated by
that bookkeeping otherwise).
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


class _FixedSchedule:
    """The whole step schedule of a fixed-step solve without jump times, built once per solve.

    Every stop is an output time, so each row's steps are known before the first one: the
    interval between two output times is split into ``steps_per_interval`` equal steps (empty,
    padded intervals take none), and a row's k-th step is the same whatever the other rows do.
    The loop then takes step k of every row with no step control, no stop search and no host
    synchronisation; rows with fewer steps are frozen by a masked merge (skipped while every
    row still steps). Only the states the outputs need are kept (output j of a row is its state
    after ``columns[:, j]`` of its steps; with one interval, the start and final states).

    A non-finite state stays non-finite through later steps (it enters every later state
    additively), so one check of the final states after the last step finds every failure;
    the per-step flags (a cheap ``(y * 0).sum(-1)``, NaN exactly where a state is not finite)
    then locate it.
    """

    def __init__(self, t_eval: Tensor, step_size: float | None, need_step_ends: bool) -> None:
        batch, n = t_eval.shape
        self.n = n
        self.columns: Tensor | None = None
        self.kept_steps: set[int] = set()
        self.kept: Tensor | None = None
        self.num_steps = 0
        if n < 2:
            self.total = torch.zeros(batch, dtype=torch.long, device=t_eval.device)
            return
        lengths = t_eval.diff(dim=1)  # (B, n - 1), with the graph to the times
        counts = steps_per_interval(lengths.detach(), step_size)
        h_interval = lengths / counts.clamp(min=1)
        # The one host synchronisation before stepping: the most and fewest steps of a row
        # and (several intervals) the step counts after which outputs are read.
        if n == 2:
            self.total = counts[:, 0]
            self.num_steps, self.fewest = torch.stack(
                [self.total.max(), self.total.min()]).tolist()
        else:
            ends = counts.cumsum(dim=1)
            self.total = ends[:, -1]
            self.columns = torch.cat([torch.zeros_like(ends[:, :1]), ends], dim=1)  # (B, n)
            self.kept = torch.unique(self.columns)  # sorted
            kept_list = torch.cat([self.kept, self.total.min().view(1)]).tolist()
            self.fewest = kept_list.pop()
            self.num_steps = kept_list[-1]
            self.kept_steps = set(kept_list)
        if self.num_steps == 0:
            return
        k = torch.arange(self.num_steps, device=t_eval.device).unsqueeze(0)  # (1, K)
        if n == 2:
            count, index_in_interval = counts, k
            h, t_start, t_stop = h_interval, t_eval[:, :1], t_eval[:, 1:]
        else:  # the interval of every row's k-th step, and the step's place in it
            interval = torch.searchsorted(ends, k.expand(batch, -1).contiguous(), right=True)
            interval = interval.clamp(max=n - 2)
            count = counts.gather(1, interval)
            index_in_interval = k - (ends.gather(1, interval) - count)
            h = h_interval.gather(1, interval)
            t_start = t_eval[:, :-1].gather(1, interval)
            t_stop = t_eval[:, 1:].gather(1, interval) if need_step_ends else None
        stepping = k < self.total.unsqueeze(1)  # (B, K)
        h = torch.where(stepping, h, torch.zeros_like(h))
        t = t_start + index_in_interval * h  # (B, K)
        self.t = t.unbind(1)
        self.h = h.unbind(1)
        self.stepping = stepping.t().unsqueeze(-1)  # (K, B, 1)
        self.t_new = None
        if need_step_ends:  # the exact end of each step (the output time for an interval's last)
            last = index_in_interval + 1 >= count
            self.t_new = torch.where(last, t_stop, t + h).detach().t()

    def outputs(self, y0: Tensor, y: Tensor, kept_states: list[Tensor]) -> Tensor:
        """The outputs (B, n, D): from the start and final states ``y0``, ``y`` (one interval)
        or from the kept states (after ``self.kept`` steps, each (B, D))."""
        if self.columns is None:
            return torch.stack([y0, y], dim=1)[:, : self.n]
        states = torch.stack(kept_states, dim=1)
        index = torch.searchsorted(self.kept, self.columns)
        return states.gather(1, index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))

    def failures(self, finite_steps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """After a failure: per row (B,), whether it failed and the steps it took before.
        ``finite_steps``: per step (B,), NaN where the row's new state was not finite."""
        stepping = self.stepping.squeeze(-1)  # (K, B)
        bad = stepping & torch.isnan(torch.stack(finite_steps))
        failed = bad.any(dim=0)
        first_bad = torch.where(failed, bad.long().argmax(dim=0), self.total)
        return failed, first_bad

    def columns_reached(self, steps: Tensor) -> Tensor:
        """Number of outputs (B,) a row has reached after ``steps`` (B,) of its steps."""
        if self.columns is None:
            return 1 + (steps >= self.total).long()
        return (self.columns <= steps.unsqueeze(1)).sum(dim=1)

    def time_after(self, steps: Tensor) -> Tensor:
        """Each row's time (B,) after ``steps`` (B,) of its steps (detached)."""
        starts = torch.stack(self.t, dim=1).detach()
        return starts.gather(1, steps.clamp(max=self.num_steps - 1).unsqueeze(1)).squeeze(1)

    @staticmethod
    def build(t_eval: Tensor, step_size: float | None, max_steps: int, need_step_ends: bool):
        """The schedule, or None when a row needs more than ``max_steps`` steps (the general
        loop then stops it there with ``MAX_STEPS_REACHED``)."""
        schedule = _FixedSchedule(t_eval, step_size, need_step_ends)
        return schedule if schedule.num_steps <= max_steps else None


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
    # Fixed-step methods without jump times know every row's steps in advance: the loop then
    # follows a precomputed schedule (no step control, no stop search, no per-step host
    # synchronisation). Otherwise (adaptive methods, jump times, or more than max_steps steps)
    # the loop decides each step as it goes.
    schedule = None
    if not adaptive and controller.jump_times is None:
        schedule = _FixedSchedule.build(t_eval, controller.dt_max, max_steps, on_step is not None)
    if schedule is not None:
        step_field = func
        y = y0
        nfe = 0
        f0 = h_abs = None
        step_index = 0
        finite_steps: list[Tensor] = []
        kept_states = [y0] if 0 in schedule.kept_steps else []
        finished = schedule.num_steps == 0
    else:
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
        step_field = field
        finished = bool(done.all())

    while not finished:
        if schedule is not None:
            t_step, h_signed = schedule.t[step_index], schedule.h[step_index]
        else:
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
        y_new, error, stages, evaluations = rk_step(step_field, tableau, t_step, h_signed, y, f0)
        nfe += evaluations
        if schedule is not None:
            with torch.no_grad():  # NaN exactly where a row's new state is not finite
                finite_steps.append((y_new * 0).sum(dim=-1))
            stepping = schedule.stepping[step_index]
            y = y_new if step_index < schedule.fewest else torch.where(stepping, y_new, y)
            if on_step is not None:
                accept = stepping.squeeze(-1) & ~torch.isnan(finite_steps[-1])
                t_new = torch.where(accept, schedule.t_new[step_index], t_step.detach())
                on_step(StepInfo(accept, bool(accept.any()), h_signed, evaluations, None, y_new,
                                 t_new))
            step_index += 1
            if step_index in schedule.kept_steps:
                kept_states.append(y)
            finished = step_index >= schedule.num_steps
            continue

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

    if schedule is not None:
        ys = schedule.outputs(y0, y, kept_states)
        ts = t_eval
        num_steps = num_accepted = schedule.total
        any_failed = bool((y * 0).sum().isnan())  # a non-finite final state (see above)
        if any_failed:
            failed, num_accepted = schedule.failures(finite_steps)
            status = torch.where(failed, Status.NON_FINITE_STATE, Status.SUCCESS)
            next_output = schedule.columns_reached(num_accepted)
            num_steps = num_accepted + failed.long()  # the failed attempt counts
            if throw:
                raise SolverError(
                    failure_message(status, schedule.time_after(num_accepted),
                                    t_eval[:, -1].detach(), tableau.name),
                    status,
                )
        else:
            status = torch.zeros_like(num_steps)
    else:
        ys = _assemble_outputs(y0, n, num_initial, output_values, output_columns, output_buffer)
        ts = offsets + start.unsqueeze(1)
        any_failed = bool((status != Status.SUCCESS).any())
    if any_failed:
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
    return Solution(ys=ys, ts=ts, stats=stats)


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
