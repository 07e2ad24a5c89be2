"""``StreamingTableDataModule``: a table larger than memory, read series by series from the
memory-mapped cache of :mod:`tsode.data.streaming`.

The module is a :class:`~tsode.data.table_module.TableDataModule` (same arguments, same
``setup`` stages of :class:`~tsode.data.module.IrregularDataModule`: split, classes,
normalizers, datasets, checks and warnings) whose series are known by a
:class:`~tsode.data.streaming.SeriesCache` instead of an in-memory table. It gives the batches
``TableDataModule`` gives for the same table and settings (same split, normalizer up to float
rounding, task, bucketing, seeded per-epoch permutation and DDP rank split), but holds only the
index in memory: a batch reads its own series' rows from the cache and is collated by
:class:`~tsode.data.collate.SeriesDataset` itself, on a table of just those series, with the
seeded draws of the whole split (interpolation hold-out, training cutoffs).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from tsode.data.atomic import atomic_path
from tsode.data.batch import IrregularBatch
from tsode.data.collate import SeriesDataset
from tsode.data.fitted import build_dataset
from tsode.data.normalize import Normalizer
from tsode.data.series import SeriesTable
from tsode.data.streaming import CacheReport, SeriesCache, build_cache
from tsode.data.summary import DataSummary
from tsode.data.table_module import TableDataModule
from tsode.data.tasks import TaskConfig

#: what a lengths file holds (part of its key): bump when that changes
LENGTHS_LAYOUT = 2
#: the reasons :meth:`SeriesDataset.excluded_reasons` counts, in the lengths file's order
REASONS = ("no_context", "no_target", "no_label")


class StreamingSeriesDataset(Dataset):
    """The usable series of one split under one task, read from a :class:`SeriesCache`.

    Items are dataset positions (or ``(position, epoch)`` pairs, as for
    :class:`SeriesDataset`); :meth:`collate` reads the batch's series (only theirs) and
    collates them with :meth:`SeriesDataset.collate`, passing each series' position and first
    row in the split so the seeded draws are those of the whole split.

    Args:
        cache: the series cache.
        series: (S_split,) cache indices of the split, in split order.
        task / normalizer / static_normalizer / seed_offset / vary_cutoff: as for
            :class:`SeriesDataset`.
        chunk_series: series read at a time by the passes over the split (lengths).
    """

    def __init__(
        self,
        cache: SeriesCache,
        series: np.ndarray,
        task: TaskConfig,
        normalizer: Normalizer,
        static_normalizer: Normalizer | None,
        seed_offset: int = 0,
        vary_cutoff: bool = False,
        chunk_series: int = 2048,
    ):
        self.cache = cache
        self.task = task
        self.normalizer = normalizer
        self.static_normalizer = static_normalizer
        self.seed_offset = seed_offset
        self.chunk_series = chunk_series
        self.split = np.asarray(series, dtype=np.int64)
        lengths = cache.lengths[self.split]
        #: (S_split,) first row of each split series in the split's table (seeded hold-out)
        self.row_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.varies_by_epoch = bool(vary_cutoff and task.train_cutoff_range is not None)
        store = cache.path / f"lengths-{self._key()}.npz"
        if store.exists():  # measured at an earlier start: no pass over the rows
            with np.load(store) as saved:
                usable, part_lengths, reasons = saved["usable"], saved["lengths"], saved["reasons"]
        else:
            usable = np.zeros(len(self.split), dtype=bool)
            part_lengths = np.zeros((len(self.split), 2), dtype=np.int64)
            reasons = np.zeros(len(REASONS), dtype=np.int64)
            for pos, part in self._chunks(np.arange(len(self.split))):
                usable[pos[part.indices]] = True
                part_lengths[pos[part.indices]] = part.part_lengths
                for reason, n in part.excluded_reasons().items():
                    reasons[REASONS.index(reason)] += n
            with atomic_path(store) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, usable=usable, lengths=part_lengths, reasons=reasons)
        #: (S,) positions in the split of the usable series; their cache indices
        self.positions = np.flatnonzero(usable)
        self.series = self.split[usable]
        self.part_lengths = part_lengths[usable]
        self.num_excluded = int((~usable).sum())
        self._reasons = {r: int(n) for r, n in zip(REASONS, reasons) if n}
        self._epoch_lengths: tuple[int, np.ndarray] | None = None

    def _key(self) -> str:
        """Digest of what the lengths depend on: the split's series, the task, the seed offset
        and the normalizers (whose overflow check the pass also makes)."""
        state = {
            "layout": LENGTHS_LAYOUT,
            "task": self.task.state_dict(), "seed_offset": self.seed_offset,
            "normalizer": self.normalizer.state_dict(),
            "static": None if self.static_normalizer is None
            else self.static_normalizer.state_dict(),
        }
        digest = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode())
        digest.update(np.ascontiguousarray(self.split, dtype=np.int64).tobytes())
        return digest.hexdigest()[:24]

    def _chunks(self, positions: np.ndarray):
        """``(positions, dataset)`` of ``positions`` (split positions), ``chunk_series`` at a
        time and bucket by bucket, so that one bucket is mapped at a time (bounded memory)."""
        buckets = self.cache.bucket[self.split[positions]]
        for b in np.unique(buckets):
            members = positions[buckets == b]
            for lo in range(0, len(members), self.chunk_series):
                pos = members[lo: lo + self.chunk_series]
                yield pos, self._dataset(pos)
            self.cache.release()

    def _dataset(self, positions: np.ndarray) -> SeriesDataset:
        """The split's series at ``positions``, read from the cache, under the task."""
        table: SeriesTable = self.cache.read(self.split[positions])
        return build_dataset(
            table, self.task, None, None, self.normalizer, self.static_normalizer,
            seed_offset=self.seed_offset, keep_unusable=False, vary_cutoff=self.varies_by_epoch,
            positions=positions, row_start=self.row_start[positions],
        )

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int | tuple[int, int]) -> int | tuple[int, int]:
        return index

    @property
    def series_ids(self) -> list[Any]:
        return [self.cache.series_ids[i] for i in self.series]

    def excluded_reasons(self) -> dict[str, int]:
        """As :meth:`SeriesDataset.excluded_reasons` (counted by the lengths pass)."""
        return dict(self._reasons)

    def part_lengths_at(self, epoch: int | None) -> np.ndarray:
        """(len, 2) context and target time points per series in ``epoch`` (as
        :meth:`SeriesDataset.part_lengths_at`). With varying training cutoffs this is a pass
        over the split's rows (chunked, as the lengths pass), once per epoch."""
        if epoch is None or not self.varies_by_epoch:
            return self.part_lengths
        if self._epoch_lengths is not None and self._epoch_lengths[0] == epoch:
            return self._epoch_lengths[1]
        out = np.zeros((len(self.series), 2), dtype=np.int64)
        for pos, part in self._chunks(self.positions):
            if len(part) != len(pos):  # the same task on the same rows: cannot change
                raise RuntimeError("StreamingSeriesDataset: a usable series became unusable")
            out[np.searchsorted(self.positions, pos)] = part.part_lengths_at(epoch)
        self._epoch_lengths = (epoch, out)
        return out

    def collate(self, items: Sequence[int] | Sequence[tuple[int, int]]) -> IrregularBatch:
        """One padded batch of dataset positions ``items`` (reads only those series)."""
        paired = len(items) and isinstance(items[0], tuple | list)
        sel = np.asarray([i for i, _ in items] if paired else items, dtype=np.int64)
        part = self._dataset(self.positions[sel])
        if len(part) != len(sel):  # the same task on the same rows: cannot change
            raise RuntimeError("StreamingSeriesDataset: a usable series became unusable")
        local = range(len(sel))
        return part.collate([(j, e) for j, (_, e) in zip(local, items)] if paired else list(local))


class StreamingTableDataModule(TableDataModule):
    """A long or wide table (Parquet dataset / CSV) streamed through a series cache.

    Args:
        data: Parquet / CSV file(s), a directory (partitioned dataset) or a glob.
        cache_dir: where series caches are kept (one per source fingerprint).
        num_buckets: cache buckets (default from the row count, see
            :func:`tsode.data.streaming.default_num_buckets`).
        batch_rows: rows per record batch of the index pass.
        max_resident_mb: peak memory of the index pass aimed at, in MiB (instead of
            ``num_buckets``: the bucket count from
            :func:`tsode.data.streaming.buckets_for_budget`, an estimate from measured bytes
            per source row, docs/scale.md). Batches are bounded by ``loader.batch_size``.
        table: every argument of :class:`~tsode.data.table_module.TableDataModule` (columns,
            policies, ``channels``, ``split_col``) and of
            :class:`~tsode.data.module.IrregularDataModule` (``task``, ``loader``,
            ``split_fractions``, ``splits``, ``min_time_points``, ``normalize``, ``seed``).
    """

    def __init__(
        self,
        data: Any,
        cache_dir: str | os.PathLike = ".tsode-cache",
        num_buckets: int | None = None,
        batch_rows: int = 262_144,
        max_resident_mb: float | None = None,
        **table: Any,
    ):
        if num_buckets is not None and max_resident_mb is not None:
            raise ValueError("give num_buckets or max_resident_mb, not both")
        super().__init__(data, **table)
        self.cache_dir = cache_dir
        self.num_buckets = num_buckets
        self.batch_rows = batch_rows
        self.max_resident_mb = max_resident_mb
        self.cache: SeriesCache | None = None
        self.cache_report: CacheReport | None = None

    @property
    def _index(self) -> SeriesCache | None:
        return self.cache

    def _reset(self) -> None:
        self.cache = None
        self.datasets = {}

    def load_table(self) -> SeriesTable:
        raise TypeError(
            f"{type(self).__name__} does not load the table into memory; its series are read "
            f"from the cache (see .cache)"
        )

    def _build_cache(self) -> tuple[SeriesCache, CacheReport]:
        loaded = self._loaded_state
        channels = loaded["channels"] if loaded is not None else self.fixed_channels
        return build_cache(
            self.data, self.spec, self.cache_dir, channels=channels,
            num_buckets=self.num_buckets, batch_rows=self.batch_rows,
            max_resident_mb=self.max_resident_mb,
        )

    def prepare_data(self) -> None:
        """The index pass, once per node (Lightning calls this on local rank 0 only, before
        ``setup`` on every rank); a no-op when the cache exists."""
        self._build_cache()

    def setup(self, stage: str | None = None) -> None:
        if self.cache is not None:
            return
        cache, self.cache_report = self._build_cache()
        counts = dict(cache.meta["info"])
        if self.spec.split_col is not None:
            self.splits = cache.column_splits()
        self.cache = cache
        try:
            listed = np.arange(cache.num_series)
            ids: Sequence[Any] = cache.series_ids
            if self.splits is not None:
                listed = self._listed_series(cache.series_ids, cache.source, counts)
                ids = [cache.series_ids[i] for i in listed]
            keep, short_ids = self._enough_time_points(cache.lengths[listed], ids, counts)
            keep = listed[keep]
            self._setup_splits(keep, counts)
        except BaseException:
            self._reset()
            raise
        spans = (cache.last_time - cache.first_time)[keep]
        spans = spans[~np.isnan(spans)]
        self._check_task_leaves_series(len(keep), spans)
        self._warn_dropped_series(short_ids, len(listed))
        self._summary = DataSummary.from_counts(
            cache.channels, cache.lengths[keep], spans, self._channel_counts(keep), counts
        )
        self._warn_unobserved_channels()

    def _fit_normalizers(self, train: np.ndarray) -> tuple[Normalizer, Normalizer | None]:
        """From the cache's per-series moments (no pass over the rows)."""
        cache = self.cache
        return cache.normalizer(train), (
            Normalizer.fit(cache.static[train], cache.static_names)
            if cache.static is not None else None
        )

    def _channel_counts(self, indices: np.ndarray) -> np.ndarray:
        return self.cache.channel_counts(indices)

    def _split_dataset(self, indices: np.ndarray, seed_offset: int) -> StreamingSeriesDataset:
        return StreamingSeriesDataset(
            self.cache, indices, self.task, self._normalizer, self._static_normalizer,
            seed_offset=seed_offset, vary_cutoff=seed_offset == 0,
        )
