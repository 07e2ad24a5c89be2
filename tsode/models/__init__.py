"""tsode.models: LightningModules for irregularly sampled series, all consuming ``IrregularBatch``.

``MODELS`` maps the short names used by recipes and the CLI to model classes:
``"odernn"``, ``"latent_ode"``, ``"ncde"``, ``"locf"``, ``"mean"``, ``"gru_dt"``.
Every model subclasses :class:`tsode.models.base.IrregularModel`; its ``forecast`` returns a
:class:`tsode.models.forecast.Forecast`.
"""

from __future__ import annotations

from lightning import LightningModule

from tsode.config import DATA_DERIVED_ARGS, OptimConfig
from tsode.models.base import IrregularModel, StepResult
from tsode.models.baselines import LOCF, ChannelMean, GRUDelta
from tsode.models.forecast import Forecast
from tsode.models.latent_ode import LatentODE
from tsode.models.ncde import NeuralCDE
from tsode.models.odernn import ODERNN

MODELS: dict[str, type[LightningModule]] = {
    "odernn": ODERNN,
    "latent_ode": LatentODE,
    "ncde": NeuralCDE,
    "locf": LOCF,
    "mean": ChannelMean,
    "gru_dt": GRUDelta,
}

# classes a saved forecaster may name, beyond MODELS: filled by ``register_model``
_ALLOWED: dict[str, type[LightningModule]] = {}


def class_path(cls: type) -> str:
    """``module.QualName`` of a class: how saved forecasters name their model class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_model(cls: type[LightningModule], name: str | None = None) -> type[LightningModule]:
    """Allow ``cls`` (a user's own model) to be instantiated by ``Forecaster.load``.

    Loading only ever builds classes of ``MODELS`` or registered here; with ``name`` the class
    is also selectable by that short name (``Forecaster(name)``). Usable as a decorator.
    """
    if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
        raise TypeError(f"register_model: {cls!r} is not a LightningModule subclass")
    _ALLOWED[class_path(cls)] = cls
    if name is not None:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"register_model: the name {name!r} is taken by {class_path(MODELS[name])}")
        MODELS[name] = cls
    return cls


def allowed_model_class(path: str) -> type[LightningModule] | None:
    """The class a saved file names by ``path``, if it is a tsode model or registered; else None.

    Never imports anything: a class path is only looked up among classes already known.
    """
    for cls in (*MODELS.values(), *_ALLOWED.values()):
        if class_path(cls) == path:
            return cls
    return None


__all__ = [
    "DATA_DERIVED_ARGS",
    "MODELS",
    "Forecast",
    "IrregularModel",
    "OptimConfig",
    "StepResult",
    "allowed_model_class",
    "class_path",
    "register_model",
]
