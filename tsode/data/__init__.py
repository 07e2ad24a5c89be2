"""tsode.data: irregular tables -> validated, normalized, padded ``IrregularBatch`` objects.

See docs/data.md. Time is float hours; masks are bool (True = observed).
"""

from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.data.collate import SeriesDataset
from tsode.data.config import LoaderConfig
from tsode.data.fitted import FittedData, build_dataset
from tsode.data.frames import batch_to_frame, forecast_to_frame, values_to_frame
from tsode.data.module import IrregularDataModule
from tsode.data.normalize import Normalizer
from tsode.data.physionet import (
    PhysioNet2012DataModule,
    download_physionet2012,
    load_physionet2012,
)
from tsode.data.sampler import LengthBucketSampler, padding_fraction
from tsode.data.series import DataValidationError, SeriesTable
from tsode.data.splits import split_series
from tsode.data.stream_module import StreamingTableDataModule
from tsode.data.summary import DataSummary
from tsode.data.synthetic import PeriodicToyDataModule, SyntheticICUDataModule
from tsode.data.table_module import TableDataModule
from tsode.data.tables import TableSpec, load_table, read_table, table_from_frame
from tsode.data.tasks import TaskConfig, assign_task
from tsode.data.timeaxis import TimeAxis


def _register_safe_globals() -> None:
    """Plain config dataclasses of tsode.data may appear in checkpoints: allow them in
    ``torch.load(..., weights_only=True)`` (see ``tsode/__init__.py``)."""
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add([TaskConfig, LoaderConfig, TableSpec, TimeAxis])


_register_safe_globals()

__all__ = [
    "DataSummary",
    "DataValidationError",
    "FittedData",
    "IrregularBatch",
    "IrregularDataModule",
    "LengthBucketSampler",
    "LoaderConfig",
    "Normalizer",
    "PeriodicToyDataModule",
    "PhysioNet2012DataModule",
    "SeriesDataset",
    "SeriesPart",
    "SeriesTable",
    "StreamingTableDataModule",
    "SyntheticICUDataModule",
    "TableDataModule",
    "TableSpec",
    "TaskConfig",
    "TimeAxis",
    "assign_task",
    "batch_to_frame",
    "build_dataset",
    "download_physionet2012",
    "forecast_to_frame",
    "load_physionet2012",
    "load_table",
    "padding_fraction",
    "read_table",
    "split_series",
    "table_from_frame",
    "values_to_frame",
]
