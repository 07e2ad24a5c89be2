"""tsode.data: irregular tables -> validated, normalized, padded ``IrregularBatch`` objects.

See docs/data.md. Time is float hours; masks are bool (True = observed).
"""

from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.data.collate import SeriesDataset
from tsode.data.module import IrregularDataModule
from tsode.data.normalize import Normalizer
from tsode.data.sampler import LengthBucketSampler, padding_fraction
from tsode.data.series import DataValidationError, SeriesTable
from tsode.data.splits import split_series
from tsode.data.summary import DataSummary
from tsode.data.synthetic import PeriodicToyDataModule, SyntheticICUDataModule
from tsode.data.tasks import TaskConfig, assign_task
from tsode.data.timeaxis import TimeAxis

__all__ = [
    "DataSummary",
    "DataValidationError",
    "IrregularBatch",
    "IrregularDataModule",
    "LengthBucketSampler",
    "Normalizer",
    "PeriodicToyDataModule",
    "SeriesDataset",
    "SeriesPart",
    "SeriesTable",
    "SyntheticICUDataModule",
    "TaskConfig",
    "TimeAxis",
    "assign_task",
    "padding_fraction",
    "split_series",
]
