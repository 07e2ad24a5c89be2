"""Continuous adjoint gradients with O(1) memory in the number of solver steps.

Forward: solve without building a graph; keep only the outputs ``ys`` (B, n, D).
Backward: for each output interval [t_{j-1}, t_j], from the last to the first, solve the
augmented system backwards in time

    dy/dt = f(t, y),   da/dt = -a^T df/dy,   dg/dt = -a^T df/dtheta

starting from the stored y(t_j), adding dL/dy(t_j) to the adjoint a at every output time.
Gradients: dL/dy0 = a(t_0); dL/dtheta = g(t_0); dL/dt_j = dL/dy(t_j) . f(t_j, y_j) for j >= 1 and
dL/dt_0 = -a(t_0) . f(t_0, y_0).

Batching over per-row grids: each interval is mapped to a shared variable s in [0, 1] with
t_b(s) = t_{b,j} - s * (t_{b,j} - t_{b,j-1}), so every row crosses its own interval as s goes
0 -> 1 and the parameter-gradient integral is one batch-summed vector-Jacobian product per
stage. The backward step size in s is therefore shared by the batch (error-controlled on the
worst row, with a seminorm that leaves the parameter integral out); zero-length (padded)
intervals have zero dynamics and cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tsode.solvers.controller import Controller, steps_per_interval
from tsode.solvers.integrate import StepInfo, integrate
from tsode.solvers.solution import Solution, SolverError, Status
from tsode.solvers.stepping import VectorField
from tsode.solvers.tableaus import ButcherTableau


@dataclass
class AdjointOptions:
    """Everything the backward pass needs besides tensors (kept off the autograd graph)."""

    func: VectorField
    tableau: ButcherTableau
    forward_solve: object  # callable (y0, t_eval) -> Solution, run under no_grad
    rtol: float
    atol: float
    step_size: float | None
    max_steps: int
    num_params: int
    segment_ends: bool = False  # output times are jump times (see _AugmentedField)
    stats: list = field(default_factory=list)  # receives the forward SolverStats
    first_backward_step: float | None = None  # set from the forward solve (adaptive methods)


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0: Tensor, t_eval: Tensor, options: AdjointOptions, *params: Tensor):
        with torch.no_grad():
            solution: Solution = options.forward_solve(y0, t_eval)
        options.stats.append(solution.stats)
        proposal, span = solution.stats.next_step, (t_eval[:, -1] - t_eval[:, 0]).abs()
        if proposal is not None and bool((span > 0).any()):
            options.first_backward_step = float(proposal[span > 0].min())
        ctx.options = options
        ctx.save_for_backward(t_eval, solution.ys, *params)
        return solution.ys

    @staticmethod
    def backward(ctx, grad_ys: Tensor):
        options: AdjointOptions = ctx.options
        t_eval, ys, *params = ctx.saved_tensors
        grad_y0, grad_t, grad_params, nfe = _adjoint_backward(
            options, t_eval, ys, grad_ys, params, need_time_grad=ctx.needs_input_grad[1]
        )
        options.stats[-1].nfe_backward += nfe
        return (grad_y0, grad_t, None, *grad_params)


def adjoint_solve(
    func: VectorField,
    y0: Tensor,
    t_eval: Tensor,
    params: tuple[Tensor, ...],
    options: AdjointOptions,
) -> Tensor:
    """Differentiable solve whose backward pass is the continuous adjoint. Returns (B, n, D)."""
    return _AdjointSolve.apply(y0, t_eval, options, *params)


def _adjoint_backward(
    options: AdjointOptions, t_eval, ys, grad_ys, params, need_time_grad: bool = True
):
    func = options.func
    batch, n, dim = ys.shape
    state_dtype = ys.dtype
    adjoint = grad_ys[:, -1].clone()
    grad_t = torch.zeros_like(t_eval)
    grad_params = [torch.zeros_like(p) for p in params]
    total_nfe = 0
    # The backward step starts from the forward solve's final step proposal (the dynamics near
    # t_n set both).
    hints = _BackwardHints(step=options.first_backward_step)
    with torch.no_grad():
        for j in range(n - 1, 0, -1):
            t_j = t_eval[:, j]
            if need_time_grad:
                f_j = func(t_j.to(state_dtype), ys[:, j])
                total_nfe += 1
                grad_t[:, j] = (grad_ys[:, j] * f_j).sum(-1).to(grad_t.dtype)
            delta = t_j - t_eval[:, j - 1]
            if bool((delta != 0).any()):
                adjoint, nfe = _backward_over(
                    options, ys[:, j - 1], ys[:, j], t_eval[:, j - 1], t_j, adjoint, params,
                    grad_params, hints,
                )
                total_nfe += nfe
            if j == 1 and need_time_grad:
                f_0 = func(t_eval[:, 0].to(state_dtype), ys[:, 0])
                total_nfe += 1
                grad_t[:, 0] = -(adjoint * f_0).sum(-1).to(grad_t.dtype)
            adjoint = adjoint + grad_ys[:, j - 1]
        if n == 1:
            adjoint = grad_ys[:, 0].clone()
    return adjoint, grad_t, grad_params, total_nfe


# Re-integrating y backwards is unstable for contracting (stiff, dissipative) or chaotic
# dynamics: the reconstructed trajectory leaves the forward one exponentially fast in the length
# of the interval, and the adjoint then differentiates a different trajectory. Every backward
# solve starts from a stored forward state and must land back on the stored state at its start:
# within REINTEGRATION_LIMIT error-tolerance units (adaptive methods: atol + rtol*|y| of the
# backward solve) or FIXED_STEP_RELATIVE_LIMIT * (1 + |y|) (fixed-step methods, whose accuracy no
# tolerance defines). On a miss (or a backward solve that fails) the interval is split into
# equal pieces (about log(miss) / log(limit) of them, since the miss grows exponentially with
# the length): their start states come from one forward re-solve from the stored start, and
# each piece is solved backwards from its own end state, which shortens the unstable stretch.
# Memory grows only with the pieces kept (at most MAX_PIECES (B, D) states per level, at most
# MAX_SPLIT_DEPTH levels); an interval still missing at that depth raises SolverError naming
# its rows.
# Measured (dopri5, rtol=1e-5): well-conditioned problems miss by O(1)-O(100) units; a chaotic
# MLP field over 2 h intervals by 3e7 (adjoint gradient 350% off), y' = -1000 (y - cos t) over
# 0.2 h by 1e86 (gradient 54% off).
@dataclass
class _BackwardHints:
    """What one backward pass carries from interval to interval: the last accepted step (time
    units) and the piece length diverging intervals last had to be split to (or None)."""

    step: float | None = None
    piece_length: float | None = None


REINTEGRATION_LIMIT = 1e4
FIXED_STEP_RELATIVE_LIMIT = 1e-3
MAX_SPLIT_DEPTH = 8
MAX_PIECES = 64
GROWTH = 1.25  # pieces split up front are this much longer than the last ones that worked


def _backward_over(
    options: AdjointOptions, y_start, y_end, t_start, t_end, adjoint, params, grad_params,
    hints: _BackwardHints, depth: int = 0,
):
    """Carry the adjoint (B, D) from t_end back to t_start (per-row times (B,)), adding the
    parameter-gradient integral into ``grad_params``; splits the interval where re-integration
    diverges (see REINTEGRATION_LIMIT). ``hints.piece_length`` remembers the last piece length
    that had to be split down to, so later intervals are split up front instead of first failing
    whole. Returns the adjoint at t_start and the evaluations used."""
    delta = t_end - t_start
    span = float(delta.abs().max())
    known = hints.piece_length
    if depth == 0 and known is not None and span > GROWTH * known:
        # Optimistic: pieces a little longer than the last ones that worked.
        pieces, nfe = min(math.ceil(span / (GROWTH * known)), MAX_PIECES), 0
    else:
        try:
            y_back, adjoint_start, increments, nfe = _solve_interval(
                options, y_end, adjoint, t_end, delta, params, hints
            )
        except SolverError as error:
            # Instability (non-finite state, step-size underflow) is what splitting cures; an
            # exhausted step budget is the user's bound, and is reported as it is.
            if depth >= MAX_SPLIT_DEPTH or error.reason == Status.MAX_STEPS_REACHED:
                raise
            pieces, nfe = 2, error.evaluations
        else:
            miss, limit = _reintegration_miss(options, y_back, y_start)
            if bool((miss <= limit).all()):
                for acc, inc in zip(grad_params, increments):
                    acc += inc
                if depth > 0:
                    hints.piece_length = span
                else:
                    hints.piece_length = None  # whole intervals work (again)
                return adjoint_start, nfe
            if depth >= MAX_SPLIT_DEPTH:
                _raise_reintegration_error(options, miss, limit, t_start, t_end)
            pieces = _pieces_for(float(miss.max()), limit)
    # Split into equal pieces: their end states from one forward re-solve, then each piece
    # backwards from the last to the first. The last piece starts from the stored end state for
    # adaptive methods (the re-solve matches it to the tolerance) but from the re-solved one for
    # fixed-step methods: there the two differ by the coarse step's own discretization error,
    # which no splitting would remove.
    fractions = torch.arange(pieces + 1, dtype=t_start.dtype, device=t_start.device) / pieces
    grid = t_start.unsqueeze(1) + fractions * delta.unsqueeze(1)  # (B, pieces + 1)
    solution: Solution = options.forward_solve(y_start, grid)
    nfe += solution.stats.nfe
    states = solution.ys

    def end_state(k: int) -> Tensor:
        return y_end if k == pieces and options.tableau.adaptive else states[:, k]

    for k in range(pieces, 0, -1):
        adjoint, piece_nfe = _backward_over(
            options, states[:, k - 1], end_state(k),
            grid[:, k - 1], grid[:, k], adjoint, params, grad_params, hints,
            depth + 1,
        )
        nfe += piece_nfe
    return adjoint, nfe


def _pieces_for(miss: float, limit: float) -> int:
    """Pieces to split an interval into when its re-integration missed by ``miss`` units:
    the miss grows exponentially with the interval's length, from O(1) units, so
    log(miss) / log(limit) pieces bring each under the limit (2 at least, MAX_PIECES at most;
    2 for a non-finite miss)."""
    if not math.isfinite(miss):
        return 2
    return int(min(max(math.ceil(math.log(miss) / math.log(limit)), 2), MAX_PIECES))


def _reintegration_miss(options: AdjointOptions, y_back, y_stored):
    """Per row (B,): how far the re-integrated state is from the stored one, and the limit."""
    if options.tableau.adaptive:
        scale = options.atol + options.rtol * y_stored.abs()
        limit = REINTEGRATION_LIMIT
    else:
        scale = 1.0 + y_stored.abs()
        limit = FIXED_STEP_RELATIVE_LIMIT
    return ((y_back - y_stored).abs() / scale).amax(dim=-1), limit


def _raise_reintegration_error(options: AdjointOptions, miss, limit, t_start, t_end) -> None:
    bad = ~(miss <= limit)  # NaN counts as bad
    rows = torch.nonzero(bad).flatten().tolist()
    shown = ", ".join(
        f"row {r} (t={float(t_start[r]):.6g}..{float(t_end[r]):.6g}, off by {float(miss[r]):.3g})"
        for r in rows[:8]
    )
    more = f" and {len(rows) - 8} more" if len(rows) > 8 else ""
    raise SolverError(
        f"adjoint backward solve ({options.tableau.name}): re-integrating the state backwards "
        f"did not reproduce the forward solution for {len(rows)} batch row(s), even over "
        f"intervals split {MAX_SPLIT_DEPTH} times: {shown}{more} (tolerance units; limit "
        f"{limit:g}). The dynamics are too contracting (stiff) or chaotic for the continuous "
        f"adjoint here; use adjoint=False (backprop through the solver)."
    )


class _AugmentedField:
    """The backward augmented system in the shared variable s of one interval.

    State z = [y, a] (B, 2D). Returns dz/ds and records the batch-summed parameter term
    (delta * a)^T df/dtheta of each call in ``param_terms``.
    """

    def __init__(self, func, params, t_j: Tensor, delta: Tensor, dim: int,
                 segment_ends: bool = False):
        self.func, self.params, self.t_j, self.delta, self.dim = func, params, t_j, delta, dim
        self.param_terms: list[list[Tensor]] = []
        self.segment_ends = segment_ends

    def __call__(self, s: Tensor, z: Tensor) -> Tensor:
        y, a = z[:, : self.dim], z[:, self.dim :]
        delta = self.delta.to(z.dtype)
        t = self.t_j.to(z.dtype) - s * delta
        if self.segment_ends:
            # The forward solve had jump times: evaluate within [t_{j-1}, t_j), so the end of
            # the interval is seen as the limit from inside it (as in the forward solve).
            ends = torch.stack([self.t_j, self.t_j - self.delta]).to(z.dtype)
            hi = ends.amax(0)
            t = torch.minimum(torch.maximum(t, ends.amin(0)),
                              torch.nextafter(hi, torch.full_like(hi, -float("inf"))))
        with torch.enable_grad():
            y_var = y.detach().requires_grad_(True)
            f = self.func(t, y_var)
            cotangent = a * delta.unsqueeze(-1)
            inputs = (y_var, *self.params)
            grads = torch.autograd.grad(f, inputs, cotangent, allow_unused=True)
        vjp_y = grads[0] if grads[0] is not None else torch.zeros_like(y)
        self.param_terms.append(
            [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[1:], self.params)]
        )
        return torch.cat([-delta.unsqueeze(-1) * f.detach(), vjp_y], dim=-1)


def _solve_interval(
    options: AdjointOptions, y_j, adjoint, t_j, delta, params, hints: _BackwardHints
):
    """Integrate [y, a] back across one interval and accumulate the parameter gradient.

    Runs :func:`~tsode.solvers.integrate.integrate` in the shared variable s in [0, 1] (empty
    intervals: [0, 0], frozen) with a batch-shared step (``error_norm="batch"``).
    ``hints.step`` holds the last accepted step in time units (None before the first interval,
    which then uses the initial-step heuristic); it is updated in place.
    """
    tableau = options.tableau
    dim = y_j.shape[-1]
    field = _AugmentedField(options.func, params, t_j, delta, dim, options.segment_ends)
    z = torch.cat([y_j, adjoint], dim=-1)
    moving = delta != 0
    s_grid = torch.stack([torch.zeros_like(t_j), moving.to(t_j.dtype)], dim=1)  # (B, 2)
    span = float(delta.abs().max())
    max_steps = options.max_steps
    first_step = None
    if tableau.adaptive:
        controller = Controller(rtol=options.rtol, atol=options.atol, error_norm="batch")
        if hints.step is not None:
            first_step = min(max(hints.step / span, 1e-6), 1.0)
    else:
        # The same number of equal steps in s for every row, set by the longest interval.
        count = int(steps_per_interval(delta.abs().max(), options.step_size))
        controller = Controller(error_norm="batch", dt_max=1.0 / count)
        max_steps = max(max_steps, count + 1)
    integral = _ParameterIntegral(tableau, field, params)
    solution = integrate(
        field, z, s_grid, tableau, controller, max_steps=max_steps, first_step=first_step,
        throw=False, on_step=integral,
    )
    nfe = solution.stats.nfe
    status = solution.stats.status
    if bool((status != Status.SUCCESS).any()):
        reason = Status(int(status[status != Status.SUCCESS][0]))
        last = integral.last
        ratio = last.ratio if last.ratio is not None else torch.zeros_like(t_j)
        hardest = _hardest_rows(ratio, last.y_new, t_j, delta)
        if reason == Status.MAX_STEPS_REACHED:
            message = (
                f"adjoint backward solve ({tableau.name}) reached max_steps={options.max_steps} "
                f"in the interval ending at t={float(t_j.max()):.6g}; hardest rows: {hardest}"
            )
        else:
            what = "non-finite adjoint state" if reason == Status.NON_FINITE_STATE else (
                "step size underflow")
            message = (
                f"adjoint backward solve ({tableau.name}) failed: {what} in the interval "
                f"ending at t={float(t_j.max()):.6g} (fraction {float(last.t_new.max()):.3g} "
                f"done); hardest rows: {hardest}"
            )
        raise SolverError(message, reason=reason, evaluations=nfe)
    if tableau.adaptive and bool(moving.any()):
        hints.step = float(solution.stats.next_step[moving].max()) * span
    z_end = solution.ys[:, -1]
    return z_end[:, :dim], z_end[:, dim:], integral.increments, nfe


class _ParameterIntegral:
    """``on_step`` hook of the backward solve: adds each accepted step's share of the
    parameter-gradient integral, sum_i b_i h (delta a)^T df/dtheta at the stages, recorded by
    the augmented field at each evaluation (the first stage's record is carried over from the
    previous step when the solver reuses it)."""

    def __init__(self, tableau: ButcherTableau, field: _AugmentedField, params) -> None:
        self.tableau = tableau
        self.field = field
        self.increments = [torch.zeros_like(p) for p in params]
        self.first_terms: list[Tensor] | None = None
        self.last: StepInfo | None = None

    def __call__(self, info: StepInfo) -> None:
        self.last = info
        calls = self.field.param_terms
        stages = self.tableau.num_stages
        if self.first_terms is None:
            self.first_terms = calls[0]  # the solve's first evaluation, at its start
        if info.evaluations == stages:
            terms = calls[-stages:]
        else:
            terms = [self.first_terms, *calls[len(calls) - info.evaluations:]]
        if info.any_accepted:
            h = info.h.abs().max()
            for index, acc in enumerate(self.increments):
                total = None
                for weight, stage_terms in zip(self.tableau.b, terms):
                    if weight != 0.0:
                        term = stage_terms[index]
                        total = term * weight if total is None else total.add_(term, alpha=weight)
                if total is not None:
                    acc.add_(total.mul_(h.to(total.dtype)))
            self.first_terms = terms[-1]
        calls.clear()


def _hardest_rows(row_ratio: Tensor, z_new: Tensor, t_j: Tensor, delta: Tensor, count: int = 4):
    """The rows that drive the batch-shared backward step: non-finite first, then the largest
    error ratio, each with its own interval."""
    finite = torch.isfinite(z_new).all(dim=-1) & torch.isfinite(row_ratio)
    key = torch.where(finite, row_ratio, torch.full_like(row_ratio, float("inf")))
    rows = torch.argsort(key, descending=True)[:count].tolist()
    return ", ".join(
        f"row {r} ({'non-finite' if not bool(finite[r]) else f'error ratio {float(key[r]):.3g}'}, "
        f"t={float(t_j[r] - delta[r]):.6g}..{float(t_j[r]):.6g})"
        for r in rows
    )
