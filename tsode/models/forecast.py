"""What every model's ``forecast(batch, times)`` returns: :class:`Forecast`.

A forecast at ``M`` query times of ``B`` series with ``C`` channels, in **normalized units**
(the data module's z-scores; :class:`tsode.data.Normalizer` maps values back). It always has a
``mean (B, M, C)``; a probabilistic model adds its predictive distribution in one or more of
these forms:

* ``std (B, M, C)``: a Gaussian ``N(mean, std^2)`` per entry (models with a
  :class:`~tsode.models.predictive.GaussianHead`);
* ``mixture_means`` / ``mixture_stds (K, B, M, C)``: an equal-weight mixture of K Gaussians
  (latent ODE: one per sampled trajectory); its quantiles are exact (bisection on the mixture
  CDF), not sample quantiles;
* ``samples (K, B, M, C)``: draws from the predictive distribution;
* ``quantile_values (Q, B, M, C)`` at ``quantile_levels`` (Q levels): fixed quantiles.

:meth:`Forecast.quantiles` is the one place where quantiles are computed from any of them
(the maths lives in :mod:`tsode.models.predictive`); :meth:`Forecast.scores` scores the
distribution (interval coverage, CRPS) at observed targets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tsode.models.predictive import (
    COVERAGE_LEVELS,
    gaussian_crps,
    mixture_cdf,
    mixture_quantiles,
    sample_crps,
)

_TENSOR_FIELDS = ("mean", "std", "samples", "mixture_means", "mixture_stds", "quantile_values")


@dataclass(frozen=True)
class Forecast:
    """A model's forecast at query times ``(B, M)`` (normalized units throughout).

    Attributes:
        mean: ``(B, M, C)`` predicted mean.
        std: ``(B, M, C)`` std of a Gaussian predictive distribution, or None.
        samples: ``(K, B, M, C)`` draws from the predictive distribution, or None.
        mixture_means: ``(K, B, M, C)`` component means of an equal-weight Gaussian mixture
            (latent ODE: each sampled trajectory's decoded mean), or None.
        mixture_stds: ``(K, B, M, C)`` the components' stds (given with ``mixture_means``).
        quantile_values: ``(Q, B, M, C)`` fixed quantiles at ``quantile_levels``, or None.
        quantile_levels: the levels a model reports by default (Q floats in [0, 1]): those of
            ``quantile_values`` when given (then the only levels there are), else the levels
            :meth:`quantiles` uses when called without any (latent ODE: its
            ``quantile_levels``).
        extras: model-specific outputs, e.g. the latent ODE's ``obs_std (C,)`` and, with
            ``poisson``, ``intensity (B, M, C)`` (expected observations per hour).
    """

    mean: Tensor
    std: Tensor | None = None
    samples: Tensor | None = None
    mixture_means: Tensor | None = None
    mixture_stds: Tensor | None = None
    quantile_values: Tensor | None = None
    quantile_levels: tuple[float, ...] | None = None
    extras: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.mixture_means is None) != (self.mixture_stds is None):
            raise ValueError("Forecast: give mixture_means and mixture_stds together")
        if self.quantile_levels is not None:
            levels = tuple(float(q) for q in self.quantile_levels)
            if not all(0.0 <= q <= 1.0 for q in levels):
                raise ValueError(f"Forecast: quantile_levels must lie in [0, 1], got {list(levels)}")
            object.__setattr__(self, "quantile_levels", levels)
        if self.quantile_values is not None and (
            self.quantile_levels is None or len(self.quantile_levels) != self.quantile_values.shape[0]
        ):
            raise ValueError("Forecast: quantile_values (Q, B, M, C) need Q quantile_levels")

    # ------------------------------------------------------------------ what it carries
    @property
    def is_probabilistic(self) -> bool:
        """Whether the forecast carries a predictive distribution (not just a mean)."""
        return (self.std is not None or self.samples is not None or self.mixture_means is not None
                or self.quantile_values is not None)

    def has_quantiles(self, levels: Sequence[float]) -> bool:
        """Whether :meth:`quantiles` can give ``levels``: any levels from a std, a mixture or
        samples; with fixed quantiles only, the levels they are at."""
        if self.std is not None or self.mixture_means is not None or self.samples is not None:
            return True
        if self.quantile_values is None:
            return False
        return not _missing(self.quantile_levels or (), levels)

    # ------------------------------------------------------------------ quantiles and scores
    def quantiles(self, levels: Sequence[float] | None = None) -> Tensor:
        """Quantiles ``(Q, B, M, C)`` of the predictive distribution at ``levels`` (default:
        :attr:`quantile_levels`), in the mean's dtype: from the std (Gaussian), else the
        mixture (exact), else the samples (``torch.quantile``), else the fixed quantiles.

        Raises:
            ValueError: the forecast is deterministic (check :attr:`is_probabilistic` first),
                or it has fixed quantiles only and not at the requested levels.
        """
        if levels is None:
            if self.quantile_levels is None:
                raise ValueError("Forecast.quantiles: give the levels (the forecast has no default ones)")
            levels = self.quantile_levels
        mean = self.mean
        lv = torch.as_tensor([float(q) for q in levels], dtype=mean.dtype, device=mean.device)
        if self.std is not None:
            z = torch.distributions.Normal(0.0, 1.0).icdf(lv).view(-1, *([1] * mean.dim()))
            return mean.unsqueeze(0) + z * self.std.to(mean.dtype).unsqueeze(0)
        if self.mixture_means is not None and self.mixture_stds is not None:
            return mixture_quantiles(self.mixture_means.to(mean.dtype), self.mixture_stds.to(mean.dtype), lv)
        if self.samples is not None:
            return torch.quantile(self.samples.to(mean.dtype), lv, dim=0)
        if self.quantile_values is not None:
            have = [round(q, 6) for q in self.quantile_levels or ()]
            missing = _missing(have, levels)
            if missing:
                raise ValueError(f"the model reports quantiles {have}, not {missing}")
            return torch.stack([self.quantile_values[have.index(round(float(q), 6))] for q in levels])
        raise ValueError(
            "the model is deterministic (its forecast has only a mean: no std, samples, mixture "
            "or quantiles): ask for the mean only"
        )

    def scores(self, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Per-entry scores ``(B, M, C)`` (float64) of the predictive distribution at ``target
        (B, M, C)``: ``coverage80`` / ``coverage90`` (1.0 inside the central interval, else 0.0;
        from the mixture CDF at the target when there is a mixture) and, with a std or samples,
        ``crps`` (normalized units). Entries where ``mask`` is False are scored against the mean
        (and should be ignored). Needs :attr:`is_probabilistic`."""
        out = self.detach().to(torch.float64)
        y = torch.where(mask, target.to(torch.float64), out.mean)
        bounds = [(0.5 - p / 2.0, 0.5 + p / 2.0) for p in COVERAGE_LEVELS]
        scores: dict[str, Tensor] = {}
        if out.mixture_means is not None and out.mixture_stds is not None:
            # inside the central p interval <=> the predictive CDF at y lies in [(1-p)/2, (1+p)/2]
            pit = mixture_cdf(out.mixture_means, out.mixture_stds, y)
            for p, (lo, hi) in zip(COVERAGE_LEVELS, bounds):
                scores[f"coverage{round(100 * p)}"] = ((pit >= lo) & (pit <= hi)).to(torch.float64)
        else:
            qs = out.quantiles([q for pair in bounds for q in pair])
            for i, p in enumerate(COVERAGE_LEVELS):
                inside = (y >= qs[2 * i]) & (y <= qs[2 * i + 1])
                scores[f"coverage{round(100 * p)}"] = inside.to(torch.float64)
        if out.std is not None:
            scores["crps"] = gaussian_crps(out.mean, out.std, y)
        elif out.samples is not None:
            scores["crps"] = sample_crps(out.samples, y)
        return scores

    # ------------------------------------------------------------------ tensor plumbing
    def map(self, fn: Callable[[Tensor], Tensor]) -> Forecast:
        """A forecast with ``fn`` applied to every tensor (fields and extras)."""
        changes: dict[str, Any] = {
            name: fn(value) for name in _TENSOR_FIELDS if (value := getattr(self, name)) is not None
        }
        changes["extras"] = {name: fn(value) for name, value in self.extras.items()}
        return dataclasses.replace(self, **changes)

    def detach(self) -> Forecast:
        """The forecast with every tensor detached from the autograd graph."""
        return self.map(Tensor.detach)

    def to(self, *args: Any, **kwargs: Any) -> Forecast:
        """``Tensor.to(*args, **kwargs)`` on every tensor (device and/or dtype); Lightning's
        ``move_data_to_device`` moves a ``predict_step`` forecast through it."""
        return self.map(lambda t: t.to(*args, **kwargs))


def _missing(have: Sequence[float], levels: Sequence[float]) -> list[float]:
    """The ``levels`` not among ``have`` (to 6 decimals)."""
    rounded = {round(float(q), 6) for q in have}
    return [q for q in levels if round(float(q), 6) not in rounded]
