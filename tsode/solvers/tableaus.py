"""Butcher tableaus as frozen, validated data, with dense-output polynomials.

Every explicit Runge-Kutta method in tsode is a :class:`ButcherTableau`. Construction checks
the tableau's consistency (row sums of ``a`` equal ``c``, weights sum to one, error weights
sum to zero, dense output reproduces the step's end point), so a typo in a coefficient fails
at import time, not as a silently wrong solution.

Dense output: the state at ``t + theta*h`` (``0 <= theta <= 1``) within an accepted step is
``y0 + h * sum_i w_i(theta) k_i`` with ``w_i(theta) = sum_p dense[i, p] * theta**(p+1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction as F
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method.

    Attributes:
        name: method name as accepted by ``odeint(method=...)``.
        order: order of the propagated solution.
        c: (s,) stage times as fractions of the step.
        a: (s, s) strictly lower-triangular stage coefficients.
        b: (s,) solution weights.
        b_error: (s,) weights of the embedded error estimate (``b - b_hat``), or None for
            fixed-step methods.
        error_order: order of the error estimate's leading term minus one (controller exponent
            uses ``1 / (error_order + 1)``).
        fsal: first-same-as-last: the last stage is ``f(t + h, y_next)``.
        dense: (s, P) dense-output polynomial coefficients (see module docstring), or None.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    error_order: int = 0
    fsal: bool = False
    dense: tuple[tuple[float, ...], ...] | None = field(default=None)

    @cached_property
    def dense_uses_stage(self) -> tuple[bool, ...]:
        """Per stage: whether its dense-output polynomial is non-zero (others are skipped)."""
        return tuple(any(c != 0.0 for c in row) for row in (self.dense or ()))

    def __post_init__(self) -> None:
        s = len(self.c)
        a = np.asarray(self.a, dtype=np.float64)
        problems = []
        if a.shape != (s, s) or len(self.b) != s:
            problems.append(f"shapes: c has {s} stages, a is {a.shape}, b has {len(self.b)}")
        else:
            if np.any(np.triu(a) != 0):
                problems.append("a is not strictly lower triangular (method would be implicit)")
            if not np.allclose(a.sum(axis=1), self.c, atol=1e-12):
                problems.append(f"row sums of a {a.sum(axis=1)} differ from c {self.c}")
            if abs(sum(self.b) - 1.0) > 1e-12:
                problems.append(f"weights b sum to {sum(self.b)}, not 1")
            if self.b_error is not None and abs(sum(self.b_error)) > 1e-12:
                problems.append(f"error weights sum to {sum(self.b_error)}, not 0")
            if self.fsal and not (np.allclose(a[-1], self.b, atol=1e-14) and self.c[-1] == 1.0):
                problems.append("fsal=True but the last row of a is not b at c=1")
            if self.dense is not None:
                w1 = np.asarray(self.dense).sum(axis=1)  # w_i(1)
                if not np.allclose(w1, self.b, atol=1e-10):
                    problems.append(f"dense output at theta=1 gives {w1}, not b {self.b}")
        if problems:
            raise ValueError(f"invalid Butcher tableau {self.name!r}: " + "; ".join(problems))

    @property
    def num_stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None


def _f(rows):
    return tuple(tuple(float(x) for x in row) for row in rows)


def _pad_lower(rows: list[list], s: int) -> list[list]:
    """Lower-triangular rows (row i has i entries) -> full (s, s) matrix."""
    return [list(r) + [0] * (s - len(r)) for r in rows]


def _hermite_dense(b: list[float], s: int) -> tuple[tuple[float, ...], ...]:
    """Cubic Hermite dense output from (y0, y1, f0 = k_1, f1 = k_s) for FSAL methods.

    y(θ) = y0 + h Σ w_i(θ) k_i with w_i(θ) = b_i (3θ² − 2θ³) + δ_i1 (θ − 2θ² + θ³) + δ_is (θ³ − θ²).
    """
    dense = np.zeros((s, 3))
    for i in range(s):
        dense[i] += b[i] * np.array([0.0, 3.0, -2.0])
    dense[0] += np.array([1.0, -2.0, 1.0])
    dense[s - 1] += np.array([0.0, -1.0, 1.0])
    return _f(dense)


def _quartic_dense_through_midpoint(b, c_mid, s: int) -> tuple[tuple[float, ...], ...]:
    """Quartic dense output through y0, y1, y(1/2) = y0 + h Σ c_mid_i k_i, f0 = k_1, f1 = k_s.

    Each weight polynomial w_i(θ) = α θ + β θ² + γ θ³ + δ θ⁴ satisfies w_i'(0) = δ_i1,
    w_i(1) = b_i, w_i'(1) = δ_is, w_i(1/2) = c_mid_i.
    """
    dense = np.zeros((s, 4))
    m = np.array([[1.0, 1.0, 1.0], [2.0, 3.0, 4.0], [1 / 4, 1 / 8, 1 / 16]])
    for i in range(s):
        alpha = 1.0 if i == 0 else 0.0
        rhs = np.array(
            [b[i] - alpha, (1.0 if i == s - 1 else 0.0) - alpha, c_mid[i] - alpha / 2]
        )
        dense[i] = [alpha, *np.linalg.solve(m, rhs)]
    return _f(dense)


def _poly_dense(polys: list[np.polynomial.Polynomial]) -> tuple[tuple[float, ...], ...]:
    """Dense coefficients from weight polynomials w_i(θ) (w_i(0) = 0)."""
    degree = max(p.degree() for p in polys)
    dense = np.zeros((len(polys), degree))
    for i, p in enumerate(polys):
        coef = p.coef
        assert abs(coef[0]) < 1e-14
        dense[i, : len(coef) - 1] = coef[1:]
    return _f(dense)


EULER = ButcherTableau(name="euler", order=1, c=(0.0,), a=((0.0,),), b=(1.0,))

MIDPOINT = ButcherTableau(
    name="midpoint", order=2, c=(0.0, 0.5), a=((0.0, 0.0), (0.5, 0.0)), b=(0.0, 1.0)
)

RK4 = ButcherTableau(
    name="rk4",
    order=4,
    c=(0.0, 0.5, 0.5, 1.0),
    a=_f(_pad_lower([[], [F(1, 2)], [0, F(1, 2)], [0, 0, 1]], 4)),
    b=_f([[F(1, 6), F(1, 3), F(1, 3), F(1, 6)]])[0],
)

# Bogacki-Shampine 3(2), FSAL.
_BOSH3_B = [F(2, 9), F(1, 3), F(4, 9), 0]
_BOSH3_B_HAT = [F(7, 24), F(1, 4), F(1, 3), F(1, 8)]
BOSH3 = ButcherTableau(
    name="bosh3",
    order=3,
    c=(0.0, 0.5, 0.75, 1.0),
    a=_f(_pad_lower([[], [F(1, 2)], [0, F(3, 4)], _BOSH3_B[:3]], 4)),
    b=_f([_BOSH3_B])[0],
    b_error=_f([[x - y for x, y in zip(_BOSH3_B, _BOSH3_B_HAT)]])[0],
    error_order=2,
    fsal=True,
    dense=_hermite_dense([float(x) for x in _BOSH3_B], 4),
)

# Dormand-Prince 5(4), FSAL, with Shampine's midpoint for a quartic dense output.
_DOPRI5_B = [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0]
_DOPRI5_B_HAT = [
    F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40)
]
_DOPRI5_C_MID = [
    F(6025192743, 30085553152) / 2,
    0,
    F(51252292925, 65400821598) / 2,
    F(-2691868925, 45128329728) / 2,
    F(187940372067, 1594534317056) / 2,
    F(-1776094331, 19743644256) / 2,
    F(11237099, 235043384) / 2,
]
DOPRI5 = ButcherTableau(
    name="dopri5",
    order=5,
    c=_f([[0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1]])[0],
    a=_f(
        _pad_lower(
            [
                [],
                [F(1, 5)],
                [F(3, 40), F(9, 40)],
                [F(44, 45), F(-56, 15), F(32, 9)],
                [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
                [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
                _DOPRI5_B[:6],
            ],
            7,
        )
    ),
    b=_f([_DOPRI5_B])[0],
    b_error=_f([[x - y for x, y in zip(_DOPRI5_B, _DOPRI5_B_HAT)]])[0],
    error_order=4,
    fsal=True,
    dense=_quartic_dense_through_midpoint(
        [float(x) for x in _DOPRI5_B], [float(x) for x in _DOPRI5_C_MID], 7
    ),
)

# Tsitouras 5(4), FSAL, with its own quartic dense output (Tsitouras 2011).
_TSIT5_B = [
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
]
_TSIT5_B_ERROR = [
    -0.00178001105222577714,
    -0.0008164344596567469,
    0.007880878010261995,
    -0.1447110071732629,
    0.5823571654525552,
    -0.45808210592918697,
    1.0 / 66.0,
]
_P = np.polynomial.Polynomial
_theta = _P([0.0, 1.0])
_TSIT5_DENSE_POLYS = [
    -1.0530884977290216
    * _theta
    * (_theta - 1.3299890189751412)
    * (_theta**2 - 1.4364028541716351 * _theta + 0.7139816917074209),
    0.1017 * _theta**2 * (_theta**2 - 2.1966568338249754 * _theta + 1.2949852507374631),
    2.490627285651252793
    * _theta**2
    * (_theta**2 - 2.38535645472061657 * _theta + 1.57803468208092486),
    -16.54810288924490272
    * (_theta - 1.21712927295533244)
    * (_theta - 0.61620406037800089)
    * _theta**2,
    47.37952196281928122
    * (_theta - 1.203071208372362603)
    * (_theta - 0.658047292653547382)
    * _theta**2,
    -34.87065786149660974 * (_theta - 1.2) * (_theta - 0.666666666666666667) * _theta**2,
    2.5 * (_theta - 1.0) * (_theta - 0.6) * _theta**2,
]
TSIT5 = ButcherTableau(
    name="tsit5",
    order=5,
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=_f(
        _pad_lower(
            [
                [],
                [0.161],
                [-0.008480655492356989, 0.335480655492357],
                [2.897153057105493, -6.359448489975075, 4.3622954328695815],
                [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
                [
                    5.86145544294642,
                    -12.92096931784711,
                    8.159367898576159,
                    -0.071584973281401,
                    -0.028269050394068383,
                ],
                _TSIT5_B[:6],
            ],
            7,
        )
    ),
    b=tuple(_TSIT5_B),
    b_error=tuple(_TSIT5_B_ERROR),
    error_order=4,
    fsal=True,
    dense=_poly_dense(_TSIT5_DENSE_POLYS),
)

TABLEAUS: dict[str, ButcherTableau] = {
    tab.name: tab for tab in (EULER, MIDPOINT, RK4, BOSH3, DOPRI5, TSIT5)
}
FIXED_METHODS = tuple(name for name, tab in TABLEAUS.items() if not tab.adaptive)
ADAPTIVE_METHODS = tuple(name for name, tab in TABLEAUS.items() if tab.adaptive)


def get_tableau(method: str) -> ButcherTableau:
    """Look up a method by name; raises ValueError listing the known methods."""
    try:
        return TABLEAUS[method]
    except KeyError:
        raise ValueError(
            f"unknown ODE method {method!r}; choose one of {sorted(TABLEAUS)}"
        ) from None
