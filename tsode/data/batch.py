"""The one batch type every tsode model consumes.

Shapes (B = batch, L = padded length of that part, C = channels, S = static covariates):

    times   (B, L)     float, hours; each row non-decreasing. Padded tail entries repeat the
                       row's last real time, so an ODE solve over a padded row costs nothing
                       past its end and changes nothing.
    values  (B, L, C)  float, normalized units; 0.0 wherever ``mask`` is False.
    mask    (B, L, C)  bool, True where a value was observed (padding is always False).
    lengths (B,)       long, number of real (non-padded) time points per row.

A batch has a *context* part (what the model observes) and a *target* part (what it must
predict). For interpolation tasks the two share time points; for forecasting the target
times lie after the context. Padding must never influence a loss or a metric: use
``mask`` (per entry) or ``time_mask`` (per time point) everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class SeriesPart:
    """Padded irregular observations of a batch of series (context or target)."""

    times: Tensor  # (B, L) float hours
    values: Tensor  # (B, L, C) float
    mask: Tensor  # (B, L, C) bool
    lengths: Tensor  # (B,) long

    @property
    def time_mask(self) -> Tensor:
        """(B, L) bool: True at real (non-padded) time points."""
        steps = torch.arange(self.times.shape[1], device=self.times.device)
        return steps.unsqueeze(0) < self.lengths.unsqueeze(1)

    @property
    def batch_size(self) -> int:
        return self.times.shape[0]

    @property
    def num_channels(self) -> int:
        return self.values.shape[-1]

    def to(self, device: torch.device | str) -> SeriesPart:
        return SeriesPart(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class IrregularBatch:
    """A batch of irregularly sampled multichannel series, split into context and target.

    Attributes:
        context: observations the model conditions on.
        target: observations the model must predict (times may be after, or among, the context).
        static: (B, S) float static covariates, or None.
        labels: (B,) float series-level labels (e.g. in-hospital death), NaN where unknown, or None.
        series_ids: list of B original series identifiers (any hashable), for mapping back.
        channels: list of C channel names, in tensor order.
        time_offset: (B,) float hours subtracted from each series' times (series start), so
            original time = times + time_offset.
    """

    context: SeriesPart
    target: SeriesPart
    static: Tensor | None = None
    labels: Tensor | None = None
    series_ids: list[Any] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    time_offset: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.context.batch_size

    def to(self, device: torch.device | str) -> IrregularBatch:
        def move(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device)

        return replace(
            self,
            context=self.context.to(device),
            target=self.target.to(device),
            static=move(self.static),
            labels=move(self.labels),
            time_offset=move(self.time_offset),
        )

    # Lightning moves batches with `transfer_batch_to_device`; it understands `.to`.
