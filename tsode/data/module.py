"""Base LightningDataModule shared by every tsode dataset.

A subclass only implements :meth:`IrregularDataModule.load_table` (returning a
``SeriesTable`` in original units). The base class drops too-short series (counted), splits
by series, fits the per-channel normalizer on the training split, builds the task's
context/target views and serves ``IrregularBatch`` dataloaders (length-bucketed by default).
The task and the loader are typed blocks (``task:`` / ``loader:``, :mod:`tsode.data.config`).

Why one long module (a little over 500 lines): the split, the drop counts, the normalizers and
the task's views are one ``setup`` over the same table, and the report of dropped series
(per split and reason) reads all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import numpy as np
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from tsode.data.collate import SeriesDataset
from tsode.data.config import DEFAULT_LOADER, LoaderConfig, exclusive_cutoff, resolve_data_groups
from tsode.data.fitted import FittedData, build_dataset
from tsode.data.normalize import Normalizer
from tsode.data.sampler import LengthBucketSampler
from tsode.data.series import DataValidationError, SeriesTable, show
from tsode.data.splits import SPLIT_NAMES, split_series
from tsode.data.summary import DataSummary
from tsode.data.tasks import TaskConfig, class_labels, num_classes_of
from tsode.data.timeaxis import TimeAxis

log = logging.getLogger("tsode.data")


class IrregularDataModule(L.LightningDataModule):
    """Common DataModule logic (see module docstring).

    Args:
        task: the task block (:class:`~tsode.data.tasks.TaskConfig`: kind, cutoff /
            cutoff_fraction, horizon, holdout_fraction, context_boundary, seed), a mapping of
            its fields, or a kind as shorthand (``"forecast"`` is ``TaskConfig(kind="forecast")``).
            None: :attr:`default_task`. A forecast naming neither cutoff nor cutoff_fraction
            observes :attr:`default_cutoff` hours when the dataset has one (else half of each
            series' span).
        loader: the loader block (:class:`~tsode.data.config.LoaderConfig`: batch_size,
            eval_batch_size, bucketing, num_workers); fields left None take
            :attr:`default_loader`'s.
        split_fractions: train/val/test fractions of series.
        splits: explicit split instead of ``split_fractions``: ``{"train": [series ids], "val":
            [...], "test": [...]}`` (original ids; missing keys mean empty splits). Ids not in
            the table or listed in two splits raise ``DataValidationError`` naming them; series
            of the table not listed are left out (counted and logged).
        min_time_points: series with fewer time points are dropped (counted in the summary).
        normalize: standardize channels (and static covariates) with train statistics.
        seed: seeds the split, the task's random hold-out (unless ``task.seed`` is set) and
            batch shuffling (``seed + epoch``; under DDP every rank derives the same split of
            batches from it).
        legacy: former flat task / loader arguments (``cutoff=24.0``, ``batch_size=64``, ...),
            mapped into the blocks with a ``DeprecationWarning``.

    The split, ``min_time_points``, ``normalize`` and ``seed`` stay flat: they say what the
    dataset is (which series, in which split, in which units) whatever the task and the
    loader, and one seed keeps a run reproducible (docs/data.md, "Configuration blocks").
    """

    #: task kind when ``task`` is None
    default_task: ClassVar[str] = "forecast"
    #: hours observed by a forecast naming neither cutoff nor cutoff_fraction (None: half the span)
    default_cutoff: ClassVar[float | None] = None
    #: loader settings for the fields ``loader`` leaves None
    default_loader: ClassVar[LoaderConfig] = DEFAULT_LOADER

    def __init__(
        self,
        task: TaskConfig | str | None = None,
        loader: LoaderConfig | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        splits: Mapping[str, Sequence[Any]] | None = None,
        min_time_points: int = 2,
        normalize: bool = True,
        seed: int = 0,
        **legacy: Any,
    ):
        super().__init__()
        self.task, self.loader = resolve_data_groups(
            task,
            loader,
            legacy,
            owner=type(self).__name__,
            default_kind=self.default_task,
            default_cutoff=self.default_cutoff,
            default_loader=self.default_loader.over(DEFAULT_LOADER),
            seed=seed,
        )
        self.split_fractions = tuple(split_fractions)
        if splits is not None:
            unknown_keys = sorted(set(splits) - set(SPLIT_NAMES))
            if unknown_keys:
                raise ValueError(f"splits: unknown split names {unknown_keys}; use {SPLIT_NAMES}")
            splits = {name: list(splits.get(name, ())) for name in SPLIT_NAMES}
        self.splits = splits
        self.min_time_points = min_time_points
        self.normalize = normalize
        self.seed = seed
        self.table: SeriesTable | None = None
        self.split_indices: dict[str, np.ndarray] = {}
        self.datasets: dict[str, SeriesDataset] = {}
        self._normalizer: Normalizer | None = None
        self._static_normalizer: Normalizer | None = None
        self._summary: DataSummary | None = None
        self._loaded_state: dict[str, Any] | None = None
        self._dropped: dict[str, dict[str, int]] = {}
        self._num_classes = 0

    # ------------------------------------------------------------------ to implement
    def load_table(self) -> SeriesTable:
        """Return every series of the dataset in original units."""
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self._index is not None:
            return
        table = self.load_table()
        counts = dict(table.info)
        if self.splits is not None:
            listed = self._listed_series(table.series_ids, table.source, counts)
            if len(listed) < table.num_series:
                table = table.subset(listed)
        keep, short_ids = self._enough_time_points(table.lengths, table.series_ids, counts)
        loaded_series = table.num_series
        if len(keep) < table.num_series:
            table = table.subset(keep)
        if self._loaded_state is not None and table.channels != self._loaded_state["channels"]:
            table = table.with_channels(self._loaded_state["channels"])  # unknown ones raise
        self.table = table
        self._setup_splits(np.arange(table.num_series), counts)
        has = table.lengths > 0
        ends, starts = table.offsets[1:][has] - 1, table.offsets[:-1][has]
        self._check_task_leaves_series(table.num_series, table.times[ends] - table.times[starts])
        self._warn_dropped_series(short_ids, loaded_series)
        self._summary = DataSummary.from_table(table, counts)
        log.info("%s summary:\n%s", type(self).__name__, self._summary)

    def _enough_time_points(
        self, lengths: np.ndarray, series_ids: Sequence[Any], counts: dict[str, Any]
    ) -> tuple[np.ndarray, list[Any]]:
        """Positions of the series with at least ``min_time_points`` time points and the ids
        of the others (counted in ``counts``); no series left raises."""
        keep = np.flatnonzero(lengths >= self.min_time_points)
        short_ids = [series_ids[i] for i in np.flatnonzero(lengths < self.min_time_points)]
        counts["series_dropped_too_few_time_points"] = len(short_ids)
        counts["min_time_points"] = self.min_time_points
        if len(keep) == 0:
            raise DataValidationError(
                f"{type(self).__name__}: no series with at least {self.min_time_points} time points"
            )
        return keep, short_ids

    def _setup_splits(self, keep: np.ndarray, counts: dict[str, Any]) -> None:
        """Split the series ``keep`` (positions in :attr:`_index`), set the classes and the
        normalizers (restored, fitted on the training split or identity) and build each
        split's dataset (:meth:`_split_dataset`)."""
        index = self._index
        if self.splits is not None:
            parts = self._explicit_split_indices([index.series_ids[i] for i in keep])
        else:
            parts = split_series(len(keep), self.split_fractions, self.seed)
        self.split_indices = {name: keep[parts[name]] for name in SPLIT_NAMES}
        self._setup_classes(index)
        if self._loaded_state is not None:
            self._normalizer = Normalizer.from_state_dict(self._loaded_state["normalizer"])
            sn = self._loaded_state.get("static_normalizer")
            self._static_normalizer = None if sn is None else Normalizer.from_state_dict(sn)
        elif self.normalize:
            self._normalizer, self._static_normalizer = self._fit_normalizers(
                self.split_indices["train"]
            )
        else:
            self._normalizer = Normalizer.identity(index.channels)
            self._static_normalizer = None
        for k, name in enumerate(SPLIT_NAMES):
            self.datasets[name] = self._split_dataset(self.split_indices[name], k)
            counts[f"{name}_series_excluded_by_task"] = self.datasets[name].num_excluded

    def _fit_normalizers(self, train: np.ndarray) -> tuple[Normalizer, Normalizer | None]:
        """The channel and static normalizers of the training series ``train``."""
        part = self.table.subset(train)
        return Normalizer.fit(part.values, part.channels), (
            Normalizer.fit(part.static, part.static_names) if part.num_static else None
        )

    def set_task(self, **changes: Any) -> None:
        """Re-derive every split's context and target under the task with ``changes`` (e.g.
        ``cutoff=20.0, horizon=12.0`` at predict time); the table, split and normalizers stay.
        ``cutoff`` replaces a ``cutoff_fraction`` and vice versa."""
        self._ensure_setup()
        self.task = dataclasses.replace(self.task, **exclusive_cutoff(changes))  # validated
        self._setup_classes(self._index)
        for k, name in enumerate(SPLIT_NAMES):
            self.datasets[name] = self._split_dataset(self.split_indices[name], k)

    def _split_dataset(self, indices: np.ndarray, seed_offset: int) -> SeriesDataset:
        """The series ``indices`` of split ``seed_offset`` (0 / 1 / 2: train / val / test)
        under the module's task, built as every dataset of a table is
        (:func:`tsode.data.fitted.build_dataset`)."""
        return build_dataset(
            self.table.subset(indices), self.task, None, None, self._normalizer,
            self._static_normalizer, seed_offset=seed_offset, keep_unusable=False,
            vary_cutoff=seed_offset == 0,
        )

    def _setup_classes(self, table: SeriesTable) -> None:
        """Classification: check the labels (integers 0..K-1, see
        :func:`tsode.data.tasks.class_labels`) and set :attr:`num_classes` from the training
        split's labels (at least 2); other tasks: ``num_classes`` is 0."""
        if self.task.kind != "classification":
            self._num_classes = 0
            return
        where = f"{type(self).__name__}(task='classification')"
        labels = class_labels(table, where)
        if self._loaded_state is not None and self._loaded_state.get("num_classes"):
            self._num_classes = int(self._loaded_state["num_classes"])
        else:
            self._num_classes = num_classes_of(labels[self.split_indices["train"]])
        kept = np.sort(np.concatenate([self.split_indices[n] for n in SPLIT_NAMES]))
        beyond = kept[labels[kept] >= self._num_classes]
        if len(beyond):
            shown = ", ".join(f"{show(table.series_ids[i])} ({labels[i]})" for i in beyond[:10])
            raise DataValidationError(
                f"{where}: the training split has classes 0..{self._num_classes - 1}, but series "
                f"{shown} (outside the training split) have a larger label; every class must "
                f"occur in the training split"
            )

    def dropped_series(self) -> dict[str, dict[str, int]]:
        """Series each split loses, by reason: ``too_few_time_points`` (dropped before the
        split; per split only with explicit ``splits``, else under ``"all"``),
        ``no_context`` (nothing observed up to the cutoff), ``no_target`` (nothing to
        predict after it) and, for classification, ``no_label`` (label unknown). Zero counts
        are left out."""
        self._ensure_setup()
        return dict(self._dropped)

    def _warn_dropped_series(self, short_ids: list[Any], loaded: int) -> None:
        """Count the series the data and the task drop, per split and reason; warn (and log)
        when any is dropped, naming the reasons and what to change."""
        dropped: dict[str, dict[str, int]] = {}
        if short_ids:
            if self.splits is not None:
                split_of = {sid: n for n in SPLIT_NAMES for sid in self.splits[n]}
                for sid in short_ids:
                    part = dropped.setdefault(split_of.get(sid, "all"), {})
                    part["too_few_time_points"] = part.get("too_few_time_points", 0) + 1
            else:
                dropped["all"] = {"too_few_time_points": len(short_ids)}
        for name in SPLIT_NAMES:
            dataset = self.datasets.get(name)
            if dataset is None or not dataset.num_excluded:
                continue
            part = dropped.setdefault(name, {})
            for reason, n in dataset.excluded_reasons().items():
                part[reason] = part.get(reason, 0) + n
        self._dropped = dropped
        if not dropped:
            return
        explain = {
            "too_few_time_points": f"fewer than min_time_points={self.min_time_points} time points",
            "no_context": f"no observation in the context ({self.task.describe()})",
            "no_target": f"nothing to predict after the cutoff ({self.task.describe()})",
            "no_label": "an unknown (NaN) label",
        }
        parts = []
        for name, reasons in dropped.items():
            text = ", ".join(f"{n} with {explain[r]}" for r, n in reasons.items())
            parts.append(f"{name}: {text}" if name != "all" else f"before splitting: {text}")
        total = sum(n for reasons in dropped.values() for n in reasons.values())
        message = (
            f"{type(self).__name__}: {total} of {loaded} series are not used -- "
            f"{'; '.join(parts)}. "
            "Lower min_time_points, move the cutoff (task.cutoff / task.cutoff_fraction) or "
            "task.horizon, "
            "or drop these series from the table"
            + (" (series without a label take no part in classification)"
               if any("no_label" in reasons for reasons in dropped.values()) else "")
        )
        log.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)

    def _listed_series(
        self, series_ids: Sequence[Any], source: str, counts: dict[str, Any]
    ) -> np.ndarray:
        """Check ``splits`` against the table's ``series_ids``; the positions of the listed
        series (sorted: table order).

        Raises:
            DataValidationError: ids not in the table, or listed in two splits (or twice).
        """
        where = f"{type(self).__name__}(splits=...)"
        num_series = len(series_ids)
        position = {sid: k for k, sid in enumerate(series_ids)}
        seen: dict[Any, str] = {}
        repeated: list[str] = []
        unknown: list[Any] = []
        for name in SPLIT_NAMES:
            for sid in self.splits[name]:
                if sid not in position:
                    unknown.append(sid)
                elif sid in seen:
                    repeated.append(f"{show(sid)} ({seen[sid]} and {name})")
                else:
                    seen[sid] = name
        if unknown:
            shown = ", ".join(show(s) for s in unknown[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            raise DataValidationError(
                f"{where}: {len(unknown)} series id(s) not in the table ({source}): "
                f"{shown}{more}"
            )
        if repeated:
            more = f" and {len(repeated) - 20} more" if len(repeated) > 20 else ""
            raise DataValidationError(
                f"{where}: {len(repeated)} series id(s) listed in two splits (or twice): "
                f"{', '.join(repeated[:20])}{more}"
            )
        left_out = num_series - len(seen)
        counts["series_left_out_by_splits"] = left_out
        for name in SPLIT_NAMES:
            counts[f"{name}_series_listed"] = len(self.splits[name])
        if left_out:
            log.info(
                "%s: explicit splits list %d of the table's %d series (train %d, val %d, "
                "test %d); %d series not listed are left out",
                type(self).__name__, len(seen), num_series,
                *(len(self.splits[n]) for n in SPLIT_NAMES), left_out,
            )
        return np.sort(np.fromiter((position[sid] for sid in seen), dtype=np.int64))

    def _explicit_split_indices(self, series_ids: Sequence[Any]) -> dict[str, np.ndarray]:
        """Positions in ``series_ids`` of each split's ids (sorted; ids dropped as too short
        are skipped)."""
        position = {sid: k for k, sid in enumerate(series_ids)}
        return {
            name: np.sort(
                np.asarray([position[s] for s in self.splits[name] if s in position], dtype=np.int64)
            )
            for name in SPLIT_NAMES
        }

    def _check_task_leaves_series(self, num_series: int, spans: np.ndarray) -> None:
        """Raise when the task leaves no usable series at all (e.g. a cutoff after every
        series ends); warn when it empties the training split alone. ``spans``: hours from
        first to last time of the non-empty series of the ``num_series``."""
        if self.task.kind == "none":
            return
        usable = {name: len(ds) for name, ds in self.datasets.items()}
        spans = spans if len(spans) else np.zeros(1)
        if sum(usable.values()) == 0 and self.task.kind == "classification":
            raise DataValidationError(
                f"{type(self).__name__}: task {self.task.describe()} leaves no series with both "
                f"an observation in the context and a known label ({num_series} series)"
            )
        if sum(usable.values()) == 0:
            raise DataValidationError(
                f"{type(self).__name__}: task {self.task.describe()} leaves no series with both "
                f"context and target ({num_series} series, time spans "
                f"{float(spans.min()):.4g}-{float(spans.max()):.4g} h since each series' origin, "
                f"median {float(np.median(spans)):.4g} h); check cutoff / horizon and time_unit"
            )
        if usable["train"] == 0 and len(self.split_indices["train"]) > 0:
            log.warning(
                "%s: task %s leaves no usable training series (%d excluded)",
                type(self).__name__, self.task.describe(), len(self.split_indices["train"]),
            )

    def _ensure_setup(self) -> None:
        if self._index is None:
            self.setup()

    @property
    def _index(self) -> Any:
        """What the module's series are known by once set up (None before): the table here;
        a subclass may hold another index of them (a series cache) with the same
        ``channels``, ``static_names``, ``time_axis``, ``series_ids`` and ``labels``."""
        return self.table

    # ------------------------------------------------------------------ properties
    @property
    def channels(self) -> list[str]:
        self._ensure_setup()
        return list(self._index.channels)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def num_classes(self) -> int:
        """K classes of a ``task="classification"`` module (2 for binary labels), from the
        training labels; 0 for the other tasks (the model then only forecasts)."""
        if self.task.kind != "classification":
            return 0
        self._ensure_setup()
        return self._num_classes

    @property
    def static_names(self) -> list[str]:
        self._ensure_setup()
        return list(self._index.static_names)

    @property
    def num_static(self) -> int:
        return len(self.static_names)

    @property
    def normalizer(self) -> Normalizer:
        """Per-channel normalizer fitted on the training split."""
        self._ensure_setup()
        return self._normalizer

    @property
    def static_normalizer(self) -> Normalizer | None:
        self._ensure_setup()
        return self._static_normalizer

    @property
    def fitted(self) -> FittedData:
        """The fitted state (:class:`tsode.data.fitted.FittedData`: channels, normalizers,
        time axis, task, ...) that turns new tables into this module's tensors and model
        outputs back into original units."""
        self._ensure_setup()
        return FittedData.from_datamodule(self)

    @property
    def time_axis(self) -> TimeAxis:
        self._ensure_setup()
        return self._index.time_axis

    @property
    def summary(self) -> DataSummary:
        self._ensure_setup()
        return self._summary

    # ------------------------------------------------------------------ loaders
    @property
    def eval_batch_size(self) -> int:
        """Series per validation / test / predict batch (``loader.eval_batch_size``, else
        ``loader.batch_size``)."""
        return self.loader.eval_batch_size or self.loader.batch_size

    def _loader(self, dataset: SeriesDataset, batch_size: int, shuffle: bool) -> DataLoader:
        # One sampler class with or without bucketing: shuffling is seeded by ``seed + epoch``
        # (never by the global RNG), and under DDP the split between ranks is the sampler's
        # own seeded permutation, identical on every rank (see LengthBucketSampler).
        sampler = LengthBucketSampler(
            dataset.part_lengths,
            batch_size,
            shuffle=shuffle,
            seed=self.seed,
            bucket=self.loader.bucketing,
            lengths_at=dataset.part_lengths_at if shuffle and dataset.varies_by_epoch else None,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=dataset.collate,
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

    def predict_dataloader(self) -> DataLoader:
        """The test split under the configured task (use :meth:`dataloader_for` for new data)."""
        return self.test_dataloader()

    # ------------------------------------------------------------------ new data
    def dataset_for(
        self, table: SeriesTable, task: TaskConfig | str | None = None
    ) -> SeriesDataset:
        """Wrap a new table (e.g. at predict time) with the fitted channels and normalizers.

        Args:
            table: new series in original units; its channels must be a subset of
                :attr:`channels` (unknown channels raise ``DataValidationError``).
            task: task to apply; default ``"none"`` (all observations are context, no target).
        """
        self._ensure_setup()
        if task is None or isinstance(task, str):
            task = TaskConfig(kind=task or "none", seed=self.seed)
        elif task.seed is None:
            task = dataclasses.replace(task, seed=self.seed)
        return build_dataset(
            table, task, self.channels, self.static_names, self._normalizer,
            self._static_normalizer,
        )

    def dataloader_for(
        self,
        table: SeriesTable,
        task: TaskConfig | str | None = None,
        batch_size: int | None = None,
    ) -> DataLoader:
        """Batches of a new table in its original series order (no shuffling, no bucketing)."""
        ds = self.dataset_for(table, task)
        sampler = BatchSampler(
            SequentialSampler(ds), batch_size or self.eval_batch_size, drop_last=False
        )
        return DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate)

    # ------------------------------------------------------------------ state (checkpoints)
    def state_dict(self) -> dict[str, Any]:
        """Fitted state that must travel with a model: channels, normalizers, time axis, task."""
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
            "num_classes": self.num_classes,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore fitted normalizers (used instead of refitting at the next ``setup``)."""
        self._loaded_state = dict(state_dict)
        self._reset()  # rebuilt lazily with the restored normalizers

    def _reset(self) -> None:
        """Forget the set-up state (the next ``setup`` builds it again)."""
        self.table = None
        self.datasets = {}

