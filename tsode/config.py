"""Typed configuration groups of the models, and what a model takes from the data.

``OptimConfig`` is the ``optim:`` block of a recipe (like ``solver:``): optimizer, learning
rate and schedule, built by :meth:`OptimConfig.build` from two small registries
(:data:`OPTIMIZERS`, :data:`SCHEDULERS`) instead of if/elif chains.

:data:`DATA_DERIVED_ARGS` is the one list of constructor arguments a model takes from the
data (channel count, static covariates, classes, normalizer statistics): the ``tsode``
command links them from the data module, ``Forecaster`` fills them from the fitted data and
the quickstart's baselines copy them from the trained model.

Before the groups, the optimizer arguments were flat constructor arguments (``lr=...``,
``scheduler=...``); :func:`resolve_optim` still maps them into the group (with a
``DeprecationWarning``), so Python calls and checkpoints saved before keep working. Recipes
must use the ``optim:`` block (the ``tsode`` command names the new key for an old one).

:class:`ParameterError` is how a constructor argument or a block's field rejects its value:
the error names the parameter (``anchor``, ``task.cutoff``, ``optim.lr``), so the ``tsode``
command reports the recipe key without reading the message (:mod:`tsode.recipe_errors`).
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

#: Constructor arguments a model takes from the data, where its constructor accepts them.
DATA_DERIVED_ARGS = ("num_channels", "num_static", "num_classes", "channel_means", "channel_stds")

#: The former flat optimizer arguments, now the fields of :class:`OptimConfig`.
LEGACY_OPTIM_ARGS = ("lr", "weight_decay", "optimizer", "scheduler", "scheduler_gamma", "scheduler_step_size")

#: optimizer name -> ``build(params, lr, weight_decay)``
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr, weight_decay: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
    "adamw": lambda params, lr, weight_decay: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(
        params, lr=lr, weight_decay=weight_decay, momentum=0.9
    ),
}

#: scheduler name -> ``build(optimizer, config, max_epochs)`` returning Lightning's
#: ``lr_scheduler`` entry (None: a constant learning rate)
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, OptimConfig, int | None], dict | None]] = {
    "none": lambda opt, cfg, max_epochs: None,
    "exponential": lambda opt, cfg, max_epochs: {
        "scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.scheduler_gamma),
        "interval": "epoch",
    },
    "step": lambda opt, cfg, max_epochs: {
        "scheduler": torch.optim.lr_scheduler.StepLR(
            opt, step_size=cfg.scheduler_step_size, gamma=cfg.scheduler_gamma
        ),
        "interval": "epoch",
    },
    "cosine": lambda opt, cfg, max_epochs: {
        "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs or 100)),
        "interval": "epoch",
    },
    "plateau": lambda opt, cfg, max_epochs: {
        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.scheduler_gamma),
        "monitor": "val/loss",
    },
}


class ParameterError(ValueError):
    """A constructor argument, or a field of a configuration block, rejects its value.

    ``param`` is the parameter's key below its owner's ``init_args``: ``"anchor"`` (an
    argument), ``"task.cutoff"`` / ``"optim.lr"`` (a field of a block); the message says what
    is wrong and starts with that key. A ``ValueError``, so ``except ValueError`` still
    catches it.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:  # picklable with both arguments
        return (type(self), (self.param, str(self)))


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule of a model (a recipe's ``optim:`` block).

    Attributes:
        lr: learning rate.
        weight_decay: weight decay (decoupled for ``optimizer="adamw"``).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        scheduler: ``"none"``, ``"exponential"`` (per epoch, ``scheduler_gamma``), ``"step"``
            (every ``scheduler_step_size`` epochs, ``scheduler_gamma``), ``"cosine"`` (over the
            trainer's ``max_epochs``) or ``"plateau"`` (on ``val/loss``, factor ``scheduler_gamma``).
        scheduler_gamma: decay factor for the schedulers above.
        scheduler_step_size: epochs per decay for ``"step"``.

    A field left None takes the model's default: each model has its own
    (ODE-RNN and latent ODE: Adam at 3e-3 decayed x0.95 per epoch, :data:`DECAYED_OPTIM`;
    GRU-Δt and neural CDE: Adam at a constant 1e-3, :data:`CONSTANT_OPTIM`), so a recipe's
    ``optim: {lr: 0.001}`` changes the learning rate and keeps the model's schedule. A model
    keeps the resolved configuration (every field set) as ``model.optim`` and in its
    hyperparameters.
    """

    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    scheduler: str | None = None
    scheduler_gamma: float | None = None
    scheduler_step_size: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ParameterError("optim.optimizer", f"optim.optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ParameterError("optim.scheduler", f"optim.scheduler must be one of {'/'.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.lr is not None and not self.lr > 0:
            raise ParameterError("optim.lr", f"optim.lr must be > 0, got {self.lr!r}")

    def given(self) -> dict[str, Any]:
        """The fields set (not None)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def over(self, default: OptimConfig) -> OptimConfig:
        """This configuration's fields set on top of ``default`` (a new object)."""
        return dataclasses.replace(default, **self.given())

    def build(self, params: Iterable[torch.nn.Parameter], max_epochs: int | None = None) -> Any:
        """What ``LightningModule.configure_optimizers`` returns for ``params``: the optimizer,
        or ``{"optimizer": ..., "lr_scheduler": {...}}`` with a schedule (fields left None
        take :data:`CONSTANT_OPTIM`'s values)."""
        cfg = self.over(CONSTANT_OPTIM)
        opt = OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = SCHEDULERS[cfg.scheduler](opt, cfg, max_epochs)
        return opt if schedule is None else {"optimizer": opt, "lr_scheduler": schedule}


#: GRU-Δt, neural CDE (and the base class): Adam at a constant 1e-3.
CONSTANT_OPTIM = OptimConfig(
    lr=1e-3, weight_decay=0.0, optimizer="adam", scheduler="none", scheduler_gamma=0.5, scheduler_step_size=10
)
#: ODE-RNN and latent ODE: Adam at 3e-3 decayed x0.95 per epoch.
DECAYED_OPTIM = OptimConfig(lr=3e-3, scheduler="exponential", scheduler_gamma=0.95).over(CONSTANT_OPTIM)


def resolve_optim(
    optim: OptimConfig | Mapping[str, Any] | None,
    legacy: Mapping[str, Any],
    default: OptimConfig | None = None,
    owner: str = "model",
) -> OptimConfig:
    """The model's resolved :class:`OptimConfig` (every field set): the fields ``optim`` sets
    (a mapping is converted) on top of ``default`` (None: :data:`CONSTANT_OPTIM`). Any former
    flat arguments in ``legacy`` (``lr=...``, from old code or checkpoints) are applied on top,
    with a ``DeprecationWarning``. Other unknown keyword arguments raise ``TypeError``."""
    unknown = sorted(set(legacy) - set(LEGACY_OPTIM_ARGS))
    if unknown:
        raise TypeError(f"{owner}.__init__() got unexpected keyword argument(s) {unknown}")
    if isinstance(optim, Mapping):
        optim = OptimConfig(**optim)
    config = (optim or OptimConfig()).over((default or CONSTANT_OPTIM).over(CONSTANT_OPTIM))
    if legacy:
        shown = ", ".join(f"{k}={legacy[k]!r}" for k in legacy)
        warnings.warn(
            f"{owner}: the flat optimizer argument(s) {shown} are deprecated; pass "
            f"optim=OptimConfig({shown}) (in a recipe: an optim: block under model.init_args)",
            DeprecationWarning,
            stacklevel=3,
        )
        config = OptimConfig(**dict(legacy)).over(config)
    return config


def constructor_args(cls: type) -> set[str]:
    """Named constructor arguments of ``cls``, with those of the base classes its ``**kwargs``
    reach (a model's ``**base`` goes to :class:`~tsode.models.base.IrregularModel`)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {"self", "default_optim"}


def accepted_args(cls: type) -> set[str]:
    """Keyword arguments ``cls`` accepts (:func:`constructor_args`), plus the former flat
    optimizer arguments (:data:`LEGACY_OPTIM_ARGS`) when it takes an ``optim`` group."""
    params = constructor_args(cls)
    if "optim" in params:
        params |= set(LEGACY_OPTIM_ARGS)
    return params


def data_derived_kwargs(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`DATA_DERIVED_ARGS` among ``values`` that ``cls``'s constructor accepts
    (and that are not None)."""
    accepted = constructor_args(cls)
    return {
        name: values[name]
        for name in DATA_DERIVED_ARGS
        if name in accepted and values.get(name) is not None
    }


def legacy_key_hint(key: str) -> str | None:
    """For a recipe key of a former flat argument (``model.init_args.lr``), the sentence
    naming its new spelling (``model.init_args.optim.lr``); None for other keys."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[-1] in LEGACY_OPTIM_ARGS and parts[0] == "model":
        new = ".".join([*parts[:-1], "optim", parts[-1]])
        return f"moved to {new} (the optim: block, tsode.OptimConfig)"
    return None
