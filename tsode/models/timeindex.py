"""Index helpers for per-series time grids: the last real point before a query time, and
gathering along the time axis (used by the encoders, the readouts and the history features)."""

from __future__ import annotations

import torch
from torch import Tensor


def last_before(times: Tensor, lengths: Tensor, query: Tensor, strict: bool = True) -> Tensor:
    """Index of the last real time point before each query time, per series.

    Args:
        times: ``(B, L)`` non-decreasing observation times (padded tail repeats the last time).
        lengths: ``(B,)`` number of real points per row.
        query: ``(B, M)`` query times.
        strict: if True use times ``< query`` (the query point itself is not "seen"),
            else ``<= query``.

    Returns:
        ``(B, M)`` long indices in ``[-1, L-1]``; ``-1`` means no real point before the query.
    """
    idx = torch.searchsorted(times.contiguous(), query.contiguous(), right=not strict) - 1
    return torch.minimum(idx, (lengths - 1).unsqueeze(1))


def gather_times(x: Tensor, index: Tensor) -> Tensor:
    """Gather along the time axis: ``x (B, L, D)``, ``index (B, M)`` -> ``(B, M, D)``."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
