"""``StreamingTableDataModule``: a table larger than memory, read series by series from the
memory-mapped cache of :mod:`tsode.data.streaming`.

The module gives the batches :class:`~tsode.data.table_module.TableDataModule` gives for the
same table and settings (same split, normalizer up to float rounding, bucketing, seeded
per-epoch permutation and DDP rank split), but holds only the index in memory: a batch reads
its own series' rows from the cache and is collated by :class:`~tsode.data.collate.SeriesDataset`
itself, on a table of just those series.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from tsode.data.atomic import atomic_path
from tsode.data.batch import IrregularBatch
from tsode.data.collate import SeriesDataset
from tsode.data.config import DEFAULT_LOADER, LoaderConfig, resolve_data_groups
from tsode.data.normalize import Normalizer
from tsode.data.sampler import LengthBucketSampler
from tsode.data.series import DataValidationError
from tsode.data.splits import SPLIT_NAMES, split_series
from tsode.data.streaming import CacheReport, SeriesCache, build_cache
from tsode.data.tables import TableSpec
from tsode.data.tasks import TaskConfig
from tsode.data.timeaxis import TimeAxis

#: task kinds whose context / target of a series depend on that series alone
STREAMABLE_TASKS = ("forecast", "extrapolation", "none")


class StreamingSeriesDataset(Dataset):
    """The usable series of one split under one task, read from a :class:`SeriesCache`.

    Items are dataset positions (as in :class:`SeriesDataset`); :meth:`collate` reads the
    batch's series (only theirs) and collates them with :meth:`SeriesDataset.collate`.

    Args:
        cache: the series cache.
        series: (S_split,) cache indices of the split, in split order.
        task / normalizer / static_normalizer / seed_offset: as for :class:`SeriesDataset`.
        chunk_series: series read at a time while measuring the context / target lengths.
    """

    def __init__(
        self,
        cache: SeriesCache,
        series: np.ndarray,
        task: TaskConfig,
        normalizer: Normalizer,
        static_normalizer: Normalizer | None,
        seed_offset: int = 0,
        chunk_series: int = 2048,
    ):
        if task.kind not in STREAMABLE_TASKS:
            raise NotImplementedError(
                f"StreamingTableDataModule: task kind {task.kind!r} is not streamed yet "
                f"(supported: {list(STREAMABLE_TASKS)}); use TableDataModule"
            )
        self.cache = cache
        self.task = task
        self.normalizer = normalizer
        self.static_normalizer = static_normalizer
        self.seed_offset = seed_offset
        series = np.asarray(series, dtype=np.int64)
        store = cache.path / f"lengths-{self._key(series)}.npz"
        if store.exists():  # measured at an earlier start: no pass over the rows
            with np.load(store) as saved:
                usable, lengths = saved["usable"], saved["lengths"]
        else:
            usable = np.zeros(len(series), dtype=bool)
            lengths = np.zeros((len(series), 2), dtype=np.int64)
            # one pass over the split, a chunk of series at a time (bounded memory): which
            # series the task can use, and their context / target lengths for bucketing
            # bucket by bucket, so that one bucket is mapped at a time
            buckets = cache.bucket[series]
            for b in np.unique(buckets):
                members = np.flatnonzero(buckets == b)
                for lo in range(0, len(members), chunk_series):
                    pos = members[lo: lo + chunk_series]
                    part = self._dataset(series[pos], keep_unusable=False)
                    usable[pos[part.indices]] = True
                    lengths[pos[part.indices]] = part.part_lengths
                cache.release()
            with atomic_path(store) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, usable=usable, lengths=lengths)
        self.series = series[usable]
        self.part_lengths = lengths[usable]
        self.num_excluded = int((~usable).sum())
        self.varies_by_epoch = False

    def _key(self, series: np.ndarray) -> str:
        """Digest of what the lengths depend on: the split's series, the task, the seed offset
        and the normalizers (whose overflow check the pass also makes)."""
        state = {
            "task": self.task.state_dict(), "seed_offset": self.seed_offset,
            "normalizer": self.normalizer.state_dict(),
            "static": None if self.static_normalizer is None
            else self.static_normalizer.state_dict(),
        }
        digest = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode())
        digest.update(np.ascontiguousarray(series, dtype=np.int64).tobytes())
        return digest.hexdigest()[:24]

    def _dataset(self, series: np.ndarray, keep_unusable: bool) -> SeriesDataset:
        return SeriesDataset(
            self.cache.read(series), self.task, self.normalizer, self.static_normalizer,
            seed_offset=self.seed_offset, keep_unusable=keep_unusable,
        )

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> int:
        return index

    @property
    def series_ids(self) -> list[Any]:
        return [self.cache.series_ids[i] for i in self.series]

    def collate(self, items: Sequence[int]) -> IrregularBatch:
        """One padded batch of dataset positions ``items`` (reads only those series)."""
        sel = np.asarray(items, dtype=np.int64)
        part = self._dataset(self.series[sel], keep_unusable=False)
        if len(part) != len(sel):  # the same task on the same rows: cannot change
            raise RuntimeError("StreamingSeriesDataset: a usable series became unusable")
        return part.collate(np.arange(len(sel)))


class StreamingTableDataModule(L.LightningDataModule):
    """A long or wide table (Parquet dataset / CSV) streamed through a series cache.

    Args:
        data: Parquet / CSV file(s), a directory (partitioned dataset) or a glob.
        cache_dir: where series caches are kept (one per source fingerprint).
        format, id_col, time_col, channel_col, value_col, value_cols, static_cols, label_col,
            time_unit, time_origin, duplicates, max_span_hours, encoding, channels: as for
            :class:`~tsode.data.table_module.TableDataModule` (numeric times only for now).
        num_buckets: cache buckets (default from the row count, see
            :func:`tsode.data.streaming.default_num_buckets`).
        batch_rows: rows per record batch of the index pass.
        task, loader, split_fractions, min_time_points, normalize, seed: as for
            :class:`~tsode.data.module.IrregularDataModule` (``splits`` / ``split_col``, the
            interpolation and classification tasks and ``train_cutoff_range`` are not
            streamed yet).
    """

    default_loader = DEFAULT_LOADER

    def __init__(
        self,
        data: Any,
        cache_dir: str | os.PathLike = ".tsode-cache",
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
        num_buckets: int | None = None,
        batch_rows: int = 262_144,
        task: TaskConfig | str | None = None,
        loader: LoaderConfig | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        min_time_points: int = 2,
        normalize: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.task, self.loader = resolve_data_groups(
            task, loader, {}, owner=type(self).__name__, default_kind="forecast",
            default_cutoff=None, default_loader=DEFAULT_LOADER, seed=seed,
        )
        if self.task.train_cutoff_range is not None:
            raise NotImplementedError(
                "StreamingTableDataModule: task.train_cutoff_range is not streamed yet"
            )
        self.data = data
        self.cache_dir = cache_dir
        self.spec = TableSpec(
            format=format, id_col=id_col, time_col=time_col, channel_col=channel_col,
            value_col=value_col, value_cols=value_cols, static_cols=static_cols or [],
            label_col=label_col, time_unit=time_unit, time_origin=time_origin,
            duplicates=duplicates, max_span_hours=max_span_hours, encoding=encoding,
        )
        self.fixed_channels = channels
        self.num_buckets = num_buckets
        self.batch_rows = batch_rows
        self.split_fractions = tuple(split_fractions)
        self.min_time_points = min_time_points
        self.normalize = normalize
        self.seed = seed
        self.cache: SeriesCache | None = None
        self.cache_report: CacheReport | None = None
        self.split_indices: dict[str, np.ndarray] = {}
        self.datasets: dict[str, StreamingSeriesDataset] = {}
        self._normalizer: Normalizer | None = None
        self._static_normalizer: Normalizer | None = None

    def _build_cache(self) -> tuple[SeriesCache, CacheReport]:
        return build_cache(
            self.data, self.spec, self.cache_dir, channels=self.fixed_channels,
            num_buckets=self.num_buckets, batch_rows=self.batch_rows,
        )

    def prepare_data(self) -> None:
        """The index pass, once per node (Lightning calls this on local rank 0 only, before
        ``setup`` on every rank); a no-op when the cache exists."""
        self._build_cache()

    def setup(self, stage: str | None = None) -> None:
        if self.cache is not None:
            return
        cache, self.cache_report = self._build_cache()
        keep = np.flatnonzero(cache.lengths >= self.min_time_points)
        if len(keep) == 0:
            raise DataValidationError(
                f"{type(self).__name__}: no series with at least {self.min_time_points} time points"
            )
        split = split_series(len(keep), self.split_fractions, self.seed)
        self.split_indices = {name: keep[split[name]] for name in SPLIT_NAMES}
        train = self.split_indices["train"]
        if self.normalize:
            self._normalizer = cache.normalizer(train)
            self._static_normalizer = (
                Normalizer.fit(cache.static[train], cache.static_names)
                if cache.static is not None else None
            )
        else:
            self._normalizer = Normalizer.identity(cache.channels)
            self._static_normalizer = None
        for k, name in enumerate(SPLIT_NAMES):
            self.datasets[name] = StreamingSeriesDataset(
                cache, self.split_indices[name], self.task, self._normalizer,
                self._static_normalizer, seed_offset=k,
            )
        self.cache = cache

    def _ensure_setup(self) -> None:
        if self.cache is None:
            self.setup()

    # ------------------------------------------------------------------ properties
    @property
    def channels(self) -> list[str]:
        self._ensure_setup()
        return list(self.cache.channels)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def static_names(self) -> list[str]:
        self._ensure_setup()
        return list(self.cache.static_names)

    @property
    def num_static(self) -> int:
        return len(self.static_names)

    @property
    def num_classes(self) -> int:
        return 0

    @property
    def normalizer(self) -> Normalizer:
        """Per-channel normalizer of the training split (from the cache's moments)."""
        self._ensure_setup()
        return self._normalizer

    @property
    def static_normalizer(self) -> Normalizer | None:
        self._ensure_setup()
        return self._static_normalizer

    @property
    def time_axis(self) -> TimeAxis:
        self._ensure_setup()
        return self.cache.time_axis

    @property
    def eval_batch_size(self) -> int:
        return self.loader.eval_batch_size or self.loader.batch_size

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: StreamingSeriesDataset, batch_size: int, shuffle: bool) -> DataLoader:
        # the sampler of IrregularDataModule._loader: seeded by seed + epoch; under DDP each
        # rank takes its share of one seeded permutation, so it reads only its own series
        sampler = LengthBucketSampler(
            dataset.part_lengths, batch_size, shuffle=shuffle, seed=self.seed,
            bucket=self.loader.bucketing,
        )
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=dataset.collate,
            num_workers=self.loader.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._loader(self.datasets["train"], self.loader.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._loader(self.datasets["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._loader(self.datasets["test"], self.eval_batch_size, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """Fitted state that travels with a model (as ``TableDataModule.state_dict``)."""
        self._ensure_setup()
        return {
            "channels": self.channels,
            "static_names": self.static_names,
            "normalizer": self._normalizer.state_dict(),
            "static_normalizer": (
                None if self._static_normalizer is None else self._static_normalizer.state_dict()
            ),
            "time_axis": self.time_axis.state_dict(),
            "task": self.task.state_dict(),
            "num_classes": 0,
            "table_spec": self.spec.state_dict(),
        }
