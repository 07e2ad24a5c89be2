"""Seeded, reproducible train/val/test splits by series (a series never spans two splits)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def split_series(
    num_series: int, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, np.ndarray]:
    """Partition ``range(num_series)`` into train/val/test index arrays (sorted).

    Sizes are ``round(fraction * num_series)`` for val and test, the rest train; with at
    least 3 series every split with a positive fraction gets at least one series.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    perm = np.random.default_rng(seed).permutation(num_series)
    n_val = int(round(fractions[1] * num_series))
    n_test = int(round(fractions[2] * num_series))
    if num_series >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = num_series - n_val - n_test
    if n_train < (1 if fractions[0] > 0 else 0):
        raise ValueError(f"too few series ({num_series}) for split fractions {fractions}")
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }
