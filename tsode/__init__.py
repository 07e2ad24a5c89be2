"""tsode: forecasting irregularly sampled time series with continuous-time neural models.

    from tsode import Forecaster

    fc = Forecaster("latent_ode").fit(df, task="forecast", cutoff=24.0)
    forecast = fc.predict(df, horizon=24.0, quantiles=(0.1, 0.9))

Sub-packages (see docs/architecture.md):
    tsode.solvers  -- batched ODE solvers with per-sample time grids and adjoint gradients
    tsode.data     -- irregular tables -> validated, normalized, padded batches
    tsode.models   -- LightningModules (ODE-RNN, latent ODE, Neural CDE, baselines)

The public entry points below are imported lazily (``import tsode`` stays cheap; the first
use of ``tsode.Forecaster`` imports Lightning, pandas and MLflow).

Importing tsode registers its plain configuration classes (``SolverConfig``, ``OptimConfig``) with
``torch.serialization.add_safe_globals``, so Lightning checkpoints of tsode models load
with torch's default ``weights_only=True``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module it lives in (imported on first access)
_EXPORTS: dict[str, str] = {
    "Forecaster": "tsode.api",
    "FittedData": "tsode.data.fitted",
    "plot_forecast": "tsode.plotting",
    "MODELS": "tsode.models",
    "register_model": "tsode.models",
    "TableDataModule": "tsode.data",
    "PhysioNet2012DataModule": "tsode.data",
    "SyntheticICUDataModule": "tsode.data",
    "PeriodicToyDataModule": "tsode.data",
    "IrregularBatch": "tsode.data",
    "DataValidationError": "tsode.data",
    "load_table": "tsode.data",
    "load_physionet2012": "tsode.data",
    "SolverConfig": "tsode.solvers",
    "OptimConfig": "tsode.config",
    "TaskConfig": "tsode.data",
    "LoaderConfig": "tsode.data",
    "odeint": "tsode.solvers",
    "MLflowLogger": "tsode.tracking",
    "MLflowArtifacts": "tsode.tracking",
}

__all__ = [
    "__version__",
    "Forecaster",
    "FittedData",
    "plot_forecast",
    "MODELS",
    "register_model",
    "TableDataModule",
    "PhysioNet2012DataModule",
    "SyntheticICUDataModule",
    "PeriodicToyDataModule",
    "IrregularBatch",
    "DataValidationError",
    "load_table",
    "load_physionet2012",
    "SolverConfig",
    "OptimConfig",
    "TaskConfig",
    "LoaderConfig",
    "odeint",
    "MLflowLogger",
    "MLflowArtifacts",
]
# (kept literal for linters; must list the keys of _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from tsode.api import Forecaster
    from tsode.data import (
        DataValidationError,
        IrregularBatch,
        PeriodicToyDataModule,
        PhysioNet2012DataModule,
        SyntheticICUDataModule,
        TableDataModule,
        load_physionet2012,
        load_table,
    )
    from tsode.data.fitted import FittedData
    from tsode.models import MODELS, register_model
    from tsode.plotting import plot_forecast
    from tsode.solvers import SolverConfig, odeint
    from tsode.tracking import MLflowArtifacts, MLflowLogger


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tsode' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _register_safe_globals() -> None:
    """Allow tsode's plain config objects in ``torch.load(..., weights_only=True)``.

    Models keep a ``SolverConfig`` and an ``OptimConfig`` among their hyperparameters (``save_hyperparameters``), so
    it is pickled into every Lightning checkpoint of a model built in Python (the ``tsode``
    command stores it as a mapping). It is a dataclass of numbers and strings (nothing executable).
    ``tsode.data`` registers its own config dataclasses likewise.
    """
    import torch

    from tsode.config import OptimConfig
    from tsode.solvers.api import SolverConfig

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch >= 2.4
        add([SolverConfig, OptimConfig])


_register_safe_globals()
