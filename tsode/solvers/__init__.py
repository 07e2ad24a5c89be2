"""Batched ODE solvers with per-sample time grids, dense output and adjoint gradients.

>>> ys = odeint(func, y0, t, method="dopri5", rtol=1e-6, atol=1e-8)   # (B, n, D)
"""

from tsode.solvers.api import SolverConfig, odeint
from tsode.solvers.solution import Solution, SolverError, SolverStats, Status
from tsode.solvers.tableaus import ADAPTIVE_METHODS, FIXED_METHODS, TABLEAUS, ButcherTableau

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_METHODS",
    "TABLEAUS",
    "ButcherTableau",
    "Solution",
    "SolverConfig",
    "SolverError",
    "SolverStats",
    "Status",
    "odeint",
]
