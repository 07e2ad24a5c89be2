"""Per-channel summaries of a context's history at query times.

Each channel keeps its own timeline: what a forecaster can say about channel ``c`` at a query
time ``tau`` depends on ``c``'s own observations before ``tau`` -- its last value (see
:func:`tsode.models.blocks.last_observation`), and, here, its exponentially weighted means at
several time scales and how often it was measured. These are the per-variable statistics the
strongest irregular forecasters give their decoders (GRU-D feeds the last value and the
empirical mean; exponential smoothing is the classical form of the same idea), computed
exactly in continuous time:

``ewm_s(c, tau) = sum_i w_i x_i / sum_i w_i``, ``w_i = exp(-(tau - t_i) / s)``, over the
observations ``t_i < tau`` of channel ``c``.

The query time cancels from the ratio, so one prefix pass over the context gives every query:
the prefix sums are computed in log space (:func:`torch.logcumsumexp`), so weights of very old
observations never underflow to ``0 / 0`` whatever the span of the series or the scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsode.data.batch import SeriesPart
from tsode.models.timeindex import gather_times, last_before

#: default smoothing time scales, hours (an hour, a shift, a day)
DEFAULT_HISTORY_SCALES = (1.0, 6.0, 24.0)


def history_feature_count(scales: tuple[float, ...]) -> int:
    """Features per channel that :func:`channel_history` returns for ``scales``."""
    return len(scales) + 2


def channel_history(part: SeriesPart, times: Tensor, scales: tuple[float, ...]) -> Tensor:
    """Each channel's exponentially weighted history strictly before each query time.

    Args:
        part: observations (times ``(B, L)`` hours, values/mask ``(B, L, C)``, lengths ``(B,)``).
        times: ``(B, M)`` query times (hours).
        scales: ``S`` positive smoothing time scales (hours).

    Returns:
        ``(B, M, C, S + 2)``: the weighted means at each scale, the weighted std at the longest
        scale, and ``log1p(count)`` of the channel's observations before the query; all 0 for
        a channel not observed before the query.
    """
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"history scales must be positive hours, got {scales}")
    bsz, length, channels = part.values.shape
    n_feat = history_feature_count(scales)
    if length == 0 or times.shape[1] == 0:
        return part.values.new_zeros(bsz, times.shape[1], channels, n_feat)
    dtype = torch.float64  # the spread is a difference of moments: keep float32 cancellation out
    observed = (part.mask & part.time_mask.unsqueeze(-1)).unsqueeze(-1)  # (B, L, C, 1)
    x = part.values.to(dtype).unsqueeze(-1)  # (B, L, C, 1)
    rel = (part.times - part.times[:, :1]).to(dtype)  # (B, L), >= 0, keeps exponents small
    scale = torch.as_tensor(scales, dtype=dtype, device=x.device)
    log_w = (rel.view(bsz, length, 1, 1) / scale).expand(bsz, length, channels, len(scales))
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=x.device)
    log_w = torch.where(observed, log_w, neg_inf)
    log_total = torch.logcumsumexp(log_w, dim=1)  # (B, L, C, S)

    def weighted_mean(v: Tensor) -> Tensor:
        pos = torch.logcumsumexp(log_w + torch.log(v.clamp_min(0)), dim=1)
        neg = torch.logcumsumexp(log_w + torch.log((-v).clamp_min(0)), dim=1)
        return torch.exp(pos - log_total) - torch.exp(neg - log_total)

    means = weighted_mean(x)  # (B, L, C, S)
    second = weighted_mean(x**2)[..., -1:]  # E[x^2] at the longest scale
    spread = (second - means[..., -1:] ** 2).clamp_min(0).sqrt()
    count = torch.log1p(observed.squeeze(-1).to(dtype).cumsum(dim=1)).unsqueeze(-1)
    prefix = torch.cat([means, spread, count], dim=-1)  # (B, L, C, S + 2)
    prefix = torch.where(torch.isfinite(prefix), prefix, torch.zeros_like(prefix))  # unseen: 0
    at = last_before(part.times, part.lengths, times, strict=True)  # (B, M) in [-1, L-1]
    flat = gather_times(prefix.reshape(bsz, length, channels * n_feat), at.clamp_min(0))
    flat = torch.where((at >= 0).unsqueeze(-1), flat, torch.zeros_like(flat))
    return flat.reshape(bsz, times.shape[1], channels, n_feat).to(part.values.dtype)
