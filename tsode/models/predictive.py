"""Predictive-distribution maths: quantiles, calibration metrics and a Gaussian head.

A :class:`~tsode.models.forecast.Forecast` describes a model's predictive distribution by a
Gaussian ``std``, an equal-weight Gaussian mixture, samples or fixed quantiles (normalized
units). This module holds the maths its :meth:`~tsode.models.forecast.Forecast.quantiles` and
:meth:`~tsode.models.forecast.Forecast.scores` use: the mixture's CDF and exact quantiles
(bisection on the CDF -- with 32 draws the sample 5-95 % interval covers about 85 %, not 90 %,
of the distribution it is drawn from), the Gaussian and sample CRPS; and
:class:`ProbabilisticMetrics`, which accumulates those scores (central-interval coverage and
CRPS) over observed targets, and the :class:`GaussianHead` with its NLL.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

#: central intervals whose empirical coverage is reported (``coverage80``, ``coverage90``)
COVERAGE_LEVELS = (0.8, 0.9)
_SQRT_PI = math.sqrt(math.pi)


def mixture_cdf(means: Tensor, stds: Tensor, x: Tensor) -> Tensor:
    """CDF ``(...)`` at ``x (...)`` of the equal-weight Gaussian mixture ``means``/``stds``
    ``(K, ...)`` (the probability integral transform of ``x``)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    return normal.cdf((x.unsqueeze(0) - means) / stds).mean(0)


def mixture_quantiles(means: Tensor, stds: Tensor, levels: Tensor, iterations: int = 30) -> Tensor:
    """Quantiles ``(Q, ...)`` at ``levels (Q,)`` of the equal-weight Gaussian mixture with
    component ``means``/``stds`` ``(K, ...)``: bisection on the mixture CDF (each step halves a
    bracket that starts at the components' extreme 10-sigma points: 30 steps leave it below
    1e-7 of its width)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    lv = levels.to(means.dtype).view(-1, *([1] * (means.dim() - 1)))  # (Q, 1, ...)
    lo = (means - 10.0 * stds).amin(0).expand(levels.shape[0], *means.shape[1:]).clone()
    hi = (means + 10.0 * stds).amax(0).expand_as(lo).clone()
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        cdf = normal.cdf((mid.unsqueeze(1) - means.unsqueeze(0)) / stds.unsqueeze(0)).mean(1)
        below = cdf < lv
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def gaussian_crps(mean: Tensor, std: Tensor, target: Tensor) -> Tensor:
    """Closed-form CRPS of ``N(mean, std^2)`` at ``target`` (elementwise, same units)."""
    z = (target - mean) / std
    normal = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
    return std * (z * (2.0 * normal.cdf(z) - 1.0) + 2.0 * normal.log_prob(z).exp() - 1.0 / _SQRT_PI)


def sample_crps(samples: Tensor, target: Tensor) -> Tensor:
    """CRPS estimated from samples ``(K, ...)`` at ``target (...)``: ``E|X - y| - E|X - X'|/2``.

    ``E|X - X'|`` over all ordered pairs via sorted samples: ``2/K^2 sum_i (2i - K - 1) x_(i)``.
    """
    k = samples.shape[0]
    spread_to_target = (samples - target.unsqueeze(0)).abs().mean(0)
    ordered = samples.sort(dim=0).values
    weights = (2.0 * torch.arange(1, k + 1, dtype=samples.dtype, device=samples.device) - k - 1)
    pair_spread = 2.0 / (k * k) * (weights.view(-1, *([1] * target.dim())) * ordered).sum(0)
    return spread_to_target - 0.5 * pair_spread


class ProbabilisticMetrics(Metric):
    """Coverage of the central 80 % / 90 % intervals and CRPS over observed target entries.

    ``update(forecast, target, mask)`` takes a probabilistic
    :class:`~tsode.models.forecast.Forecast` at the target times (scored by its ``scores``). CRPS is reported in normalized units and, with
    ``scale`` (C,) (the normalizer stds), in original units (``crps_orig``). Coverage is the
    fraction of observed entries inside the interval (0.8 / 0.9 when calibrated).

    With ``num_channels`` the sums are kept per channel (:meth:`channel_sums`, e.g. for the
    per-channel table of ``Forecaster.evaluate``); :meth:`compute` gives the same overall
    values either way.
    """

    full_state_update = False

    def __init__(self, scale: list[float] | None = None, num_channels: int | None = None) -> None:
        super().__init__()
        self.scale = None if scale is None else torch.as_tensor(scale, dtype=torch.float64)
        self.per_channel = num_channels is not None
        shape = () if num_channels is None else (int(num_channels),)
        self.add_state("count", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("covered", default=torch.zeros((len(COVERAGE_LEVELS), *shape), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("crps_sum", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("crps_orig_sum", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("crps_count", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def _sum(self, values: Tensor) -> Tensor:
        """The sum of ``values (..., C)``: per channel ``(C,)`` or in all (a scalar)."""
        return values.sum(dim=tuple(range(values.dim() - 1))) if self.per_channel else values.sum()

    def update(self, forecast: Any, target: Tensor, mask: Tensor) -> None:  # type: ignore[override]
        scores = forecast.scores(target, mask)
        m = mask.to(torch.float64)
        self.count += self._sum(m)
        for i, p in enumerate(COVERAGE_LEVELS):
            self.covered[i] += self._sum(scores[f"coverage{round(100 * p)}"] * m)
        if "crps" not in scores:
            return  # quantiles only: coverage, no CRPS
        crps = scores["crps"]
        self.crps_count += self._sum(m)
        self.crps_sum += self._sum(crps * m)
        if self.scale is not None:
            self.crps_orig_sum += self._sum(crps * self.scale.to(crps.device) * m)

    def channel_sums(self) -> dict[str, Tensor]:
        """Per-channel ``(C,)`` sums over the observed target entries (divide by ``count``):
        ``coverage80``, ``coverage90`` and, when the forecasts had a CRPS, ``crps`` (original
        units with ``scale``, else normalized). Needs ``num_channels``."""
        if not self.per_channel:
            raise RuntimeError("ProbabilisticMetrics: channel_sums needs num_channels")
        sums = {f"coverage{round(100 * p)}": self.covered[i] for i, p in enumerate(COVERAGE_LEVELS)}
        if bool(self.crps_count.sum() > 0):
            sums["crps"] = self.crps_sum if self.scale is None else self.crps_orig_sum
        return sums

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        count, covered = self.count.sum(), self.covered.reshape(len(COVERAGE_LEVELS), -1).sum(-1)
        crps_count, crps_sum, crps_orig_sum = (
            self.crps_count.sum(), self.crps_sum.sum(), self.crps_orig_sum.sum()
        )
        n = count.clamp_min(1.0)
        result = {f"coverage{round(100 * p)}": (covered[i] / n).float()
                  for i, p in enumerate(COVERAGE_LEVELS)}
        if crps_count > 0:
            result["crps"] = (crps_sum / crps_count).float()
            if self.scale is not None:
                result["crps_orig"] = (crps_orig_sum / crps_count).float()
        return result


class GaussianHead(nn.Module):
    """Predictive std ``(..., C)`` from features ``(..., F)``: ``softplus(Linear(F)) + min_std``.

    Trained by :func:`gaussian_nll` on the residual of a **detached** mean, so adding the head
    never changes what the mean learns; the std learns the size of the model's own errors
    (per channel, per state, per horizon when the features carry the elapsed time).
    """

    def __init__(self, in_dim: int, num_channels: int, init_std: float = 1.0, min_std: float = 1e-3):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_channels)
        self.min_std = min_std
        nn.init.normal_(self.linear.weight, std=0.01)
        with torch.no_grad():  # softplus(b) + min_std = init_std
            self.linear.bias.fill_(math.log(math.expm1(max(init_std - min_std, 1e-6))))

    def forward(self, features: Tensor) -> Tensor:
        return F.softplus(self.linear(features)) + self.min_std


def gaussian_nll(mean: Tensor, std: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over observed entries of ``-log N(target; mean.detach(), std^2)`` (up to a constant).

    The mean is detached: this loss trains the std only.
    """
    z = (target - mean.detach()) / std
    nll = 0.5 * z.square() + torch.log(std)
    return torch.where(mask, nll, torch.zeros_like(nll)).sum() / mask.sum().clamp_min(1)
