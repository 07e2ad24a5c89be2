"""Length-bucketing batch sampler: batches of series with similar lengths, so little padding."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from torch.utils.data import BatchSampler, DistributedSampler, Sampler


class LengthBucketSampler(BatchSampler):
    """Yield batches of indices whose ``lengths`` are close.

    Each epoch: shuffle (seeded by ``seed + epoch``), cut into pools of
    ``batch_size * pool_factor`` indices, sort each pool by length, cut pools into batches and
    shuffle the batch order. Without ``shuffle`` the order is deterministic: one pool holding
    everything.

    With two lengths per item (e.g. context and target time points, padded separately), a
    pool is sorted by the first, cut into about sqrt(batches per pool) chunks of whole
    batches, and each chunk sorted by the second before cutting batches, so both lengths are
    similar within a batch.

    Args:
        lengths: (N,) or (N, 2) per-item lengths (e.g. time points per series).
        batch_size: items per batch.
        shuffle: randomize pools and batch order each epoch.
        pool_factor: batches per sorting pool (larger: less padding, less randomness).
        drop_last: drop the last incomplete batch.
        seed: base seed; the shuffle uses ``seed + epoch``; :meth:`set_epoch` (or Lightning,
            through ``batch_sampler.sampler.set_epoch``) moves to the next epoch.
        sampler: optional source of the item indices to batch (default: all of
            ``range(len(lengths))``). It is a ``BatchSampler`` taking ``sampler`` so Lightning
            can inject a ``DistributedSampler`` under DDP and re-create it for prediction;
            ``set_epoch`` is forwarded to it.
        bucket: sort pools by length (False: plain seeded shuffled batches, same DDP rules).
        pad_ranks: under DDP, pad the items so every rank has the same number of batches
            (None: when ``shuffle``, i.e. for training; see below).
        lengths_at: ``epoch -> (N, 2)`` lengths, for a dataset whose items change from epoch
            to epoch (a training split with varying forecast cutoffs): batches are bucketed
            by that epoch's lengths, and items are yielded as ``(index, epoch)`` pairs so the
            collate function (in any DataLoader worker) builds that epoch's batch.

    Distributed training: when ``sampler`` is a plain ``torch.utils.data.DistributedSampler``
    (what Lightning injects under DDP), only its ``num_replicas``, ``rank`` and ``drop_last``
    are used. The split of items between ranks is this sampler's own: one permutation of all
    items seeded by ``seed + epoch`` (identical on every rank, whatever seed Lightning gave
    the injected sampler; without shuffling the order is ``range(N)``), rank ``r`` taking
    every ``num_replicas``-th item from ``r``, like ``DistributedSampler``. The ranks' shares
    are disjoint and together cover every item.

    - Training (``pad_ranks``, by default when ``shuffle``): the order is padded by
      repeating its first items to a multiple of ``num_replicas`` (or truncated with
      ``drop_last``), exactly like ``DistributedSampler``, so every rank has the same number
      of batches (each optimizer step all-reduces gradients over all ranks).
    - Evaluation (not ``pad_ranks``, by default when not ``shuffle``: validation and test
      loaders): no padding, so every item is scored exactly once and distributed metrics
      equal a single-process evaluation; the ranks' shares differ by at most one item, and so
      may their numbers of batches (evaluation steps have no collective operations; metrics
      are synchronized once, at the end of the epoch). With fewer items than ranks the order
      is padded as in training (a rank without batches would skip the epoch-end
      synchronization): the few repeats then count twice.

    Other index samplers (e.g. Lightning's unrepeated wrapper for prediction) are iterated
    as they are.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        shuffle: bool = True,
        pool_factor: int = 50,
        drop_last: bool = False,
        seed: int = 0,
        sampler: Iterable[int] | None = None,
        bucket: bool = True,
        pad_ranks: bool | None = None,
        lengths_at: Callable[[int], np.ndarray] | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim not in (1, 2) or (
            self.lengths.ndim == 2 and self.lengths.shape[1] != 2
        ):
            raise ValueError(f"lengths must be (N,) or (N, 2), got {self.lengths.shape}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.pool_factor = max(1, pool_factor)
        self.drop_last = drop_last
        self.seed = seed
        self.bucket = bucket
        self.pad_ranks = shuffle if pad_ranks is None else bool(pad_ranks)
        self.sampler = sampler if sampler is not None else EpochIndexSampler(len(self.lengths))
        self.lengths_at = lengths_at

    @property
    def epoch(self) -> int:
        """The epoch of the index sampler (Lightning sets it through ``batch_sampler.sampler``)."""
        return int(getattr(self.sampler, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def _distributed(self) -> DistributedSampler | None:
        """The injected DDP sampler whose rank/replica split this sampler takes over."""
        s = self.sampler
        return s if type(s) is DistributedSampler else None

    def rank_items(self) -> np.ndarray:
        """Indices this process batches in the current epoch (all of them without DDP)."""
        dist = self._distributed()
        if dist is None:
            return np.fromiter(iter(self.sampler), dtype=np.int64)
        n = len(self.lengths)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n, dtype=np.int64)
        replicas = dist.num_replicas
        if self._padded(dist):
            if dist.drop_last:
                order = order[: (n // replicas) * replicas]
            else:
                total = -(-n // replicas) * replicas
                if total > n:
                    order = np.concatenate([order, np.resize(order, total - n)])
        return order[dist.rank :: replicas]

    def _padded(self, dist: DistributedSampler) -> bool:
        """Whether the ranks' shares are padded (or truncated) to equal sizes (see class doc)."""
        return self.pad_ranks or len(self.lengths) < dist.num_replicas

    def rank_size(self) -> int:
        """Number of items this process batches per epoch."""
        dist = self._distributed()
        if dist is None:
            return len(self.sampler)
        n, replicas = len(self.lengths), dist.num_replicas
        if not self._padded(dist):
            return len(range(dist.rank, n, replicas))
        return n // replicas if dist.drop_last else -(-n // replicas)

    def _batches(self) -> list[np.ndarray]:
        items = self.rank_items()
        lengths = self.lengths if self.lengths_at is None else self.lengths_at(self.epoch)
        if not self.bucket:
            if self.shuffle:
                rng = np.random.default_rng(self.seed + self.epoch)
                items = items[rng.permutation(len(items))]
            return self._cut(items)
        if not self.shuffle:
            return self._sorted_batches(items, lengths)
        rng = np.random.default_rng(self.seed + self.epoch)
        perm = items[rng.permutation(len(items))]
        n = len(perm)
        pool = self.batch_size * self.pool_factor
        batches: list[np.ndarray] = []
        for start in range(0, n, pool):
            batches.extend(self._sorted_batches(perm[start : start + pool], lengths))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def _sorted_batches(self, items: np.ndarray, all_lengths: np.ndarray) -> list[np.ndarray]:
        lengths = all_lengths[items]
        if lengths.ndim == 1:
            return self._cut(items[np.argsort(lengths, kind="stable")])
        items = items[np.argsort(lengths[:, 0], kind="stable")]
        num_batches = -(-len(items) // self.batch_size)
        per_chunk = max(1, int(np.ceil(num_batches / max(1, round(np.sqrt(num_batches))))))
        chunk = per_chunk * self.batch_size
        out: list[np.ndarray] = []
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            second = all_lengths[part][:, 1]
            out.extend(self._cut(part[np.argsort(second, kind="stable")]))
        return out

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        out = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        if self.lengths_at is None:
            for batch in self._batches():
                yield batch.tolist()
        else:
            epoch = self.epoch
            for batch in self._batches():
                yield [(i, epoch) for i in batch.tolist()]

    def __len__(self) -> int:
        n = self.rank_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class EpochIndexSampler(Sampler[int]):
    """``range(n)`` in order, carrying the epoch number (``set_epoch``) for seeded shuffling."""

    def __init__(self, n: int):
        self.n = n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def padding_fraction(lengths: np.ndarray, batches: Sequence[Sequence[int]]) -> float:
    """Fraction of padded time points over ``batches`` (each padded to its longest item).

    ``lengths`` (N,) or (N, K): with K columns each is padded separately (e.g. context and
    target parts) and the fraction is over all of them.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim == 1:
        lengths = lengths[:, None]
    total = padded = 0
    for b in batches:
        lb = lengths[np.asarray(b)]
        full = lb.max(0) * len(lb)
        total += full.sum()
        padded += (full - lb.sum(0)).sum()
    return float(padded / total) if total else 0.0
