"""tsode.models: LightningModules for irregularly sampled series, all consuming ``IrregularBatch``.

``MODELS`` maps the short names used by recipes and the CLI to model classes:
``"odernn"``, ``"latent_ode"``, ``"ncde"``, ``"locf"``, ``"mean"``, ``"gru_dt"``.
Every model subclasses :class:`tsode.models.base.IrregularModel`.
"""

from __future__ import annotations

import importlib

from lightning import LightningModule

from tsode.models.base import IrregularModel, StepResult

_REGISTRY: dict[str, tuple[str, str]] = {
    "odernn": ("tsode.models.odernn", "ODERNN"),
    "latent_ode": ("tsode.models.latent_ode", "LatentODE"),
    "ncde": ("tsode.models.ncde", "NeuralCDE"),
    "locf": ("tsode.models.baselines", "LOCF"),
    "mean": ("tsode.models.baselines", "ChannelMean"),
    "gru_dt": ("tsode.models.baselines", "GRUDelta"),
}


def _load_registry() -> dict[str, type[LightningModule]]:
    models: dict[str, type[LightningModule]] = {}
    for name, (module_name, class_name) in _REGISTRY.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a model module not written yet: leave it out
            if err.name != module_name:
                raise
            continue
        models[name] = getattr(module, class_name)
    return models


MODELS: dict[str, type[LightningModule]] = _load_registry()

__all__ = ["MODELS", "IrregularModel", "StepResult"]
