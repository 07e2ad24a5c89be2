"""Vectorized collation of irregular series into padded :class:`IrregularBatch` objects.

``SeriesDataset`` is a map-style dataset over the usable series of one split under one task;
item ``i`` is just ``i`` and :meth:`SeriesDataset.collate` builds the whole batch with array
indexing (no per-observation Python loops).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.data.normalize import Normalizer
from tsode.data.series import SeriesTable, concat_ranges
from tsode.data.tasks import (
    TaskAssignment,
    TaskConfig,
    assign_task,
    draw_training_cutoffs,
    forecast_cutoffs,
)


def pad_part(
    times: np.ndarray,
    values: np.ndarray,
    part_rows: np.ndarray,
    part_offsets: np.ndarray,
    entries: np.ndarray,
    batch_series: np.ndarray,
    fallback_time: np.ndarray | None = None,
) -> SeriesPart:
    """Gather selected rows of the chosen series into one padded ``SeriesPart``.

    Args:
        times: (N,) hours of every row of the table.
        values: (N, C) normalized values (any value where unobserved; masked to 0 here).
        part_rows: (R,) row indices of this part for all series of the dataset, grouped by
            series; series ``j`` owns ``part_rows[part_offsets[j]:part_offsets[j + 1]]``.
        part_offsets: (S+1,) boundaries into ``part_rows``.
        entries: (N, C) bool entry mask of this part.
        batch_series: (B,) dataset series indices to put in the batch.
        fallback_time: (B,) time used to fill rows of series with an empty part.
    """
    bsz = len(batch_series)
    counts = part_offsets[batch_series + 1] - part_offsets[batch_series]
    rows = part_rows[concat_ranges(part_offsets[batch_series], counts)]
    b = np.repeat(np.arange(bsz), counts)
    pos = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    length = max(int(counts.max()) if bsz else 0, 1)
    num_c = values.shape[1]
    t = np.zeros((bsz, length), dtype=np.float64)
    v = np.zeros((bsz, length, num_c), dtype=np.float32)
    m = np.zeros((bsz, length, num_c), dtype=bool)
    row_mask = entries[rows]
    t[b, pos] = times[rows]
    v[b, pos] = np.where(row_mask, values[rows], 0.0)
    m[b, pos] = row_mask
    last = t[np.arange(bsz), np.maximum(counts - 1, 0)]
    if fallback_time is not None:
        last = np.where(counts > 0, last, fallback_time)
    real = np.arange(length)[None, :] < counts[:, None]
    t = np.where(real, t, last[:, None])
    return SeriesPart(
        times=torch.from_numpy(t.astype(np.float32)),
        values=torch.from_numpy(v),
        mask=torch.from_numpy(m),
        lengths=torch.from_numpy(counts.astype(np.int64)),
    )


def _grouped_rows(flags: np.ndarray, offsets: np.ndarray, series: np.ndarray):
    """Rows with ``flags`` for each of ``series`` (in order), plus their offsets."""
    lens = offsets[series + 1] - offsets[series]
    rows = concat_ranges(offsets[series], lens)
    keep = flags[rows]
    rows = rows[keep]
    counts = np.bincount(np.repeat(np.arange(len(series)), lens)[keep], minlength=len(series))
    part_offsets = np.zeros(len(series) + 1, dtype=np.int64)
    np.cumsum(counts, out=part_offsets[1:])
    return rows, part_offsets


class SeriesDataset(Dataset):
    """The usable series of one table under one task, collated into ``IrregularBatch``.

    Args:
        table: series in original units.
        task: context/target definition.
        normalizer: per-channel normalizer (fitted on the training split), channel order must
            match ``table.channels``.
        static_normalizer: normalizer for static covariates (or None to leave them raw).
        seed_offset: distinguishes splits for seeded tasks (interpolation hold-out).
        keep_unusable: keep series with an empty target (prediction use) instead of excluding.
        vary_cutoff: draw each epoch's forecast cutoffs from ``task.train_cutoff_range`` (the
            training split). Items are then ``(index, epoch)`` pairs (see
            :class:`~tsode.data.sampler.LengthBucketSampler`'s ``lengths_at``); a series whose
            drawn cutoff leaves it an empty context or target keeps the task's own cutoff.
        positions / row_start: (S,) each series' position and first row in the whole split
            when ``table`` holds a part of it (a batch streamed from a cache): the seeded
            draws (interpolation hold-out, training cutoffs) are then those of the whole split
            (see :func:`~tsode.data.tasks.uniform_stream`). None: ``table`` is the split.
    """

    def __init__(
        self,
        table: SeriesTable,
        task: TaskConfig,
        normalizer: Normalizer,
        static_normalizer: Normalizer | None = None,
        seed_offset: int = 0,
        keep_unusable: bool = False,
        vary_cutoff: bool = False,
        positions: np.ndarray | None = None,
        row_start: np.ndarray | None = None,
    ):
        if normalizer.names != table.channels:
            raise ValueError(
                f"normalizer channels {normalizer.names} != table channels {table.channels}"
            )
        self.table = table
        self.task = task
        self.normalizer = normalizer
        self.static_normalizer = static_normalizer
        self.positions = positions
        self.assignment: TaskAssignment = assign_task(table, task, seed_offset, row_start=row_start)
        usable = self.assignment.usable
        if keep_unusable:
            usable = self.assignment.context_lengths > 0
        self.indices = np.flatnonzero(usable)
        self.num_excluded = int(table.num_series - len(self.indices))
        self.values, _ = table.normalized(normalizer)
        a = self.assignment
        self._parts = self._grouped(a)
        self._ctx_rows, self._ctx_off, self._tgt_rows, self._tgt_off = self._parts
        self.varies_by_epoch = bool(vary_cutoff and task.train_cutoff_range is not None)
        self._epoch_cache: tuple[int, tuple[TaskAssignment, tuple]] | None = None
        self.static: torch.Tensor | None = None
        if table.static is not None and table.num_static > 0:
            static = table.static
            if static_normalizer is not None:
                static = static_normalizer.transform(static)
            static = np.where(np.isnan(static), 0.0, static).astype(np.float32)
            self.static = torch.from_numpy(static[self.indices])
        self.labels: torch.Tensor | None = None
        if table.labels is not None:
            self.labels = torch.from_numpy(table.labels[self.indices].astype(np.float32))
        self.time_offset = torch.from_numpy(table.time_offset[self.indices])
        self.series_ids = [table.series_ids[i] for i in self.indices]

    def _grouped(self, a: TaskAssignment) -> tuple:
        offsets = self.table.offsets
        ctx_rows, ctx_off = _grouped_rows(a.context_rows, offsets, self.indices)
        tgt_rows, tgt_off = _grouped_rows(a.target_rows, offsets, self.indices)
        return ctx_rows, ctx_off, tgt_rows, tgt_off

    def excluded_reasons(self) -> dict[str, int]:
        """Series of the table the task excludes, by reason (zero counts left out):
        ``no_context`` (nothing observed in the context), ``no_target`` (nothing to predict)
        or, for classification, ``no_label`` (label unknown)."""
        a = self.assignment
        offsets = self.table.offsets
        csum = np.concatenate([[0], np.cumsum(a.context_entries.any(1), dtype=np.int64)])
        has_context = (csum[offsets[1:]] - csum[offsets[:-1]]) > 0
        excluded = np.ones(self.table.num_series, dtype=bool)
        excluded[self.indices] = False
        if self.task.kind == "classification":
            labels = self.table.labels
            unknown = np.ones(len(excluded), bool) if labels is None else np.isnan(labels)
            reasons = {
                "no_context": excluded & ~has_context,
                "no_label": excluded & has_context & unknown,
            }
        else:
            reasons = {
                "no_context": excluded & ~has_context,
                "no_target": excluded & has_context & (a.target_lengths == 0),
            }
        return {name: int(flags.sum()) for name, flags in reasons.items() if flags.any()}

    def _at_epoch(self, epoch: int | None) -> tuple[TaskAssignment, tuple]:
        """The assignment and grouped rows of ``epoch`` (None, or a fixed task: the task's)."""
        if epoch is None or not self.varies_by_epoch:
            return self.assignment, self._parts
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        table, task = self.table, self.task
        base = self.assignment
        base_cut = forecast_cutoffs(table, task)
        cutoffs = draw_training_cutoffs(table, task, epoch, positions=self.positions)
        drawn = assign_task(table, task, cutoffs=cutoffs)
        fallback = base.usable & ~drawn.usable
        if fallback.any():
            cutoffs = np.where(fallback, base_cut, cutoffs)
            drawn = assign_task(table, task, cutoffs=cutoffs)
        self._epoch_cache = (epoch, (drawn, self._grouped(drawn)))
        return self._epoch_cache[1]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int | tuple[int, int]) -> int | tuple[int, int]:
        return index

    @property
    def lengths(self) -> np.ndarray:
        """(len,) context + target time points per series."""
        return np.diff(self._ctx_off) + np.diff(self._tgt_off)

    @property
    def part_lengths(self) -> np.ndarray:
        """(len, 2) context and target time points per series (used for length bucketing)."""
        return self.part_lengths_at(None)

    def part_lengths_at(self, epoch: int | None) -> np.ndarray:
        """(len, 2) context and target time points per series in ``epoch`` (see
        ``vary_cutoff``; None: under the task's own cutoff)."""
        _, (_, ctx_off, _, tgt_off) = self._at_epoch(epoch)
        return np.stack([np.diff(ctx_off), np.diff(tgt_off)], axis=1)

    def collate(self, items: Sequence[int] | Sequence[tuple[int, int]]) -> IrregularBatch:
        """Build one padded batch from dataset positions ``items`` (or ``(position, epoch)``
        pairs, see ``vary_cutoff``)."""
        epoch = None
        if len(items) and isinstance(items[0], tuple | list):
            epochs = {int(e) for _, e in items}
            if len(epochs) != 1:
                raise ValueError(f"one batch spans several epochs: {sorted(epochs)}")
            epoch = epochs.pop()
            items = [i for i, _ in items]
        assignment, (ctx_rows, ctx_off, tgt_rows, tgt_off) = self._at_epoch(epoch)
        sel = np.asarray(items, dtype=np.int64)
        table = self.table
        context = pad_part(
            table.times,
            self.values,
            ctx_rows,
            ctx_off,
            assignment.context_entries,
            sel,
        )
        ctx_last = context.times[:, -1].numpy().astype(np.float64)
        target = pad_part(
            table.times,
            self.values,
            tgt_rows,
            tgt_off,
            assignment.target_entries,
            sel,
            fallback_time=ctx_last,
        )
        index = torch.from_numpy(sel)
        return IrregularBatch(
            context=context,
            target=target,
            static=None if self.static is None else self.static[index],
            labels=None if self.labels is None else self.labels[index],
            series_ids=[self.series_ids[i] for i in sel],
            channels=list(table.channels),
            time_offset=self.time_offset[index],
        )
