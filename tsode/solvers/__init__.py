"""Batched ODE solvers with per-sample time grids, dense output and adjoint gradients.

>>> ys = odeint(func, y0, t, method="dopri5", rtol=1e-6, atol=1e-8)   # (B, n, D)

Composed from parts: a Butcher tableau (the step method), a :class:`Controller` (tolerances,
PI coefficients, dt_min/dt_max, jump times, error norm), a gradient strategy
(:class:`Backprop` or :class:`Adjoint`) and the one loop :func:`integrate` they all run in.
"""

from tsode.solvers.api import SolverConfig, odeint
from tsode.solvers.controller import Controller
from tsode.solvers.gradients import Adjoint, Backprop
from tsode.solvers.integrate import StepInfo, integrate
from tsode.solvers.solution import Solution, SolverError, SolverStats, Status
from tsode.solvers.tableaus import ADAPTIVE_METHODS, FIXED_METHODS, TABLEAUS, ButcherTableau

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_METHODS",
    "TABLEAUS",
    "Adjoint",
    "Backprop",
    "ButcherTableau",
    "Controller",
    "Solution",
    "SolverConfig",
    "SolverError",
    "SolverStats",
    "Status",
    "StepInfo",
    "integrate",
    "odeint",
]
