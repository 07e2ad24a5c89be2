"""One explicit Runge-Kutta step on a batch, error norms and dense-output evaluation.

Used by the one integration loop (:mod:`tsode.solvers.integrate`). Step sizes are per row:
``h`` has shape (B,) (signed: negative when integrating backwards in time).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tsode.solvers.tableaus import ButcherTableau

VectorField = Callable[[Tensor, Tensor], Tensor]


def rk_step(
    func: VectorField,
    tableau: ButcherTableau,
    t: Tensor,
    h: Tensor,
    y: Tensor,
    k1: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, list[Tensor], int]:
    """Take one RK step of size ``h`` (B,) from ``(t, y)`` ((B,), (B, D)).

    ``k1 = func(t, y)`` may be passed in (first-same-as-last reuse). Returns the new state
    (B, D), the embedded error estimate (B, D) or None, the stage derivatives and the number
    of vector-field evaluations made.
    """
    h_col = h.unsqueeze(-1).to(y.dtype)
    t_state = t.to(y.dtype)
    h_state = h.to(y.dtype)
    nfe = 0
    if k1 is None:
        k1 = check_field_output(func(t_state, y), y)
        nfe += 1
    stages = [k1]
    for i in range(1, tableau.num_stages):
        increment = _combine(tableau.a[i][:i], stages)
        y_i = torch.addcmul(y, h_col, increment) if increment is not None else y
        stages.append(func(t_state + tableau.c[i] * h_state, y_i))
        nfe += 1
    # For FSAL tableaus the last stage was evaluated at exactly this new state.
    y_new = torch.addcmul(y, h_col, _combine(tableau.b, stages))
    error = None
    if tableau.b_error is not None:
        error = h_col * _combine(tableau.b_error, stages)
    return y_new, error, stages, nfe


def check_field_output(derivative: Tensor, y: Tensor) -> Tensor:
    """Raise a clear error when the vector field's output does not match the state."""
    if not isinstance(derivative, Tensor) or derivative.shape != y.shape:
        got = tuple(derivative.shape) if isinstance(derivative, Tensor) else type(derivative)
        raise ValueError(
            f"the vector field returned shape {got} for a state of shape {tuple(y.shape)}; "
            f"func(t, y) must return a tensor shaped like y (batch, dim)"
        )
    return derivative


def _combine(weights, stages: list[Tensor]) -> Tensor | None:
    """sum_i weights[i] * stages[i], skipping zero weights."""
    total = None
    for w, k in zip(weights, stages):
        if w == 0.0:
            continue
        total = k * w if total is None else total.add(k, alpha=w)  # fused multiply-add
    return total


def dense_evaluate(
    tableau: ButcherTableau, y0: Tensor, h: Tensor, stages: list[Tensor], theta: Tensor
) -> Tensor:
    """States at ``t + theta * h`` within a step, for several theta per row at once.

    Args:
        y0: (B, D) state at the start of the step; h: (B,) signed step.
        stages: the step's s stage derivatives, each (B, D).
        theta: (B, m) fractions of the step in [0, 1].
    Returns:
        (B, m, D): y0 + h * sum_i w_i(theta) k_i.
    """
    coefficients = _dense_coefficients(tableau, y0.dtype, y0.device)  # (P, s)
    theta = theta.to(y0.dtype)
    powers = [theta]
    for _ in range(1, coefficients.shape[0]):
        powers.append(powers[-1] * theta)
    weights = torch.stack(powers, dim=-1) @ coefficients  # (B, m, s)
    weights = weights * h.to(y0.dtype)[:, None, None]
    out = y0.unsqueeze(1)
    for i, k in enumerate(stages):
        if tableau.dense_uses_stage[i]:
            out = torch.addcmul(out, weights[:, :, i : i + 1], k.unsqueeze(1))
    return out


_COEFFICIENT_CACHE: dict[tuple, Tensor] = {}


def _dense_coefficients(tableau: ButcherTableau, dtype: torch.dtype, device) -> Tensor:
    """The tableau's dense-output polynomial coefficients as a (P, s) tensor, built once per
    (tableau, dtype, device) instead of once per step."""
    key = (tableau.name, id(tableau), dtype, device)
    cached = _COEFFICIENT_CACHE.get(key)
    if cached is None:
        cached = torch.tensor(tableau.dense, dtype=dtype, device=device).T.contiguous()
        _COEFFICIENT_CACHE[key] = cached
    return cached
