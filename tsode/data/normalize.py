"""Per-channel standardization fitted on the training split only.

``normalized = (value - mean[c]) / std[c]`` per channel ``c``. The fitted statistics travel
with a trained model (``state_dict`` is plain JSON-serializable data) so predictions can be
mapped back to original units with :meth:`Normalizer.inverse`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor


class Normalizer:
    """Per-channel mean/std standardization.

    Args:
        names: channel (or static covariate) names, in array order.
        mean: (C,) per-channel means, original units.
        std: (C,) per-channel standard deviations, original units (strictly positive).
    """

    def __init__(self, names: Sequence[str], mean: Sequence[float], std: Sequence[float]):
        self.names = [str(n) for n in names]
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if not (len(self.names) == self.mean.size == self.std.size):
            raise ValueError(
                f"Normalizer: {len(self.names)} names but {self.mean.size} means and "
                f"{self.std.size} stds"
            )
        bad = [n for n, s in zip(self.names, self.std) if not (np.isfinite(s) and s > 0)]
        if bad:
            raise ValueError(f"Normalizer: std must be finite and > 0; offending channels: {bad}")
        bad = [n for n, m in zip(self.names, self.mean) if not np.isfinite(m)]
        if bad:
            raise ValueError(f"Normalizer: mean must be finite; offending channels: {bad}")

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, values: np.ndarray, names: Sequence[str], min_std: float = 1e-6) -> Normalizer:
        """Fit on ``values`` (N, C) in original units, NaN meaning missing.

        Channels never observed get mean 0 / std 1; constant channels get std 1
        (so they map to 0 and invert exactly).
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(names):
            raise ValueError(
                f"Normalizer.fit: expected values of shape (N, {len(names)}), got {values.shape}"
            )
        observed = ~np.isnan(values)
        counts = observed.sum(axis=0)
        filled = np.where(observed, values, 0.0)
        mean = np.divide(filled.sum(0), counts, out=np.zeros(values.shape[1]), where=counts > 0)
        sq = np.where(observed, (values - mean) ** 2, 0.0).sum(0)
        var = np.divide(sq, counts, out=np.zeros(values.shape[1]), where=counts > 0)
        std = np.sqrt(var)
        std = np.where(std > min_std, std, 1.0)
        return cls(names, mean, std)

    @classmethod
    def from_moments(
        cls,
        names: Sequence[str],
        count: np.ndarray,
        mean: np.ndarray,
        m2: np.ndarray,
        min_std: float = 1e-6,
    ) -> Normalizer:
        """The normalizer :meth:`fit` gives, from per-group moments merged exactly.

        Args:
            count: (G, C) observations per group (e.g. per series) and channel.
            mean: (G, C) per-group means (any value where ``count`` is 0).
            m2: (G, C) per-group sums of squared deviations from the group mean.

        The groups are merged with Chan et al.'s parallel formula (``n = sum n_g``,
        ``mean = sum n_g mean_g / n``, ``M2 = sum M2_g + sum n_g (mean_g - mean)^2``), so the
        result equals :meth:`fit` on all rows up to float rounding.
        """
        total, mu, sq = merge_moments(count, mean, m2)
        c = len(names)
        var = np.divide(sq, total, out=np.zeros(c), where=total > 0)
        std = np.sqrt(var)
        std = np.where(std > min_std, std, 1.0)
        return cls(names, np.where(total > 0, mu, 0.0), std)

    @classmethod
    def identity(cls, names: Sequence[str]) -> Normalizer:
        """A normalizer that changes nothing (mean 0, std 1)."""
        return cls(names, np.zeros(len(names)), np.ones(len(names)))

    # ------------------------------------------------------------------ apply
    @property
    def num_channels(self) -> int:
        return len(self.names)

    def _stats(self, like: ArrayLike, channel_index: Any) -> tuple[ArrayLike, ArrayLike]:
        mean, std = self.mean, self.std
        if channel_index is not None:
            if isinstance(channel_index, Tensor):
                channel_index = channel_index.detach().cpu().numpy()
            mean, std = mean[channel_index], std[channel_index]
        if isinstance(like, Tensor):
            return (
                torch.as_tensor(mean, dtype=like.dtype, device=like.device),
                torch.as_tensor(std, dtype=like.dtype, device=like.device),
            )
        dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64
        return np.asarray(mean, dtype=dtype), np.asarray(std, dtype=dtype)

    def transform(self, values: ArrayLike, channel_index: Any = None) -> ArrayLike:
        """Original units -> normalized units.

        Args:
            values: array/tensor whose last axis is the channel axis (size C) when
                ``channel_index`` is None; otherwise any shape broadcastable with ``channel_index``.
            channel_index: optional int / int array / long tensor selecting, per element, which
                channel's statistics apply.
        """
        if not isinstance(values, Tensor):
            values = np.asarray(values)
        mean, std = self._stats(values, channel_index)
        return (values - mean) / std

    def inverse(self, values: ArrayLike, channel_index: Any = None) -> ArrayLike:
        """Normalized units -> original units (same conventions as :meth:`transform`)."""
        if not isinstance(values, Tensor):
            values = np.asarray(values)
        mean, std = self._stats(values, channel_index)
        return values * std + mean

    def inverse_std(self, std_values: ArrayLike, channel_index: Any = None) -> ArrayLike:
        """Scale a standard deviation (or any difference) from normalized to original units."""
        if not isinstance(std_values, Tensor):
            std_values = np.asarray(std_values)
        _, std = self._stats(std_values, channel_index)
        return std_values * std

    def select(self, names: Sequence[str]) -> Normalizer:
        """Sub-normalizer for ``names`` (raises ``KeyError`` naming unknown channels)."""
        index = {n: i for i, n in enumerate(self.names)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise KeyError(f"Normalizer: unknown channels {unknown}; known: {self.names}")
        ids = [index[n] for n in names]
        return Normalizer(names, self.mean[ids], self.std[ids])

    # ------------------------------------------------------------------ (de)serialization
    def state_dict(self) -> dict[str, list]:
        """JSON-serializable state: ``{"names", "mean", "std"}`` as plain lists."""
        return {
            "names": list(self.names),
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Normalizer:
        return cls(state["names"], state["mean"], state["std"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        other = self.from_state_dict(state)
        self.names, self.mean, self.std = other.names, other.mean, other.std

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Normalizer)
            and self.names == other.names
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.std, other.std)
        )

    def __repr__(self) -> str:
        return f"Normalizer(channels={self.names})"


def series_moments(
    values: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-series, per-channel (count, mean, M2) of ``values`` (N, C), NaN meaning missing.

    Args:
        values: (N, C) rows of S series, concatenated.
        offsets: (S+1,) row boundaries.

    Returns three (S, C) float64 arrays; mean and M2 are 0 where the count is 0.
    """
    values = np.asarray(values)
    num_s, num_c = len(offsets) - 1, values.shape[1]
    # over the observed entries only (a long table observes few channels per row), keyed by
    # (series, channel); bincount adds in row order, as a per-channel pass over the rows does
    rows, chans = np.nonzero(~np.isnan(values))
    seen = values[rows, chans].astype(np.float64)
    row_series = np.repeat(np.arange(num_s), np.diff(offsets))
    key = row_series[rows] * num_c + chans
    size = num_s * num_c
    count = np.bincount(key, minlength=size).astype(np.float64)
    total = np.bincount(key, weights=seen, minlength=size)
    mean = np.divide(total, count, out=np.zeros(size), where=count > 0)
    dev = seen - mean[key]
    m2 = np.bincount(key, weights=dev * dev, minlength=size)
    shape = (num_s, num_c)
    return count.reshape(shape), mean.reshape(shape), m2.reshape(shape)


def merge_moments(
    count: np.ndarray, mean: np.ndarray, m2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge (G, C) group moments into (C,) totals: count, mean, M2 (Chan's formula)."""
    count = np.asarray(count, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    m2 = np.asarray(m2, dtype=np.float64)
    total = count.sum(0)
    weighted = np.where(count > 0, count * mean, 0.0).sum(0)
    mu = np.divide(weighted, total, out=np.zeros(total.shape), where=total > 0)
    spread = np.where(count > 0, count * (mean - mu) ** 2, 0.0).sum(0)
    return total, mu, m2.sum(0) + spread
