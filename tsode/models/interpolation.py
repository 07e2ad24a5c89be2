"""Continuous paths X(t) through irregular, partially observed series (for the Neural CDE).

Two pieces:

* :func:`path_coefficients` -- a pure function from a padded batch
  (``times (B, L)`` hours, ``values (B, L, C)``, ``mask (B, L, C)`` bool, ``lengths (B,)``) to
  :class:`PathCoefficients`: one cubic polynomial per interval between consecutive knots,
  ``X(t) = a + b s + c s^2 + d s^3`` with ``s = t - t_i`` hours, for every path channel.
  The coefficients depend on the data only, so they can be computed once and cached.
* :class:`InterpolatedPath` -- wraps coefficients; ``evaluate(t)`` and ``derivative(t)`` at
  per-sample times ``t (B,)`` (each row its own time) or ``(B, M)``, found per row with
  ``searchsorted`` so every series keeps its own knots.

Path channels, in order (``D = path_num_channels(C, ...)``):

    [time]                      X_0(t) = t, so the path is strictly increasing in one channel
    values (C)                  missing entries filled per channel (see ``fill``)
    [cumulative counts (C)]     number of observations of channel c at knots <= t
                                (observational intensity: makes missingness informative)

Interpolation methods:

* ``"linear"``: piecewise linear (continuous, derivative jumps at knots).
* ``"hermite"``: Hermite cubic with backward differences (Morrill et al. 2021). On interval
  ``[t_i, t_{i+1}]`` the end slopes are the secant slopes of intervals ``i-1`` and ``i``, so
  the path is C1 and ``X`` up to ``t_{i+1}`` depends only on data up to ``t_{i+1}`` (causal).
  The recommended default.
* ``"natural"``: natural cubic spline (C2, zero second derivative at both ends); each interval
  depends on the whole series (not causal).

Padding: knots at positions ``>= lengths[b]`` repeat the row's last real knot (same time, same
path value), so padded intervals have zero width and are never evaluated: interval indices
are clamped to ``[0, lengths[b] - 2]`` and times outside ``[t_0, t_{n-1}]`` extrapolate the
first/last real polynomial. Padded or masked-out values never influence anything.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

PathMethod = Literal["linear", "hermite", "natural"]
FillMethod = Literal["ffill", "linear"]

PATH_METHODS: tuple[str, ...] = ("linear", "hermite", "natural")
FILL_METHODS: tuple[str, ...] = ("ffill", "linear")


@dataclass
class PathCoefficients:
    """Piecewise-cubic coefficients of a batch of paths (tensors only: cacheable).

    Attributes:
        times: (B, L) knot times in hours; padded tail repeats each row's last real time.
        lengths: (B,) long, number of real knots per row (>= 1).
        a, b, c, d: (B, L-1, D) coefficients of ``a + b s + c s^2 + d s^3``, ``s = t - t_i``,
            on interval ``[t_i, t_{i+1}]`` (units: path units per hour^k).
    """

    times: Tensor
    lengths: Tensor
    a: Tensor
    b: Tensor
    c: Tensor
    d: Tensor

    def to(self, *args, **kwargs) -> PathCoefficients:
        """Like ``Tensor.to`` for every float field (``lengths`` only changes device)."""
        moved = {}
        for f in fields(self):
            x = getattr(self, f.name)
            if x.is_floating_point():
                moved[f.name] = x.to(*args, **kwargs)
            else:
                moved[f.name] = x.to(device=_device_of(args, kwargs, x.device))
        return PathCoefficients(**moved)

    @property
    def num_channels(self) -> int:
        return self.a.shape[-1]


def _device_of(args: tuple, kwargs: dict, default: torch.device) -> torch.device:
    if "device" in kwargs:
        return torch.device(kwargs["device"])
    for arg in args:
        if isinstance(arg, (str, torch.device)):
            return torch.device(arg)
        if isinstance(arg, Tensor):
            return arg.device
    return default


def path_num_channels(
    num_channels: int, include_time: bool = True, include_counts: bool | str = True
) -> int:
    """Number of path channels D for C data channels."""
    return int(include_time) + num_channels + (num_channels if include_counts else 0)


# ----------------------------------------------------------------------------- validation


def _validate(times: Tensor, values: Tensor, mask: Tensor, lengths: Tensor) -> None:
    if times.dim() != 2:
        raise ValueError(f"path_coefficients: times must be (B, L), got shape {tuple(times.shape)}")
    batch, steps = times.shape
    if values.dim() != 3 or values.shape[:2] != (batch, steps):
        raise ValueError(
            f"path_coefficients: values must be (B, L, C) = ({batch}, {steps}, C), "
            f"got shape {tuple(values.shape)}"
        )
    if mask.shape != values.shape:
        raise ValueError(
            f"path_coefficients: mask shape {tuple(mask.shape)} != values shape "
            f"{tuple(values.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"path_coefficients: mask must be bool, got {mask.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(
            f"path_coefficients: lengths must be (B,) = ({batch},), got {tuple(lengths.shape)}"
        )
    if steps == 0 or bool((lengths < 1).any()) or bool((lengths > steps).any()):
        bad = torch.nonzero((lengths < 1) | (lengths > steps)).flatten().tolist()
        raise ValueError(
            f"path_coefficients: every series needs 1 <= length <= L={steps}; "
            f"bad rows {bad[:10]} with lengths {lengths[bad[:10]].tolist()}"
        )
    real = torch.arange(steps, device=times.device).unsqueeze(0) < lengths.unsqueeze(1)
    nonfinite = real & ~torch.isfinite(times)
    if bool(nonfinite.any()):
        row, col = torch.nonzero(nonfinite)[0].tolist()
        raise ValueError(f"path_coefficients: non-finite time at row {row}, position {col}")
    if steps > 1:
        real_interval = real[:, 1:]
        bad = real_interval & (times[:, 1:] <= times[:, :-1])
        if bool(bad.any()):
            row, col = torch.nonzero(bad)[0].tolist()
            raise ValueError(
                "path_coefficients: times must be strictly increasing within each series; "
                f"row {row} has t[{col}]={times[row, col].item()} >= "
                f"t[{col + 1}]={times[row, col + 1].item()}"
            )


# ----------------------------------------------------------------------------- filling


def fill_missing(times: Tensor, values: Tensor, mask: Tensor, fill: FillMethod = "ffill") -> Tensor:
    """Fill unobserved entries per channel, vectorized over batch, time and channel.

    Args:
        times: (B, L) hours.
        values: (B, L, C); entries where ``mask`` is False are ignored.
        mask: (B, L, C) bool.
        fill: ``"ffill"`` -- last observation carried forward, 0 (the normalized mean) before a
            channel's first observation (causal); ``"linear"`` -- linear in time between the
            neighbouring observations, first/last observation held constant outside them.
            A channel never observed in a row is 0 throughout.

    Returns:
        (B, L, C) filled values (observed entries unchanged).
    """
    if fill not in FILL_METHODS:
        raise ValueError(f"fill must be one of {FILL_METHODS}, got {fill!r}")
    batch, steps, chans = values.shape
    values = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    index = torch.arange(steps, device=values.device).view(1, steps, 1).expand(batch, steps, chans)
    prev_index = torch.where(mask, index, torch.full_like(index, -1)).cummax(dim=1).values
    has_prev = prev_index >= 0
    prev_value = values.gather(1, prev_index.clamp(min=0))
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    if fill == "ffill":
        return torch.where(has_prev, prev_value, zero)

    next_index = (
        torch.where(mask, index, torch.full_like(index, steps)).flip(1).cummin(dim=1).values.flip(1)
    )
    has_next = next_index < steps
    next_value = values.gather(1, next_index.clamp(max=steps - 1))
    t = times.unsqueeze(-1).expand(batch, steps, chans)
    t_prev = t.gather(1, prev_index.clamp(min=0))
    t_next = t.gather(1, next_index.clamp(max=steps - 1))
    span = t_next - t_prev
    positive = span > 0
    weight = torch.where(positive, (t - t_prev) / torch.where(positive, span, 1.0), zero)
    between = prev_value + weight * (next_value - prev_value)
    return torch.where(
        has_prev & has_next,
        between,
        torch.where(has_prev, prev_value, torch.where(has_next, next_value, zero)),
    )


def knot_values(
    times: Tensor,
    values: Tensor,
    mask: Tensor,
    lengths: Tensor,
    *,
    fill: FillMethod = "ffill",
    include_time: bool = True,
    include_counts: bool | str = True,
) -> tuple[Tensor, Tensor]:
    """Path values at the knots, with padding made inert.

    Returns:
        times: (B, L) with the padded tail set to each row's last real time.
        x: (B, L, D) path channels ``[time, filled values, cumulative counts]`` at the knots;
            padded knots repeat the last real knot.
    """
    steps = times.shape[1]
    real = torch.arange(steps, device=times.device).unsqueeze(0) < lengths.unsqueeze(1)
    last = (lengths - 1).clamp(min=0).unsqueeze(1)
    times = torch.where(real, times, times.gather(1, last))
    mask = mask & real.unsqueeze(-1)
    parts = []
    if include_time:
        parts.append(times.unsqueeze(-1).to(values.dtype))
    parts.append(fill_missing(times, values, mask, fill))
    if include_counts:
        counts = mask.to(values.dtype).cumsum(dim=1)
        parts.append(torch.log1p(counts) if include_counts == "log" else counts)
    x = torch.cat(parts, dim=-1)
    # Padded knots carry no observation, so they already repeat the last real knot for every
    # fill rule; enforce it anyway so no rule can leak padding into the path.
    last_x = x.gather(1, last.unsqueeze(-1).expand(-1, 1, x.shape[-1]))
    x = torch.where(real.unsqueeze(-1), x, last_x)
    return times, x


# ----------------------------------------------------------------------------- coefficients


def _secant_slopes(dt: Tensor, dx: Tensor) -> Tensor:
    """dx / dt per interval, 0 on zero-width (padded) intervals. dt (B, L-1), dx (B, L-1, D)."""
    positive = (dt > 0).unsqueeze(-1)
    safe_dt = torch.where(dt > 0, dt, torch.ones_like(dt)).unsqueeze(-1)
    return torch.where(positive, dx / safe_dt, torch.zeros_like(dx))


def _hermite_backward(dt: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx = x[:, 1:] - x[:, :-1]
    slope = _secant_slopes(dt, dx)  # (B, L-1, D)
    start_slope = torch.cat([slope[:, :1], slope[:, :-1]], dim=1)  # slope of previous interval
    end_slope = slope
    positive = (dt > 0).unsqueeze(-1)
    h = torch.where(dt > 0, dt, torch.ones_like(dt)).unsqueeze(-1)
    # Cubic Hermite on [0, h] with values x0, x1 and slopes m0, m1.
    c = (3 * slope - 2 * start_slope - end_slope) / h
    d = (start_slope + end_slope - 2 * slope) / (h * h)
    zero = torch.zeros_like(c)
    return (
        x[:, :-1],
        torch.where(positive, start_slope, zero),
        torch.where(positive, c, zero),
        (torch.where(positive, d, zero)),
    )


def _natural_second_derivatives(dt: Tensor, x: Tensor, lengths: Tensor) -> Tensor:
    """Second derivatives M (B, L, D) of the natural cubic spline, per row over its real knots.

    Solves the tridiagonal system with the Thomas algorithm (a loop over L, vectorized over
    batch and channels). Rows ``i = 0`` and ``i >= n - 1`` are ``M_i = 0`` (natural ends and
    padding), so padded knots are decoupled from the real ones.
    """
    batch, steps, dim = x.shape
    slope = _secant_slopes(dt, x[:, 1:] - x[:, :-1])  # (B, L-1, D)
    idx = torch.arange(steps, device=x.device).unsqueeze(0)
    interior = (idx >= 1) & (idx <= (lengths - 2).unsqueeze(1))  # (B, L)
    zeros_col = torch.zeros(batch, 1, dtype=dt.dtype, device=dt.device)
    h_left = torch.cat([zeros_col, dt], dim=1)  # h_{i-1}
    h_right = torch.cat([dt, zeros_col], dim=1)  # h_i
    sub = torch.where(interior, h_left, torch.zeros_like(h_left))
    sup = torch.where(interior, h_right, torch.zeros_like(h_right))
    diag = torch.where(interior, 2 * (h_left + h_right), torch.ones_like(h_left))
    zeros_row = torch.zeros(batch, 1, dim, dtype=x.dtype, device=x.device)
    slope_left = torch.cat([zeros_row, slope], dim=1)
    slope_right = torch.cat([slope, zeros_row], dim=1)
    rhs = torch.where(interior.unsqueeze(-1), 6 * (slope_right - slope_left), torch.zeros_like(x))

    c_prime = []
    d_prime = []
    c_prev = torch.zeros(batch, dtype=x.dtype, device=x.device)
    d_prev = torch.zeros(batch, dim, dtype=x.dtype, device=x.device)
    for i in range(steps):
        denom = diag[:, i] - sub[:, i] * c_prev
        c_prev = sup[:, i] / denom
        d_prev = (rhs[:, i] - sub[:, i].unsqueeze(-1) * d_prev) / denom.unsqueeze(-1)
        c_prime.append(c_prev)
        d_prime.append(d_prev)
    second = [d_prime[-1]]
    for i in range(steps - 2, -1, -1):
        second.append(d_prime[i] - c_prime[i].unsqueeze(-1) * second[-1])
    return torch.stack(second[::-1], dim=1)


def _natural_cubic(dt: Tensor, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    m = _natural_second_derivatives(dt, x, lengths)
    slope = _secant_slopes(dt, x[:, 1:] - x[:, :-1])
    positive = (dt > 0).unsqueeze(-1)
    h = torch.where(dt > 0, dt, torch.ones_like(dt)).unsqueeze(-1)
    m0, m1 = m[:, :-1], m[:, 1:]
    zero = torch.zeros_like(slope)
    b = torch.where(positive, slope - h * (2 * m0 + m1) / 6, zero)
    c = torch.where(positive, m0 / 2, zero)
    d = torch.where(positive, (m1 - m0) / (6 * h), zero)
    return x[:, :-1], b, c, d


def path_coefficients(
    times: Tensor,
    values: Tensor,
    mask: Tensor,
    lengths: Tensor,
    *,
    method: PathMethod = "hermite",
    fill: FillMethod = "ffill",
    include_time: bool = True,
    include_counts: bool | str = True,
) -> PathCoefficients:
    """Interpolation coefficients of the path through a padded irregular batch.

    Args:
        times: (B, L) float hours, strictly increasing over each row's real points.
        values: (B, L, C) float; entries with ``mask`` False are ignored.
        mask: (B, L, C) bool, True where observed.
        lengths: (B,) long, real time points per row (>= 1).
        method: ``"hermite"`` (default, causal, C1), ``"linear"`` or ``"natural"``.
        fill: how unobserved entries are filled before interpolating (see :func:`fill_missing`).
        include_time: add time itself as path channel 0.
        include_counts: add cumulative per-channel observation counts as the last C channels
            (``"log"``: ``log1p`` of the counts, whose total variation grows with the log of
            the number of observations instead of linearly).

    Returns:
        :class:`PathCoefficients` with ``D = path_num_channels(C, include_time, include_counts)``.
    """
    if method not in PATH_METHODS:
        raise ValueError(f"method must be one of {PATH_METHODS}, got {method!r}")
    if not values.is_floating_point():
        raise ValueError(f"path_coefficients: values must be floating point, got {values.dtype}")
    _validate(times, values, mask, lengths)
    times = times.to(values.dtype)
    lengths = lengths.to(torch.long)
    if times.shape[1] == 1:  # one knot: a constant path on a zero-width interval
        times = torch.cat([times, times], dim=1)
        values = torch.cat([values, values], dim=1)
        mask = torch.cat([mask, torch.zeros_like(mask)], dim=1)
    times, x = knot_values(
        times,
        values,
        mask,
        lengths,
        fill=fill,
        include_time=include_time,
        include_counts=include_counts,
    )
    dt = times[:, 1:] - times[:, :-1]
    if method == "linear":
        a = x[:, :-1]
        b = _secant_slopes(dt, x[:, 1:] - x[:, :-1])
        c = torch.zeros_like(a)
        d = torch.zeros_like(a)
    elif method == "hermite":
        a, b, c, d = _hermite_backward(dt, x)
    else:
        a, b, c, d = _natural_cubic(dt, x, lengths)
    return PathCoefficients(times=times, lengths=lengths, a=a, b=b, c=c, d=d)


# ----------------------------------------------------------------------------- evaluation


class InterpolatedPath:
    """A batch of continuous paths X(t), one per series, each on its own knots.

    ``t`` arguments are per-sample: ``(B,)`` (one time per row, e.g. the solver's current time)
    or ``(B, M)``. Returns ``(B, D)`` or ``(B, M, D)`` respectively.
    """

    def __init__(self, coefficients: PathCoefficients) -> None:
        self.coefficients = coefficients
        co = coefficients
        self._knots = co.times.contiguous()
        self._max_interval = (co.lengths - 2).clamp(min=0).unsqueeze(1)  # (B, 1)
        # Stacked so each evaluation is a single gather.
        self._value_coeffs = torch.cat([co.a, co.b, co.c, co.d], dim=-1)
        self._derivative_coeffs = torch.cat([co.b, 2 * co.c, 3 * co.d], dim=-1)

    @classmethod
    def from_data(
        cls,
        times: Tensor,
        values: Tensor,
        mask: Tensor,
        lengths: Tensor,
        **kwargs,
    ) -> InterpolatedPath:
        """Shortcut for ``InterpolatedPath(path_coefficients(...))``."""
        return cls(path_coefficients(times, values, mask, lengths, **kwargs))

    @property
    def num_channels(self) -> int:
        """D, the number of path channels."""
        return self.coefficients.num_channels

    @property
    def grid_points(self) -> Tensor:
        """(B, L) knot times per row (padded tail repeats the last real time); a solver grid."""
        return self.coefficients.times

    @property
    def interval(self) -> Tensor:
        """(B, 2) ``[first knot, last real knot]`` time per row, hours."""
        co = self.coefficients
        end = co.times.gather(1, (co.lengths - 1).unsqueeze(1))
        return torch.cat([co.times[:, :1], end], dim=1)

    def _locate(self, t: Tensor) -> tuple[Tensor, Tensor, bool]:
        squeeze = t.dim() == 1
        if squeeze:
            t = t.unsqueeze(1)
        if t.dim() != 2 or t.shape[0] != self._knots.shape[0]:
            raise ValueError(
                f"InterpolatedPath: t must be (B,) or (B, M) with B={self._knots.shape[0]}, "
                f"got shape {tuple(t.shape)}"
            )
        t = t.to(self._knots.dtype)
        index = torch.searchsorted(self._knots, t.detach().contiguous(), right=True) - 1
        index = torch.minimum(index.clamp(min=0), self._max_interval)
        s = t - self._knots.gather(1, index)
        return index, s, squeeze

    def _gather(self, coeff: Tensor, index: Tensor) -> Tensor:
        return coeff.gather(1, index.unsqueeze(-1).expand(-1, -1, coeff.shape[-1]))

    def evaluate(self, t: Tensor) -> Tensor:
        """X(t): (B, D) for t (B,), or (B, M, D) for t (B, M)."""
        index, s, squeeze = self._locate(t)
        s = s.unsqueeze(-1)
        a, b, c, d = self._gather(self._value_coeffs, index).chunk(4, dim=-1)
        out = a + s * (b + s * (c + s * d))
        return out.squeeze(1) if squeeze else out

    def locate(self, t: Tensor) -> Tensor:
        """Interval index per row for per-sample times ``t (B,)`` -> ``(B,)`` long.

        The interval ``[t_i, t_{i+1})`` holding ``t`` (a knot starts its interval), clamped to the
        row's real intervals as in :meth:`evaluate`.
        """
        if t.dim() != 1:
            raise ValueError(f"InterpolatedPath.locate: t must be (B,), got shape {tuple(t.shape)}")
        return self._locate(t)[0].squeeze(1)

    def derivative(self, t: Tensor, interval: Tensor | None = None) -> Tensor:
        """dX/dt (per hour): (B, D) for t (B,), or (B, M, D) for t (B, M).

        At a knot the derivative of the interval starting there is used (right derivative);
        this only matters for ``"linear"`` paths, the cubic ones are C1. ``interval (B,)`` long
        (only with ``t (B,)``): use the polynomial of that interval of each row instead of
        locating ``t`` -- e.g. the interval a solve runs over, so that a step ending on a knot
        takes the left derivative there (see :meth:`locate`).
        """
        if interval is not None:
            if t.dim() != 1 or interval.shape != t.shape:
                raise ValueError(
                    "InterpolatedPath.derivative: interval needs t (B,) and interval (B,), got "
                    f"{tuple(t.shape)} and {tuple(interval.shape)}"
                )
            index = torch.minimum(interval.clamp(min=0), self._max_interval.squeeze(1)).unsqueeze(1)
            s = t.to(self._knots.dtype).unsqueeze(1) - self._knots.gather(1, index)
            b, c2, d3 = self._gather(self._derivative_coeffs, index).chunk(3, dim=-1)
            s = s.unsqueeze(-1)
            return (b + s * (c2 + s * d3)).squeeze(1)
        index, s, squeeze = self._locate(t)
        s = s.unsqueeze(-1)
        b, c2, d3 = self._gather(self._derivative_coeffs, index).chunk(3, dim=-1)
        out = b + s * (c2 + s * d3)
        return out.squeeze(1) if squeeze else out
