"""Typed configuration groups of the data modules: ``task:`` and ``loader:``.

A data module takes its task (:class:`~tsode.data.tasks.TaskConfig`: what is observed and what
is predicted) and its loader settings (:class:`LoaderConfig`: batch sizes, bucketing, workers)
as two blocks, as a model takes ``solver:`` and ``optim:``. What a dataset *is* stays flat:
how series are split (``split_fractions`` or ``splits``, and a table's ``split_col``), which
are too short to keep (``min_time_points``), whether values are standardized (``normalize``)
and the one ``seed`` behind the split, the task's hold-out and the batch order.

Before the groups these were flat constructor arguments (``cutoff=24.0``, ``batch_size=64``);
:func:`resolve_data_groups` still maps them into the blocks with a ``DeprecationWarning``, as
:func:`tsode.config.resolve_optim` does for a model's flat optimizer arguments.
:func:`group_data_args` does the same mapping without a warning for
:meth:`tsode.Forecaster.fit`, whose flat keyword arguments are its public call. Recipes must
use the blocks: :func:`data_key_hint` names the new key of an old one.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tsode.config import ParameterError
from tsode.data.tasks import TaskConfig

#: The former flat task arguments, now fields of the ``task:`` block (:class:`TaskConfig`).
LEGACY_TASK_ARGS = ("cutoff", "cutoff_fraction", "horizon", "holdout_fraction", "context_boundary")
#: Task fields ``Forecaster.fit`` takes as flat keywords (the former flat ones, and newer fields)
TASK_KEYWORDS = (*LEGACY_TASK_ARGS, "train_cutoff_range")
#: The former flat loader arguments, now fields of the ``loader:`` block (:class:`LoaderConfig`).
LEGACY_LOADER_ARGS = ("batch_size", "eval_batch_size", "bucketing", "num_workers")


@dataclass
class LoaderConfig:
    """How a data module batches its splits (a recipe's ``loader:`` block).

    Attributes:
        batch_size: series per training batch.
        eval_batch_size: series per validation / test / predict batch (None: ``batch_size``).
        bucketing: group series of similar length into batches (less padding).
        num_workers: DataLoader worker processes (collation is cheap; 0 is usually best).

    A field left None takes the data module's default (:attr:`IrregularDataModule.default_loader
    <tsode.data.module.IrregularDataModule.default_loader>`: batches of 32, or 64 for PhysioNet
    and 50 for the periodic toy; bucketing on; no workers), so ``loader: {num_workers: 2}``
    keeps the dataset's batch size.
    """

    batch_size: int | None = None
    eval_batch_size: int | None = None
    bucketing: bool | None = None
    num_workers: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ParameterError(f"loader.{name}", f"loader.{name} must be an integer >= 1 (series per batch), got {value!r}")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise ParameterError("loader.num_workers", f"loader.num_workers must be an integer >= 0, got {self.num_workers!r}")

    def given(self) -> dict[str, Any]:
        """The fields set (not None)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def over(self, default: LoaderConfig) -> LoaderConfig:
        """This configuration's fields set on top of ``default`` (a new object)."""
        return dataclasses.replace(default, **self.given())


#: The loader of every data module unless it says otherwise.
DEFAULT_LOADER = LoaderConfig(batch_size=32, bucketing=True, num_workers=0)


def _as_loader(loader: LoaderConfig | Mapping[str, Any] | None) -> LoaderConfig:
    if loader is None:
        return LoaderConfig()
    if isinstance(loader, Mapping):
        unknown = sorted(set(loader) - {f.name for f in dataclasses.fields(LoaderConfig)})
        if unknown:
            raise ValueError(f"loader: unknown field(s) {unknown}; a loader has {list(LEGACY_LOADER_ARGS)}")
        return LoaderConfig(**loader)
    if isinstance(loader, LoaderConfig):
        return loader
    raise TypeError(f"loader must be a LoaderConfig or a mapping, got {type(loader).__name__}")


def group_data_args(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of a data module from ``flat`` ones: the task's fields
    (:data:`TASK_KEYWORDS`, with ``task`` as its kind) go into ``task``, the loader's
    (:data:`LEGACY_LOADER_ARGS`) into ``loader``; other arguments are kept as they are.
    A ``task`` / ``loader`` given as a block takes the flat fields on top."""
    out = {k: v for k, v in flat.items() if k not in (*TASK_KEYWORDS, *LEGACY_LOADER_ARGS)}
    task_fields = {k: flat[k] for k in TASK_KEYWORDS if k in flat}
    loader_fields = {k: flat[k] for k in LEGACY_LOADER_ARGS if k in flat}
    if task_fields:
        task = flat.get("task")
        if task is None or isinstance(task, str):
            out["task"] = {"kind": task or None, **task_fields}
            if out["task"]["kind"] is None:
                del out["task"]["kind"]  # the data module's default kind
        elif isinstance(task, Mapping):  # a block as a mapping (its kind may be left out)
            out["task"] = {**task, **exclusive_cutoff(task_fields)}
        else:
            out["task"] = dataclasses.replace(TaskConfig.of(task), **exclusive_cutoff(task_fields))
    if loader_fields:
        out["loader"] = dataclasses.replace(_as_loader(flat.get("loader")), **loader_fields)
    return out


def exclusive_cutoff(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to a task where a cutoff given replaces a cutoff fraction and vice versa."""
    changes = dict(changes)
    if changes.get("cutoff") is not None:
        changes.setdefault("cutoff_fraction", None)
    if changes.get("cutoff_fraction") is not None:
        changes.setdefault("cutoff", None)
    return changes


def resolve_data_groups(
    task: TaskConfig | str | Mapping[str, Any] | None,
    loader: LoaderConfig | Mapping[str, Any] | None,
    legacy: Mapping[str, Any],
    *,
    owner: str,
    default_kind: str,
    default_cutoff: float | None,
    default_loader: LoaderConfig,
    seed: int,
) -> tuple[TaskConfig, LoaderConfig]:
    """A data module's resolved task and loader.

    Former flat arguments in ``legacy`` (``cutoff=24.0``, ``batch_size=64``) are mapped into
    the blocks with a ``DeprecationWarning``; other unknown keyword arguments raise
    ``TypeError``. The task: ``task`` (None: ``default_kind``), a forecast naming neither
    ``cutoff`` nor ``cutoff_fraction`` observes ``default_cutoff`` hours (when not None), and
    a ``seed`` left None is the module's ``seed``. The loader: ``loader``'s fields on top of
    ``default_loader``.
    """
    unknown = sorted(set(legacy) - {*LEGACY_TASK_ARGS, *LEGACY_LOADER_ARGS})
    if unknown:
        raise TypeError(f"{owner}.__init__() got unexpected keyword argument(s) {unknown}")
    if legacy:
        shown = ", ".join(f"{k}={legacy[k]!r}" for k in legacy)
        blocks = [
            (name, cls)
            for name, keys, cls in (
                ("task", LEGACY_TASK_ARGS, "TaskConfig"), ("loader", LEGACY_LOADER_ARGS, "LoaderConfig")
            )
            if set(legacy) & set(keys)
        ]
        warnings.warn(
            f"{owner}: the flat data argument(s) {shown} are deprecated; pass them in "
            + " and ".join(f"{name}={cls}(...)" for name, cls in blocks)
            + " (in a recipe: "
            + " and ".join(f"a {name}: block" for name, _ in blocks)
            + " under data.init_args)",
            DeprecationWarning,
            stacklevel=4,
        )
        grouped = group_data_args({"task": task, "loader": loader, **legacy})
        task, loader = grouped.get("task", task), grouped.get("loader", loader)
    if isinstance(task, Mapping) and "kind" not in task:
        task = {"kind": default_kind, **task}
    config = TaskConfig.of(task, default_kind)
    if config.kind == "forecast" and config.cutoff is None and config.cutoff_fraction is None:
        if default_cutoff is not None:
            config = dataclasses.replace(config, cutoff=default_cutoff)
    if config.seed is None:
        config = dataclasses.replace(config, seed=seed)
    return config, _as_loader(loader).over(default_loader)


def data_key_hint(key: str) -> str | None:
    """For a recipe key of a former flat data argument (``data.init_args.cutoff``), the
    sentence naming its new spelling (``data.init_args.task.cutoff``); None for other keys."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] != "data":
        return None
    for block, names, what in (
        ("task", LEGACY_TASK_ARGS, "tsode.data.TaskConfig"),
        ("loader", LEGACY_LOADER_ARGS, "tsode.data.LoaderConfig"),
    ):
        if parts[-1] in names and block not in parts[:-1]:
            new = ".".join([*parts[:-1], block, parts[-1]])
            return f"moved to {new} (the {block}: block, {what})"
    return None
