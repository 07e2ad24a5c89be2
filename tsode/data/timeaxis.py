"""Conversion between a table's time column and tsode's float hours.

tsode measures time in float **hours**. A table's time column may be numeric (in a
configurable unit), ``datetime64`` (optionally tz-aware) or ``timedelta64``. Datetimes are
converted to hours since a reference instant (the earliest time in the table), which is
stored so that times can be mapped back to the original representation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

UNIT_HOURS = {
    "s": 1 / 3600,
    "sec": 1 / 3600,
    "seconds": 1 / 3600,
    "min": 1 / 60,
    "minutes": 1 / 60,
    "h": 1.0,
    "hours": 1.0,
    "d": 24.0,
    "days": 24.0,
}


def unit_to_hours(unit: str | float) -> float:
    """Hours per unit for ``unit`` in {s, min, h, d} (or a float factor given directly)."""
    if isinstance(unit, int | float):
        if not unit > 0:
            raise ValueError(f"time unit factor must be > 0, got {unit}")
        return float(unit)
    try:
        return UNIT_HOURS[unit]
    except KeyError:
        raise ValueError(
            f"unknown time unit {unit!r}; use one of {sorted(UNIT_HOURS)} or hours-per-unit float"
        ) from None


@dataclass
class TimeAxis:
    """How a table's time column maps to float hours.

    Attributes:
        kind: ``"numeric"``, ``"datetime"`` or ``"timedelta"``.
        unit_hours: hours per numeric unit (numeric kind only).
        reference: ISO timestamp that hour 0 corresponds to (datetime kind only).
        tz: timezone name of tz-aware datetimes, else None.
    """

    kind: str = "numeric"
    unit_hours: float = 1.0
    reference: str | None = None
    tz: str | None = None

    def to_hours(self, column: pd.Series) -> np.ndarray:
        """Convert a time column of this kind to float64 hours."""
        if self.kind == "numeric":
            return column.to_numpy(dtype=np.float64, na_value=np.nan) * self.unit_hours
        if self.kind == "timedelta":
            return column.dt.total_seconds().to_numpy(dtype=np.float64, na_value=np.nan) / 3600.0
        ref = pd.Timestamp(self.reference)
        delta = column - ref
        return delta.dt.total_seconds().to_numpy(dtype=np.float64, na_value=np.nan) / 3600.0

    def from_hours(self, hours: np.ndarray) -> pd.Series | np.ndarray:
        """Map float hours back to the original representation."""
        hours = np.asarray(hours, dtype=np.float64)
        if self.kind == "numeric":
            return hours / self.unit_hours
        delta = pd.to_timedelta(hours * 3600.0, unit="s")
        if self.kind == "timedelta":
            return pd.Series(delta)
        stamps = pd.Series(pd.Timestamp(self.reference) + delta)
        if self.tz is not None:
            stamps = stamps.dt.tz_convert(self.tz)
        return stamps

    @classmethod
    def infer(cls, column: pd.Series, unit: str | float = "h") -> TimeAxis:
        """Pick the axis for ``column`` from its dtype (numeric / datetime / timedelta)."""
        if pd.api.types.is_datetime64_any_dtype(column):
            valid = column.dropna()
            ref = valid.min() if len(valid) else pd.Timestamp(0)
            tz = str(ref.tz) if getattr(ref, "tz", None) is not None else None
            return cls(kind="datetime", reference=ref.isoformat(), tz=tz)
        if pd.api.types.is_timedelta64_dtype(column):
            return cls(kind="timedelta")
        return cls(kind="numeric", unit_hours=unit_to_hours(unit))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TimeAxis:
        return cls(**state)
