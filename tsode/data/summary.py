"""Data summary: series count, observations and missing rate per channel, time spans."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tsode.data.series import SeriesTable


@dataclass
class DataSummary:
    """What a table holds after validation.

    Attributes:
        num_series / num_time_points / num_observations: totals.
        observations_per_channel: observed entries per channel.
        missing_rate_per_channel: fraction of time points where the channel is unobserved.
        time_span_hours: min / median / max over series of (last - first) time, hours.
        time_points_per_series: min / median / max time points per series.
        counts: ingestion counters (duplicates merged, rows sorted, series dropped, ...).
    """

    num_series: int
    num_time_points: int
    num_observations: int
    observations_per_channel: dict[str, int]
    missing_rate_per_channel: dict[str, float]
    time_span_hours: dict[str, float]
    time_points_per_series: dict[str, float]
    counts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: SeriesTable, counts: dict[str, Any] | None = None) -> DataSummary:
        lengths = table.lengths
        nonempty = lengths > 0
        first = table.times[table.offsets[:-1][nonempty]]
        last = table.times[table.offsets[1:][nonempty] - 1]
        return cls.from_counts(
            table.channels, lengths, last - first, table.mask.sum(0),
            dict(counts if counts is not None else table.info),
        )

    @classmethod
    def from_counts(
        cls,
        channels: list[str],
        lengths: np.ndarray,
        spans: np.ndarray,
        per_channel: np.ndarray,
        counts: dict[str, Any],
    ) -> DataSummary:
        """From per-series ``lengths`` (S,), the ``spans`` (hours) of the non-empty series and
        the observed entries ``per_channel`` (C,): what :meth:`from_table` reads off a table,
        and a series cache off its index."""
        n = max(int(lengths.sum()), 1)

        def stats(x: np.ndarray) -> dict[str, float]:
            if x.size == 0:
                return {"min": 0.0, "median": 0.0, "max": 0.0}
            return {"min": float(x.min()), "median": float(np.median(x)), "max": float(x.max())}

        return cls(
            num_series=len(lengths),
            num_time_points=int(lengths.sum()),
            num_observations=int(per_channel.sum()),
            observations_per_channel={c: int(k) for c, k in zip(channels, per_channel)},
            missing_rate_per_channel={
                c: float(1.0 - k / n) for c, k in zip(channels, per_channel)
            },
            time_span_hours=stats(np.asarray(spans, dtype=np.float64)),
            time_points_per_series=stats(lengths.astype(np.float64)),
            counts=counts,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.num_series} series, {self.num_time_points} time points, "
            f"{self.num_observations} observations",
            "time span (h): " + ", ".join(f"{k} {v:.2f}" for k, v in self.time_span_hours.items()),
            "time points per series: "
            + ", ".join(f"{k} {v:g}" for k, v in self.time_points_per_series.items()),
            "channel: observations (missing rate)",
        ]
        for c, k in self.observations_per_channel.items():
            lines.append(f"  {c}: {k} ({self.missing_rate_per_channel[c]:.1%})")
        if self.counts:
            lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in self.counts.items()))
        return "\n".join(lines)
