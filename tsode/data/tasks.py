"""Which observations a model sees (context) and which it must predict (target).

Tasks (all times are hours since each series' time origin, see ``SeriesTable``):

* ``forecast``: observe every time point ``t <= cutoff`` and predict every observation with
  ``cutoff < t <= cutoff + horizon`` (``horizon=None``: to the end). The cutoff is absolute
  (``cutoff`` hours, e.g. 24.0) or a fraction of each series' span (``cutoff_fraction`` of its
  last time). Without either, ``cutoff_fraction=0.5``. ``context_boundary="open"`` moves a
  time point at exactly the cutoff to the target: context ``t < cutoff``, target
  ``cutoff <= t <= cutoff + horizon`` (the t-PatchGNN benchmark protocol); the default
  ``"closed"`` is the rule above. ``train_cutoff_range=(lo, hi)`` varies the cutoff while
  training (see :func:`draw_training_cutoffs`); validation and test keep the fixed one.
* ``extrapolation``: as in the latent ODE paper, the first half of each series' time window
  ``[0, last time]`` is observed and the second half predicted (forecast at fraction 0.5).
* ``interpolation``: a seeded random ``holdout_fraction`` of the observed entries is hidden
  from the context and must be reconstructed. The context keeps *all* time points of the
  series (a time point whose entries were all held out stays with an all-False mask), so
  target times are always among context times.
* ``classification``: series-level labels (``SeriesTable.labels``, e.g. in-hospital death).
  The context is every observation, or with ``cutoff`` (hours) / ``cutoff_fraction`` those
  at or before it (``context_boundary="open"``: before it), e.g. the first 48 h; there is no
  target part (as for ``none``). Series whose label is unknown (NaN) are excluded and counted.
  Labels must be integers ``0..K-1`` (binary: 0/1), see :func:`class_labels`.
* ``none``: everything is context, no target (prediction on new data).

Series left with an empty context, or (except for ``none`` and ``classification``) an empty
target, cannot be used for training or evaluation: they are excluded from that split and
counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from tsode.config import ParameterError
from tsode.data.series import SeriesTable

TASK_KINDS = ("forecast", "extrapolation", "interpolation", "classification", "none")
CONTEXT_BOUNDARIES = ("closed", "open")


@dataclass
class TaskConfig:
    """Task definition (see module docstring): a data module's ``task:`` block.

    Attributes:
        kind: ``"forecast"``, ``"extrapolation"``, ``"interpolation"``, ``"classification"``
            or ``"none"``.
        cutoff: forecast: hours since each series' origin observed (e.g. 24.0);
            classification: the context ends there (None: every observation). A data module
            may have its own default for a forecast that names neither ``cutoff`` nor
            ``cutoff_fraction`` (PhysioNet and the synthetic ICU data: 24 h).
        cutoff_fraction: forecast: fraction of each series' span observed (instead of cutoff).
        horizon: forecast: hours after the cutoff to predict (None: to the end).
        holdout_fraction: interpolation: fraction of observed entries to hide and reconstruct.
        seed: seeds the interpolation hold-out; None: the data module's ``seed`` (0 outside a
            data module).
        context_boundary: forecast / extrapolation / classification: ``"closed"`` (context
            ``t <= cutoff``, target ``t > cutoff``) or ``"open"`` (context ``t < cutoff``,
            target ``t >= cutoff``).
    """

    kind: str = "forecast"
    cutoff: float | None = None
    cutoff_fraction: float | None = None
    horizon: float | None = None
    holdout_fraction: float = 0.3
    seed: int | None = None
    context_boundary: str = "closed"
    train_cutoff_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.train_cutoff_range is not None:
            self.train_cutoff_range = self._checked_range(self.train_cutoff_range)
        if self.kind not in TASK_KINDS:
            raise ParameterError("task.kind", f"task.kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if self.context_boundary not in CONTEXT_BOUNDARIES:
            raise ParameterError(
                "task.context_boundary",
                f"task.context_boundary must be one of {CONTEXT_BOUNDARIES} ('closed': context "
                f"t <= cutoff; 'open': context t < cutoff), got {self.context_boundary!r}"
            )
        if self.cutoff is not None and self.cutoff_fraction is not None:
            raise ParameterError("task.cutoff", "task.cutoff: give either cutoff (hours) or cutoff_fraction, not both")
        if self.cutoff is not None and not (np.isfinite(self.cutoff) and self.cutoff >= 0.0):
            raise ParameterError(
                "task.cutoff",
                f"task.cutoff must be a finite number of hours >= 0 (hours since each series' origin), "
                f"got {self.cutoff}"
            )
        if self.cutoff_fraction is not None and not 0.0 < self.cutoff_fraction < 1.0:
            raise ParameterError("task.cutoff_fraction", f"task.cutoff_fraction must be in (0, 1), got {self.cutoff_fraction}")
        if self.horizon is not None and not self.horizon > 0:
            raise ParameterError("task.horizon", f"task.horizon must be > 0 hours, got {self.horizon}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ParameterError("task.holdout_fraction", f"task.holdout_fraction must be in (0, 1), got {self.holdout_fraction}")

    @classmethod
    def of(cls, value: TaskConfig | str | Mapping[str, Any] | None, default: str = "forecast") -> TaskConfig:
        """``value`` as a ``TaskConfig``: a kind (``"forecast"``) is shorthand for
        ``TaskConfig(kind="forecast")``, a mapping holds its fields, None is ``default``'s kind."""
        if value is None:
            return cls(kind=default)
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(
                    f"task: unknown field(s) {unknown}; a task has {[f.name for f in fields(cls)]}"
                )
            return cls(**value)
        if isinstance(value, cls):
            return value
        raise TypeError(f"task must be a TaskConfig, a mapping or a kind, got {type(value).__name__}")

    def _checked_range(self, value: Any) -> tuple[float, float]:
        if self.kind != "forecast":
            raise ParameterError(
                "task.train_cutoff_range",
                f"train_cutoff_range varies a forecast cutoff; task {self.kind!r} has none"
            )
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ParameterError(
                "task.train_cutoff_range",
                f"train_cutoff_range must be two numbers (lo, hi), got {value!r}"
            ) from None
        if self.cutoff is None:  # fractions of each series' span, like cutoff_fraction
            if not 0.0 < lo < hi < 1.0:
                raise ParameterError(
                    "task.train_cutoff_range",
                    "train_cutoff_range is a range of fractions of each series' span here (the "
                    f"task sets no cutoff in hours): need 0 < lo < hi < 1, got ({lo}, {hi})"
                )
        elif not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo < hi):
            raise ParameterError(
                "task.train_cutoff_range",
                f"train_cutoff_range must be hours with 0 <= lo < hi, got ({lo}, {hi})"
            )
        return (lo, hi)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """Short human description, e.g. ``forecast (cutoff 24 h, horizon 24 h)``."""
        if self.kind == "forecast":
            where = (
                f"cutoff {self.cutoff:g} h" if self.cutoff is not None
                else f"cutoff_fraction {self.cutoff_fraction if self.cutoff_fraction is not None else 0.5:g}"
            )
            if self.horizon is not None:
                where += f", horizon {self.horizon:g} h"
            if self.context_boundary == "open":
                where += ", context t < cutoff"
            if self.train_cutoff_range is not None:
                lo, hi = self.train_cutoff_range
                where += f", training cutoffs drawn in [{lo:g}, {hi:g}]"
            return f"forecast ({where})"
        if self.kind == "interpolation":
            return f"interpolation (holdout_fraction {self.holdout_fraction:g})"
        if self.kind == "classification":
            if self.cutoff is not None:
                return f"classification (context t {'<' if self.context_boundary == 'open' else '<='} {self.cutoff:g} h)"
            if self.cutoff_fraction is not None:
                return f"classification (cutoff_fraction {self.cutoff_fraction:g})"
            return "classification (every observation)"
        return self.kind


@dataclass
class TaskAssignment:
    """Per-row / per-entry context and target selection over a ``SeriesTable``.

    Attributes:
        context_rows: (N,) bool, time points in the context part.
        context_entries: (N, C) bool, entries visible in the context.
        target_rows: (N,) bool, time points in the target part.
        target_entries: (N, C) bool, entries to predict.
        usable: (S,) bool, series with non-empty context (and target, unless kind is none or
            classification; classification also needs a known label).
        context_lengths / target_lengths: (S,) int time points per series in each part.
    """

    context_rows: np.ndarray
    context_entries: np.ndarray
    target_rows: np.ndarray
    target_entries: np.ndarray
    usable: np.ndarray
    context_lengths: np.ndarray
    target_lengths: np.ndarray


def _per_series_sum(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    csum = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return csum[offsets[1:]] - csum[offsets[:-1]]


def series_last_times(table: SeriesTable) -> np.ndarray:
    """(S,) hours of each series' last time point (0 for an empty series)."""
    last = np.zeros(table.num_series)
    has = table.lengths > 0
    last[has] = table.times[table.offsets[1:][has] - 1]
    return last


def forecast_cutoffs(table: SeriesTable, task: TaskConfig) -> np.ndarray:
    """(S,) the cutoff in hours of every series under a forecast or extrapolation ``task``."""
    if task.kind == "extrapolation":
        return 0.5 * series_last_times(table)
    if task.cutoff is not None:
        return np.full(table.num_series, float(task.cutoff))
    frac = task.cutoff_fraction if task.cutoff_fraction is not None else 0.5
    return frac * series_last_times(table)


def uniform_stream(seed: Any, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Draws ``starts[i] .. starts[i] + counts[i] - 1`` of ``np.random.default_rng(seed)``'s
    uniform [0, 1) stream, concatenated: the values ``default_rng(seed).random(n)`` gives at
    those positions, without drawing the ones before (the generator is advanced).

    A part of a table (a batch of series read from a cache) thereby draws what the whole
    table draws for its rows.
    """
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    out = np.empty(int(counts.sum()), dtype=np.float64)
    bits = np.random.PCG64(seed)
    origin = bits.state
    gen = np.random.Generator(bits)
    at, pos = -1, 0  # at: stream position of the generator (-1: not started)
    for start, n in zip(starts.tolist(), counts.tolist()):
        if n == 0:
            continue
        if start != at:
            bits.state = origin
            bits.advance(start)
        out[pos: pos + n] = gen.random(n)
        pos += n
        at = start + n
    return out


def draw_training_cutoffs(
    table: SeriesTable, task: TaskConfig, epoch: int, positions: np.ndarray | None = None
) -> np.ndarray:
    """(S,) forecast cutoffs in hours for one training epoch under ``task.train_cutoff_range``.

    Each series draws uniformly from the range (hours; or, for a task without ``cutoff``,
    fractions of the series' last time), seeded by ``task.seed`` and ``epoch`` only, so every
    process and DataLoader worker draws the same cutoffs. Training on many cutoffs teaches a
    model contexts of every length it may meet at prediction time, and gives each series
    several targets over the epochs.

    ``positions`` ((S,) ints): the series' positions in the whole split when ``table`` holds a
    part of it (a streamed batch); they draw what the whole split draws for them.
    """
    if task.train_cutoff_range is None:
        raise ValueError("the task has no train_cutoff_range")
    lo, hi = task.train_cutoff_range
    seed = [task.seed or 0, 104729, epoch]
    if positions is None:
        draw = np.random.default_rng(seed).uniform(lo, hi, table.num_series)
    else:  # Generator.uniform(lo, hi) is lo + (hi - lo) * random(), draw by draw
        unit = uniform_stream(seed, positions, np.ones(len(positions), dtype=np.int64))
        draw = lo + (hi - lo) * unit
    return draw if task.cutoff is not None else draw * series_last_times(table)


def assign_task(
    table: SeriesTable,
    task: TaskConfig,
    seed_offset: int = 0,
    cutoffs: np.ndarray | None = None,
    row_start: np.ndarray | None = None,
) -> TaskAssignment:
    """Split every series of ``table`` into context and target according to ``task``.

    ``cutoffs`` ((S,) hours, forecast tasks only) replaces the task's cutoff per series, e.g.
    those of :func:`draw_training_cutoffs`. ``row_start`` ((S,) ints): each series' first row
    in the whole split when ``table`` holds a part of it (a streamed batch); the interpolation
    hold-out then draws for its rows what the whole split draws for them.
    """
    observed = table.mask
    lengths = table.lengths
    row_series = table.row_series
    n = table.times.shape[0]
    if cutoffs is not None and task.kind != "forecast":
        raise ValueError(f"per-series cutoffs need a forecast task, got {task.kind!r}")
    if task.kind in ("forecast", "extrapolation"):
        if cutoffs is not None:
            cutoff = np.asarray(cutoffs, dtype=np.float64)
        else:
            cutoff = forecast_cutoffs(table, task)
        row_cut = cutoff[row_series]
        if task.context_boundary == "open":  # context t < cutoff, target t >= cutoff
            context_rows = table.times < row_cut
        else:  # closed: context t <= cutoff, target t > cutoff
            context_rows = table.times <= row_cut
        target_rows = ~context_rows
        if task.horizon is not None and task.kind == "forecast":
            target_rows &= table.times <= row_cut + task.horizon
        context_entries = observed & context_rows[:, None]
        target_entries = observed & target_rows[:, None]
    elif task.kind == "interpolation":
        seed = (task.seed or 0) + 7919 * seed_offset
        if row_start is None:
            draws = np.random.default_rng(seed).random(observed.shape)
        else:
            width = observed.shape[1]
            draws = uniform_stream(seed, np.asarray(row_start) * width, lengths * width)
            draws = draws.reshape(observed.shape)
        held = (draws < task.holdout_fraction) & observed
        keep = observed & ~held
        # every series keeps at least its first time point's entries in the context
        ctx_count = _per_series_sum(keep.any(1), table.offsets)
        starved = np.flatnonzero((ctx_count == 0) & (lengths > 0))
        first_rows = table.offsets[starved]
        held[first_rows] = False
        keep[first_rows] = observed[first_rows]
        context_rows = np.ones(n, dtype=bool)
        context_entries = keep
        target_entries = held
        target_rows = held.any(1)
    elif task.kind == "classification":
        if task.cutoff is None and task.cutoff_fraction is None:
            context_rows = np.ones(n, dtype=bool)
        else:
            if task.cutoff is not None:
                cutoff = np.full(table.num_series, float(task.cutoff))
            else:
                cutoff = task.cutoff_fraction * series_last_times(table)
            row_cut = cutoff[row_series]
            open_ = task.context_boundary == "open"
            context_rows = table.times < row_cut if open_ else table.times <= row_cut
        context_entries = observed & context_rows[:, None]
        target_rows = np.zeros(n, dtype=bool)
        target_entries = np.zeros_like(observed)
    else:  # none
        context_rows = np.ones(n, dtype=bool)
        context_entries = observed.copy()
        target_rows = np.zeros(n, dtype=bool)
        target_entries = np.zeros_like(observed)
    ctx_len = _per_series_sum(context_rows, table.offsets)
    tgt_len = _per_series_sum(target_rows, table.offsets)
    has_ctx_obs = _per_series_sum(context_entries.any(1), table.offsets) > 0
    if task.kind == "none":
        usable = has_ctx_obs
    elif task.kind == "classification":
        known = np.zeros(table.num_series, bool) if table.labels is None else ~np.isnan(table.labels)
        usable = has_ctx_obs & known
    else:
        usable = has_ctx_obs & (tgt_len > 0)
    return TaskAssignment(
        context_rows=context_rows,
        context_entries=context_entries,
        target_rows=target_rows,
        target_entries=target_entries,
        usable=usable,
        context_lengths=ctx_len,
        target_lengths=tgt_len,
    )


def class_labels(table: SeriesTable, where: str = "classification") -> np.ndarray:
    """The known labels of ``table`` as class indices: ``(S,)`` int64, -1 where unknown (NaN).

    Raises:
        DataValidationError: the table has no labels (no ``label_col``), or a known label is
            not an integer >= 0 (the message names the series).
    """
    from tsode.data.series import DataValidationError, show

    if table.labels is None:
        raise DataValidationError(
            f"{where}: task='classification' needs one label per series (label_col=..., or a "
            f"data module that provides labels); {table.source} has none"
        )
    labels = np.asarray(table.labels, dtype=np.float64)
    known = ~np.isnan(labels)
    bad = np.flatnonzero(known & ((labels < 0) | (labels != np.round(labels)) | ~np.isfinite(labels)))
    if len(bad):
        shown = ", ".join(f"{show(table.series_ids[i])} ({labels[i]:g})" for i in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataValidationError(
            f"{where}: class labels must be integers 0..K-1 (binary: 0/1); series {shown}{more} "
            f"have other labels in {table.source}. Map the labels to class indices first"
        )
    return np.where(known, labels, -1).astype(np.int64)


def num_classes_of(labels: np.ndarray) -> int:
    """K from class indices (``-1`` unknown): largest index + 1, at least 2 (binary)."""
    known = labels[labels >= 0]
    return max(2, int(known.max()) + 1) if len(known) else 2
