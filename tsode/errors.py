"""Errors the public surface (``Forecaster``, ``tsode``) raises with a message that says what is
wrong, where, and how to fix it; the ``tsode`` command prints them on one line, without a
traceback.

Also :class:`SolverFailureContext`, a Lightning callback that turns an ODE solver failure
("row 6: step size underflow") into one naming the series ids, stage, epoch and batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.solvers import SolverError
from tsode.solvers.solution import Status


class TsodeError(Exception):
    """An error explained by tsode: the message names the problem, where it is, and the fix."""


class RecipeFileError(TsodeError, ValueError):
    """A recipe file is too large, expands too far (YAML aliases), or repeats a key."""


class ResourceLimitError(TsodeError, ValueError):
    """A request would exceed a resource bound (e.g. forecast points per series)."""


class SplitError(TsodeError, ValueError):
    """A fit would run with an empty split that training needs (e.g. no validation series)."""


class CheckpointFileError(TsodeError, ValueError):
    """A checkpoint or saved forecaster is missing, unreadable, tampered with or non-finite."""


class TrackingStoreError(TsodeError, RuntimeError):
    """The MLflow tracking store (the ``tracking_uri``) cannot be created, opened or used."""


class SeriesSolverError(TsodeError, SolverError):
    """An ODE solve failed; the message names the series ids, the stage, epoch and batch.

    Attributes:
        series_ids: ids of the series whose solve failed (all of the batch when the failing
            rows could not be isolated).
        stage: ``"train"``, ``"validate"``, ``"test"``, ``"predict"`` or ``"evaluate"``.
        epoch: the training epoch (None outside a fit).
        batch_idx: index of the batch within its stage.
    """

    def __init__(
        self,
        message: str,
        series_ids: Sequence[Any],
        stage: str,
        epoch: int | None,
        batch_idx: int | None,
    ) -> None:
        super().__init__(message)
        self.series_ids = list(series_ids)
        self.stage = stage
        self.epoch = epoch
        self.batch_idx = batch_idx


# ---------------------------------------------------------------------- finite weights


def check_finite_state_dict(state: Mapping[str, Any], where: str) -> None:
    """Raise :class:`CheckpointFileError` naming every parameter / buffer of ``state`` that holds
    NaN or inf (``where``: the file, for the message)."""
    bad = []
    for name, value in state.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            count = int((~torch.isfinite(value)).sum())
            bad.append(f"'{name}' ({count} of {value.numel()} values)")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointFileError(
            f"{where}: non-finite (NaN or inf) weights in {shown}; such a model only predicts NaN. "
            "Retrain, or load an earlier checkpoint"
        )


# ---------------------------------------------------------------------- solver failures


def _select(part: SeriesPart, rows: Tensor) -> SeriesPart:
    return SeriesPart(part.times[rows], part.values[rows], part.mask[rows], part.lengths[rows])


def sub_batch(batch: IrregularBatch, rows: Sequence[int]) -> IrregularBatch:
    """The batch restricted to ``rows`` (same padding width)."""
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=batch.context.times.device)
    return replace(
        batch,
        context=_select(batch.context, idx),
        target=_select(batch.target, idx),
        static=None if batch.static is None else batch.static[idx],
        labels=None if batch.labels is None else batch.labels[idx],
        series_ids=[batch.series_ids[i] for i in rows],
        time_offset=None if batch.time_offset is None else batch.time_offset[idx],
    )


def failing_rows(
    error: SolverError,
    batch: IrregularBatch,
    rerun: Callable[[IrregularBatch], Any] | None = None,
) -> tuple[list[int], bool]:
    """Batch rows whose solve failed, and whether they were isolated (else: every row).

    The solver's per-row ``status`` is used when it has one entry per batch row; otherwise
    (models that solve several rows per series) each row is re-run alone with ``rerun`` and
    the rows that fail again are reported.
    """
    size = len(batch.series_ids)
    status = getattr(error, "status", None)
    if isinstance(status, Tensor) and status.ndim == 1 and status.shape[0] == size:
        rows = torch.nonzero(status != int(Status.SUCCESS)).flatten().tolist()
        if rows:
            return rows, True
    if rerun is not None and size > 1:
        rows = []
        for row in range(size):
            try:
                with torch.no_grad():
                    rerun(sub_batch(batch, [row]))
            except SolverError:
                rows.append(row)
            except Exception:  # noqa: BLE001  (a different failure: cannot isolate by re-running)
                return list(range(size)), False
        if rows:
            return rows, True
    if size == 1:
        return [0], True
    return list(range(size)), False


def describe_solver_failure(
    error: SolverError,
    batch: IrregularBatch,
    stage: str,
    epoch: int | None,
    batch_idx: int | None,
    rerun: Callable[[IrregularBatch], Any] | None = None,
) -> SeriesSolverError:
    """A :class:`SeriesSolverError` for ``error`` raised on ``batch``: names series, stage,
    epoch and batch, and keeps the solver's reason."""
    rows, isolated = failing_rows(error, batch, rerun)
    ids = [batch.series_ids[r] for r in rows]
    shown = ", ".join(repr(i) for i in ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
    where = f"{stage}" + (f", epoch {epoch}" if epoch is not None else "")
    where += f", batch {batch_idx}" if batch_idx is not None else ""
    who = f"series {shown}" if isolated else f"one of the series {shown} (batch rows could not be isolated)"
    reason = re.sub(r"^ODE solve \(([^)]*)\) failed for \d+ batch row\(s\): ", r"\1: ", str(error))
    reason = re.sub(r"\brow (\d+)", r"solver row \1", reason)
    message = (
        f"ODE solve failed for {who} ({where}): {reason}. Fix: check those series for extreme "
        "values or long time gaps, or change the solver (e.g. a larger max_steps, other "
        "rtol/atol, or a fixed-step method)"
    )
    return SeriesSolverError(message, ids, stage, epoch, batch_idx)


class SolverFailureContext(pl.Callback):
    """Remember the current batch of every stage; when an ODE solve fails, attach a
    :class:`SeriesSolverError` (series ids, stage, epoch, batch) to the exception as
    ``exception.tsode_error`` (raised in its place by ``Forecaster`` and ``tsode``)."""

    def __init__(self) -> None:
        self.batch: IrregularBatch | None = None
        self.stage = "train"
        self.batch_idx: int | None = None

    def _remember(self, stage: str, batch: Any, batch_idx: int) -> None:
        self.stage, self.batch_idx = stage, batch_idx
        self.batch = batch if isinstance(batch, IrregularBatch) else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._remember("train", batch, batch_idx)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._remember("validate", batch, batch_idx)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._remember("test", batch, batch_idx)

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        self._remember("predict", batch, batch_idx)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if not isinstance(exception, SolverError) or isinstance(exception, SeriesSolverError):
            return
        if self.batch is None:
            return
        forecast = getattr(pl_module, "forecast", None)

        def rerun(sub: IrregularBatch) -> Any:
            return forecast(sub, sub.target.times) if forecast is not None else None

        epoch = trainer.current_epoch if trainer.state.fn == "fit" else None
        exception.tsode_error = describe_solver_failure(  # type: ignore[attr-defined]
            exception, self.batch, self.stage, epoch, self.batch_idx,
            rerun=rerun if forecast is not None else None,
        )


def explained(error: BaseException) -> BaseException | None:
    """The tsode explanation attached to ``error`` by :class:`SolverFailureContext`, if any."""
    found = getattr(error, "tsode_error", None)
    return found if isinstance(found, TsodeError) else None


def finite_number(name: str, value: Any, where: str, *, positive: bool = True) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name`` when it is not a finite real
    number (and > 0 when ``positive``)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: {name} must be a number of hours, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{where}: {name} must be finite, got {value!r}")
    if positive and not number > 0:
        raise ValueError(f"{where}: {name} must be > 0 hours, got {value!r}")
    return number
