"""The step-size controller: how big the next step is, and which times a step must end on.

One :class:`Controller` serves every method. Adaptive (embedded) methods get a PI controller on
the error estimate; fixed-step methods, which have none, split every interval between two stops
into ``ceil(length / dt_max)`` equal steps (one step when ``dt_max`` is None). Stops are the
row's end time, its jump times and, for fixed-step methods, its output times (adaptive methods
serve output times by dense output, so they never force a step to end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tsode.solvers.stepping import VectorField

ErrorNorm = Literal["row", "batch"]
ERROR_NORMS = ("row", "batch")


def steps_per_interval(delta: Tensor, step_size: float | None) -> Tensor:
    """Number of equal steps of at most ``step_size`` for interval lengths ``delta``: 0 for an
    empty interval, 1 when no ``step_size`` is given. The rule every fixed-step solve uses."""
    nonempty = delta != 0
    if step_size is None:
        return nonempty.long()
    # The small relative slack keeps an interval that is an exact multiple of the step from
    # getting an extra step through rounding.
    count = torch.ceil(delta.abs() / step_size * (1 - 1e-12)).long().clamp(min=1)
    return torch.where(nonempty, count, torch.zeros_like(count))


@dataclass
class Controller:
    """Step-size control of one solve.

    Attributes:
        rtol, atol: error tolerances (adaptive methods).
        error_norm: ``"row"`` (default): each row's error is its own RMS norm, so each row takes
            its own steps; ``"batch"``: one RMS norm over the whole batch (the rows still
            moving), so all rows take the same steps.
        dt_min: smallest step the controller may propose (time units); a row whose error control
            asks for less fails with ``STEP_SIZE_UNDERFLOW``. Steps shortened to land on a stop
            may be shorter. None: only the floating-point limit.
        dt_max: largest step (time units). For fixed-step methods, the step size: every interval
            between two stops is split into ``ceil(length / dt_max)`` equal steps (None: one).
        jump_times: (B, K) or (K,) times each row must step to exactly, e.g. the knots of an
            interpolated path where the vector field is not smooth. Every evaluation within a
            step sees a time in ``[previous jump, next jump)``, so a step ending on a jump
            evaluates the field as the limit from the interval it came from, and the next step
            starts on the other side (its first evaluation is not reused from the previous
            step). Times outside a row's span are ignored; a padded tail may repeat a time.
        safety, min_factor, max_factor: step-size factor limits of the PI controller.
        pi_alpha, pi_beta: PI exponents (Söderlind's PI.4.2), divided by (error order + 1).
    """

    rtol: float = 1e-6
    atol: float = 1e-8
    error_norm: ErrorNorm = "row"
    dt_min: float | None = None
    dt_max: float | None = None
    jump_times: Tensor | None = None
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    pi_alpha: float = 0.7
    pi_beta: float = 0.4

    def __post_init__(self) -> None:
        if self.error_norm not in ERROR_NORMS:
            raise ValueError(f"error_norm must be one of {ERROR_NORMS}, got {self.error_norm!r}")
        for name in ("dt_min", "dt_max"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.dt_min is not None and self.dt_max is not None and self.dt_min > self.dt_max:
            raise ValueError(f"dt_min={self.dt_min} is larger than dt_max={self.dt_max}")

    # ----------------------------------------------------------------- error norm
    def error_ratio(
        self, error: Tensor, y0: Tensor, y1: Tensor, active: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Error ratios of a step, (per row (B,), the one that decides (B,)); <= 1 accepts.

        Per row: RMS of error / (atol + rtol * max(|y0|, |y1|)). With ``error_norm="batch"`` the
        deciding ratio is the RMS over the ``active`` rows, the same for every row.
        """
        scale = self.atol + self.rtol * torch.maximum(y0.abs(), y1.abs())
        squares = (error / scale).pow(2).mean(dim=-1)
        row = squares.sqrt()
        if self.error_norm == "row":
            return row, row
        weight = active.to(squares.dtype)
        shared = ((squares * weight).sum() / weight.sum().clamp(min=1)).sqrt()
        return row, shared.expand_as(row)

    # ----------------------------------------------------------------- step sizes
    def factor(self, ratio: Tensor, previous_ratio: Tensor, accepted: Tensor, finite: Tensor,
               error_order: int) -> Tensor:
        """PI controller: factor for the next step size from this and the last accepted error
        ratio. Rejected steps use the plain I-controller and never grow; non-finite steps shrink
        maximally."""
        exponent = 1.0 / (error_order + 1)
        safe_ratio = torch.where(finite, ratio, torch.ones_like(ratio)).clamp(min=1e-10)
        pi = (
            self.safety
            * safe_ratio ** (-self.pi_alpha * exponent)
            * previous_ratio ** (self.pi_beta * exponent)
        )
        i_only = self.safety * safe_ratio ** (-exponent)
        factor = torch.where(
            accepted,
            pi.clamp(self.min_factor, self.max_factor),
            i_only.clamp(self.min_factor, self.safety),
        )
        return torch.where(finite, factor, torch.full_like(factor, self.min_factor))

    def clamp(self, h: Tensor) -> Tensor:
        """A proposed step size (positive, (B,)) within [dt_min, dt_max]."""
        if self.dt_max is not None:
            h = h.clamp(max=self.dt_max)
        if self.dt_min is not None:
            h = h.clamp(min=self.dt_min)
        return h


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
