"""Results of a solve: the trajectory, per-row statistics and status codes, and the error type."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor


class Status(IntEnum):
    """Per-row outcome of a solve."""

    SUCCESS = 0
    MAX_STEPS_REACHED = 1
    STEP_SIZE_UNDERFLOW = 2
    NON_FINITE_STATE = 3

    def describe(self) -> str:
        return {
            Status.SUCCESS: "success",
            Status.MAX_STEPS_REACHED: "max_steps reached",
            Status.STEP_SIZE_UNDERFLOW: "step size underflow (the ODE may be stiff or blow up)",
            Status.NON_FINITE_STATE: "non-finite state (NaN/inf; the solution may blow up)",
        }[self]


@dataclass
class SolverStats:
    """Counters of one solve.

    Attributes:
        nfe: number of vector-field evaluations (each evaluates the whole batch).
        num_steps: (B,) long, attempted steps per row.
        num_accepted: (B,) long, accepted steps per row.
        num_rejected: (B,) long, rejected steps per row.
        status: (B,) long, a :class:`Status` code per row.
        nfe_backward: evaluations of the adjoint backward pass (vector field + its vector-Jacobian
            product), filled in when gradients are computed with ``adjoint=True``.
        next_step: (B,) the step size the controller proposes after the last accepted step
            (time units, positive) -- pass it as ``first_step`` to a follow-on solve to skip
            the initial-step heuristic; None for fixed-step methods.
    """

    nfe: int
    num_steps: Tensor
    num_accepted: Tensor
    num_rejected: Tensor
    status: Tensor
    nfe_backward: int = 0
    next_step: Tensor | None = None

    @property
    def success(self) -> bool:
        return bool((self.status == Status.SUCCESS).all())


@dataclass
class Solution:
    """Trajectory ``ys`` (B, n, D) at the requested times ``ts`` (B, n), and solver stats."""

    ys: Tensor
    ts: Tensor
    stats: SolverStats


class SolverError(RuntimeError):
    """A solve failed for some batch rows; the message names the rows, their times and why."""

    def __init__(
        self,
        message: str,
        status: Tensor | None = None,
        reason: Status | None = None,
        evaluations: int = 0,
    ):
        super().__init__(message)
        self.status = status
        # Set by the adjoint backward solve (no per-row status there): why, and the evaluations
        # spent before failing (counted in nfe_backward when the failure is recovered from).
        self.reason = reason
        self.evaluations = evaluations


def failure_message(status: Tensor, t: Tensor, t_end: Tensor, method: str, max_rows: int = 8) -> str:
    """Human-readable description of every failed row: index, reason, time reached, end time."""
    failed = torch.nonzero(status != Status.SUCCESS).flatten().tolist()
    parts = []
    for row in failed[:max_rows]:
        parts.append(
            f"row {row}: {Status(int(status[row])).describe()} at t={float(t[row]):.6g}"
            f" (integrating to t={float(t_end[row]):.6g})"
        )
    more = f" ... and {len(failed) - max_rows} more rows" if len(failed) > max_rows else ""
    return f"ODE solve ({method}) failed for {len(failed)} batch row(s): " + "; ".join(parts) + more
