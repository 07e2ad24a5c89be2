"""Gradient strategies: how a solve is differentiated.

* :class:`Backprop`: backpropagate through the solver's operations (exact gradients of the
  discrete solution; memory grows with the number of steps).
* :class:`Adjoint`: the continuous adjoint (O(1) memory in the number of steps), its backward
  solve running through the same integration loop (:mod:`tsode.solvers.adjoint`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from tsode.solvers.adjoint import AdjointOptions, adjoint_solve
from tsode.solvers.controller import Controller
from tsode.solvers.solution import Solution
from tsode.solvers.stepping import VectorField
from tsode.solvers.tableaus import ButcherTableau

ForwardSolve = Callable[[Tensor, Tensor], Solution]


@dataclass(frozen=True)
class Backprop:
    """Differentiate by backpropagating through the solver's operations."""

    def solve(
        self, func: VectorField, y0: Tensor, t_eval: Tensor, forward: ForwardSolve, *,
        tableau: ButcherTableau, controller: Controller, max_steps: int,
    ) -> Solution:
        return forward(y0, t_eval)


@dataclass(frozen=True)
class Adjoint:
    """Differentiate with the continuous adjoint.

    Attributes:
        rtol, atol: tolerances of the backward solve (default: the forward controller's).
        params: tensors to differentiate; default: the parameters of ``func`` when it is an
            ``nn.Module``.
    """

    rtol: float | None = None
    atol: float | None = None
    params: tuple[Tensor, ...] | list[Tensor] | None = None

    def solve(
        self, func: VectorField, y0: Tensor, t_eval: Tensor, forward: ForwardSolve, *,
        tableau: ButcherTableau, controller: Controller, max_steps: int,
    ) -> Solution:
        params = self.params
        if params is None:
            params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
        params = tuple(p for p in params if p.requires_grad)
        options = AdjointOptions(
            func=func,
            tableau=tableau,
            forward_solve=forward,
            rtol=controller.rtol if self.rtol is None else self.rtol,
            atol=controller.atol if self.atol is None else self.atol,
            step_size=None if tableau.adaptive else controller.dt_max,
            max_steps=max_steps,
            num_params=len(params),
            segment_ends=controller.jump_times is not None,
        )
        ys = adjoint_solve(func, y0, t_eval, params, options)
        return Solution(ys=ys, ts=t_eval.detach(), stats=options.stats[-1])
