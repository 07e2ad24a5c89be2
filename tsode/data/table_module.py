"""``TableDataModule``: any long or wide table (DataFrame, CSV, Parquet) as a DataModule."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from tsode.data.module import IrregularDataModule
from tsode.data.series import SeriesTable
from tsode.data.tables import (
    TableSource,
    TableSpec,
    load_table,
    read_table,
    splits_from_column,
    table_from_frame,
)
from tsode.data.tasks import TaskConfig

log = logging.getLogger("tsode.data")


class TableDataModule(IrregularDataModule):
    """Irregular series from a user table (see ``tsode.data.tables`` for formats and policies).

    Args:
        data: a pandas DataFrame or a path to a CSV/TSV/Parquet file.
        format: ``"auto"``, ``"long"`` or ``"wide"``.
        id_col, time_col, channel_col, value_col, value_cols, static_cols, label_col: columns.
        time_unit: unit of numeric times (s, min, h, d); converted to hours.
        time_origin: ``"series_start"`` or ``"absolute"``.
        duplicates: ``"mean"`` or ``"error"`` for repeated (series, time, channel) entries.
        max_span_hours: largest plausible series span (hours) before an error.
        encoding: text encoding of a CSV/TSV file (default UTF-8), e.g. ``"latin-1"``.
        channels: fixed channel list (table channels outside it raise); default: inferred.
        split_col: column naming each series' split (``train`` / ``val`` / ``test``), instead
            of ``split_fractions`` or ``splits`` (see :func:`tsode.data.tables.splits_from_column`).
        base: ``task``, ``loader``, ``split_fractions``, ``splits``, ``min_time_points``,
            ``normalize``, ``seed``: see :class:`IrregularDataModule`.

    After ``setup``, :meth:`table_from` and :meth:`predict_dataloader_for` turn *new* tables into
    batches with the fitted channels, time axis and normalizers.
    """

    def __init__(
        self,
        data: Any,
        format: str = "auto",
        id_col: str = "series_id",
        time_col: str = "time",
        channel_col: str = "channel",
        value_col: str = "value",
        value_cols: list[str] | None = None,
        static_cols: list[str] | None = None,
        label_col: str | None = None,
        time_unit: str = "h",
        time_origin: str = "series_start",
        duplicates: str = "mean",
        max_span_hours: float | None = 24.0 * 365 * 100,
        encoding: str | None = None,
        channels: list[str] | None = None,
        split_col: str | None = None,
        **base: Any,
    ):
        if split_col is not None and base.get("splits") is not None:
            raise ValueError(
                f"TableDataModule: give either splits= (lists of ids) or split_col= (a column, "
                f"here {split_col!r}), not both"
            )
        super().__init__(**base)
        self.data = data
        self.spec = TableSpec(
            format=format,
            id_col=id_col,
            time_col=time_col,
            channel_col=channel_col,
            value_col=value_col,
            value_cols=value_cols,
            static_cols=static_cols or [],
            label_col=label_col,
            time_unit=time_unit,
            time_origin=time_origin,
            duplicates=duplicates,
            max_span_hours=max_span_hours,
            encoding=encoding,
            split_col=split_col,
        )
        self.fixed_channels = channels

    def load_table(self) -> SeriesTable:
        if self.spec.split_col is None:
            return load_table(self.data, self.spec, channels=self.fixed_channels)
        frame, name = read_table(self.data, encoding=self.spec.encoding)
        self.splits = splits_from_column(frame, self.spec, name)  # checked against the table
        return table_from_frame(frame, self.spec, source=name, channels=self.fixed_channels)

    def setup(self, stage: str | None = None) -> None:
        first = self.table is None
        super().setup(stage)
        if first and self.table is not None:
            self._warn_unobserved_channels()

    def _channel_counts(self, indices: np.ndarray) -> np.ndarray:
        """(C,) observed entries per channel of the series ``indices``."""
        part = self.table.subset(indices)
        return part.mask.sum(0) if part.values.size else np.zeros(part.num_channels, np.int64)

    def _warn_unobserved_channels(self) -> None:
        """Warn (and log) about channels with no observation in the training split."""
        train = self.split_indices["train"]
        seen = self._channel_counts(train) > 0
        if seen.all():
            return
        kept = np.sort(np.concatenate([self.split_indices[n] for n in ("train", "val", "test")]))
        nowhere = self._channel_counts(kept) == 0
        names = [c for c, ok in zip(self.channels, seen) if not ok]
        absent = [c for c, gone in zip(self.channels, nowhere) if gone]
        detail = f" ({absent} in no series at all)" if absent else ""
        message = (
            f"{self._index.source}: channel(s) {names} have no observation in the training "
            f"split ({len(train)} series){detail}; the model learns nothing about them and their "
            f"forecasts are not data-driven. Drop these channels (value_cols / channels) or check "
            f"the column names and the split"
        )
        log.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)

    def table_from(self, source: TableSource) -> SeriesTable:
        """Validate a new table with the fitted channels and time axis (same column spec).

        Channels the module was not fitted on raise ``DataValidationError``.
        """
        frame, name = read_table(source, encoding=self.spec.encoding)
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"expected a DataFrame, got {type(frame).__name__}")
        return table_from_frame(
            frame, self.spec, source=name, channels=self.channels, time_axis=self.time_axis
        )

    def predict_dataloader_for(
        self,
        source: TableSource,
        task: TaskConfig | str | None = None,
        batch_size: int | None = None,
    ) -> DataLoader:
        """Batches of a new table in its series order, normalized with the fitted statistics."""
        return self.dataloader_for(self.table_from(source), task, batch_size)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["table_spec"] = self.spec.state_dict()
        return state
