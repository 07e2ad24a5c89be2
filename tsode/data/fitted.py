"""``FittedData``: the fitted state of a data module, the one object that maps between user
tables and model tensors.

Everything a trained model needs to turn a *new* table into inputs exactly as during training,
and its outputs back into tidy frames in original units: the table spec, the channels, the
static covariate names, the per-channel normalizers fitted on the training split, the time
axis, the task, the default forecast horizon and the number of classes.

- :meth:`FittedData.table` validates a DataFrame / CSV / Parquet table against the fitted
  channels and time axis (a :class:`~tsode.data.series.SeriesTable`, original units);
- :meth:`FittedData.dataset` builds the normalized :class:`~tsode.data.collate.SeriesDataset`
  of a table under a task, with :func:`build_dataset`, the function the data modules build
  their own splits with;
- :meth:`FittedData.to_frame` maps model outputs (normalized units, hours) back to a tidy
  frame in original units and the input's time representation (:mod:`tsode.data.frames`);
- :attr:`FittedData.scale` is what scores errors in original units (the channel stds).

A data module gives its own with ``datamodule.fitted``; a :class:`tsode.api.Forecaster`
saves it (``state_dict`` is plain data) and uses it for ``predict`` / ``evaluate``; the
prediction writer and the MLflow pyfunc model map outputs back through it. Models only ever
see normalized tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from tsode.data.collate import SeriesDataset
from tsode.data.frames import values_to_frame
from tsode.data.normalize import Normalizer
from tsode.data.series import DataValidationError, SeriesTable
from tsode.data.tables import TableSpec, read_table, table_from_frame
from tsode.data.tasks import TaskConfig
from tsode.data.timeaxis import TimeAxis

#: seed offset of a dataset built from a new table (0, 1, 2: the train / val / test splits)
NEW_TABLE_SEED_OFFSET = 3


def fill_static(table: SeriesTable, static_names: Sequence[str]) -> SeriesTable:
    """``table`` with the fitted static covariates: when the fit had some and ``table`` has
    none, they are unknown (all NaN: the dataset fills them with the training mean, i.e. 0
    after normalization). Static covariates other than the fitted ones raise
    ``DataValidationError``. ``table`` itself is left as it is."""
    names = list(static_names)
    if table.num_static == len(names) and table.static_names == names:
        return table
    if names and table.num_static == 0:
        static = np.full((table.num_series, len(names)), np.nan)
        return SeriesTable(**{**table.__dict__, "static": static, "static_names": names})
    if table.static_names != names:
        raise DataValidationError(
            f"static covariates {table.static_names} do not match the fitted {names}"
        )
    return table


def build_dataset(
    table: SeriesTable,
    task: TaskConfig,
    channels: Sequence[str] | None,
    static_names: Sequence[str] | None,
    normalizer: Normalizer,
    static_normalizer: Normalizer | None,
    *,
    seed_offset: int = NEW_TABLE_SEED_OFFSET,
    keep_unusable: bool | None = None,
    vary_cutoff: bool = False,
    positions: np.ndarray | None = None,
    row_start: np.ndarray | None = None,
) -> SeriesDataset:
    """The normalized series of ``table`` under ``task``: its channels mapped to ``channels``
    (unknown ones raise ``DataValidationError``), the static covariates checked / filled
    (:func:`fill_static`), values and static covariates normalized.

    The one construction of a :class:`SeriesDataset` from a table in original units: the data
    modules' train / val / test splits (``seed_offset`` 0 / 1 / 2), their ``dataset_for`` and
    :meth:`FittedData.dataset` (new tables, ``seed_offset=3``).

    Args:
        channels: the fitted channels (None: ``table``'s own, as for the splits of the table
            the module was fitted on).
        static_names: the fitted static covariates (None: ``table``'s own).
        keep_unusable: keep series without a target or label (default: for ``"none"``, the
            task of prediction, where everything is context).
        vary_cutoff: a training split: draw each epoch's cutoffs from the task's
            ``train_cutoff_range`` (see :class:`SeriesDataset`).
        positions / row_start: ``table`` is a part of a split (see :class:`SeriesDataset`).
    """
    if channels is not None and table.channels != [str(c) for c in channels]:
        table = table.with_channels(channels)
    if static_names is not None:
        table = fill_static(table, static_names)
    return SeriesDataset(
        table,
        task,
        normalizer,
        static_normalizer,
        seed_offset=seed_offset,
        keep_unusable=task.kind == "none" if keep_unusable is None else keep_unusable,
        vary_cutoff=vary_cutoff,
        positions=positions,
        row_start=row_start,
    )


def default_horizon(task: TaskConfig, median_span: float | None) -> float:
    """Hours to forecast by default: the task's horizon, else what the task left to predict."""
    if task.horizon is not None:
        return float(task.horizon)
    if median_span:
        if task.kind == "forecast" and task.cutoff is not None and median_span > task.cutoff:
            return float(median_span - task.cutoff)
        fraction = task.cutoff_fraction if task.cutoff_fraction is not None else 0.5
        return float(median_span * (1.0 - fraction))
    return 24.0


@dataclass
class FittedData:
    """What turns a new table into model inputs exactly as during training, and model outputs
    back into original units.

    Attributes:
        spec: column names / format / units of input tables.
        channels: C channel names, in model order.
        static_names: S static covariate names (may be empty).
        normalizer: per-channel normalizer fitted on the training split.
        static_normalizer: normalizer of the static covariates, or None.
        time_axis: maps the table's time column to hours and back.
        task: the training task (used by ``evaluate``).
        default_horizon: hours forecast by default (e.g. by the MLflow pyfunc model).
        num_classes: K classes of a ``task="classification"`` fit (0: forecasting).
    """

    spec: TableSpec
    channels: list[str]
    static_names: list[str]
    normalizer: Normalizer
    static_normalizer: Normalizer | None
    time_axis: TimeAxis
    task: TaskConfig
    default_horizon: float
    num_classes: int = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_datamodule(cls, datamodule: Any) -> FittedData:
        """Collect the fitted state of any tsode data module (set up if needed; the same as
        its ``fitted`` property)."""
        state = datamodule.state_dict()
        spec_state = state.get("table_spec")
        spec = TableSpec(**spec_state) if spec_state else TableSpec(format="long")
        task = TaskConfig(**state["task"])
        span = None
        summary = getattr(datamodule, "summary", None)
        if summary is not None and hasattr(summary, "time_span_hours"):
            span = float(summary.time_span_hours.get("median", 0.0)) or None
        return cls(
            spec=spec,
            channels=list(state["channels"]),
            static_names=list(state.get("static_names") or []),
            normalizer=Normalizer.from_state_dict(state["normalizer"]),
            static_normalizer=(
                Normalizer.from_state_dict(state["static_normalizer"])
                if state.get("static_normalizer")
                else None
            ),
            time_axis=TimeAxis.from_state_dict(state["time_axis"]),
            task=task,
            default_horizon=default_horizon(task, span),
            num_classes=int(getattr(datamodule, "num_classes", 0) or 0),
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain (YAML / JSON / ``torch.load(weights_only=True)``-safe) state."""
        return {
            "spec": self.spec.state_dict(),
            "channels": list(self.channels),
            "static_names": list(self.static_names),
            "normalizer": self.normalizer.state_dict(),
            "static_normalizer": (
                None if self.static_normalizer is None else self.static_normalizer.state_dict()
            ),
            "time_axis": self.time_axis.state_dict(),
            "task": self.task.state_dict(),
            "default_horizon": self.default_horizon,
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> FittedData:
        return cls(
            spec=TableSpec(**state["spec"]),
            channels=list(state["channels"]),
            static_names=list(state["static_names"]),
            normalizer=Normalizer.from_state_dict(state["normalizer"]),
            static_normalizer=(
                None
                if state["static_normalizer"] is None
                else Normalizer.from_state_dict(state["static_normalizer"])
            ),
            time_axis=TimeAxis.from_state_dict(state["time_axis"]),
            task=TaskConfig(**state["task"]),
            default_horizon=float(state["default_horizon"]),
            num_classes=int(state.get("num_classes", 0)),
        )

    # ------------------------------------------------------------------ tables -> tensors
    def table(self, source: Any) -> SeriesTable:
        """Validate a DataFrame / CSV / Parquet table against the fitted channels and time axis.

        The table may be long or wide whatever the training table's format: long if it has the
        channel column (and no fitted channel has that name), else wide. Static covariate
        columns are read when the table has all of them; otherwise they are unknown (filled
        with the training mean). Unknown channels raise ``DataValidationError``.
        """
        frame, name = read_table(source, encoding=getattr(self.spec, "encoding", None))
        spec = self.spec
        wide = spec.channel_col not in frame.columns or spec.channel_col in self.channels
        spec = dataclasses.replace(spec, format="wide" if wide else "long")
        if wide and spec.value_cols is None:
            # declared static / label columns are never channels, even when not read here
            reserved = {spec.id_col, spec.time_col, *spec.static_cols, *self.static_names}
            for extra in (spec.label_col, getattr(spec, "split_col", None)):
                if extra is not None:
                    reserved.add(extra)
            spec = dataclasses.replace(
                spec, value_cols=[c for c in frame.columns if c not in reserved]
            )
        if self.static_names and all(c in frame.columns for c in self.static_names):
            spec = dataclasses.replace(spec, static_cols=list(self.static_names))
        elif spec.static_cols and not all(c in frame.columns for c in spec.static_cols):
            spec = dataclasses.replace(spec, static_cols=[])
        if spec.label_col is not None and spec.label_col not in frame.columns:
            spec = dataclasses.replace(spec, label_col=None)
        table = table_from_frame(
            frame, spec, source=name, channels=self.channels, time_axis=self.time_axis
        )
        if self.static_names and table.num_static == 0:
            table = fill_static(table, self.static_names)
        return table

    def dataset(
        self,
        table: SeriesTable,
        task: TaskConfig,
        keep_unusable: bool | None = None,
        *,
        seed_offset: int = NEW_TABLE_SEED_OFFSET,
    ) -> SeriesDataset:
        """Series of ``table`` under ``task`` (``kind="none"``: everything is context);
        ``keep_unusable`` (default: for ``"none"``) keeps series without a target or label.
        Built by :func:`build_dataset`, as the data modules build theirs."""
        return build_dataset(
            table,
            task,
            self.channels,
            self.static_names,
            self.normalizer,
            self.static_normalizer,
            seed_offset=seed_offset,
            keep_unusable=keep_unusable,
        )

    # ------------------------------------------------------------------ tensors -> tables
    @property
    def scale(self) -> list[float]:
        """``(C,)`` per-channel factors from normalized to original units (the normalizer's
        stds): errors, spreads and CRPS in original units are normalized ones times these."""
        return [float(x) for x in self.normalizer.std]

    def to_frame(
        self,
        series_ids: Sequence[Any],
        times: Tensor | np.ndarray,
        values: Tensor | np.ndarray,
        mask: Tensor | np.ndarray,
        *,
        channels: Sequence[str] | None = None,
        time_offset: Tensor | np.ndarray | None = None,
        extra: Mapping[str, Tensor | np.ndarray] | None = None,
        std_columns: Sequence[str] = (),
        table: SeriesTable | None = None,
        observed_columns: Sequence[str] = (),
    ) -> pd.DataFrame:
        """Tidy frame ``series_id, time, channel, value[, extra ...]`` in original units and the
        input's time representation of model outputs (or observations) in normalized units.

        Args:
            series_ids: B identifiers.
            times: (B, L) hours relative to each series' origin.
            values: (B, L, C) normalized values.
            mask: (B, L, C) entries or (B, L) time points to emit.
            channels: the C channel names of ``values`` (default: the fitted channels, the
                channels of every batch built by :meth:`dataset`).
            time_offset: (B,) each series' origin (``batch.time_offset``).
            extra: more (B, L, C) columns: inverse-normalized like values, except those named
                in ``std_columns`` (spreads: scaled by the channel std only).
            table: the table the values came from: its observation times (and, for the
                ``observed_columns``, its values) are reported exactly as read (see
                :func:`tsode.data.frames.values_to_frame`).
            observed_columns: columns holding observations (``"value"`` or names in ``extra``).
        """
        return values_to_frame(
            series_ids,
            times,
            values,
            mask,
            list(self.channels) if channels is None else channels,
            time_offset=time_offset,
            normalizer=self.normalizer,
            time_axis=self.time_axis,
            extra=extra,
            std_columns=std_columns,
            table=table,
            observed_columns=observed_columns,
        )
