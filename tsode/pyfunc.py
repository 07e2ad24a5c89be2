"""A trained forecaster as an MLflow pyfunc model: DataFrame of observations in, forecasts out.

The public face of :mod:`tsode.serving` (input / output columns, inference ``params``,
signature: see there), above :mod:`tsode.api`: :class:`ForecasterModel` here loads a
:class:`tsode.api.Forecaster` by default (and is the class models logged by earlier tsode
versions name). ``tsode.api`` and ``tsode.tracking`` log models through ``tsode.serving``.

So ``mlflow models predict -m runs:/<run id>/model -i obs.csv -t csv --env-manager local`` and
``mlflow models serve`` work on any logged tsode run.
"""

from __future__ import annotations

from typing import Any

from tsode import serving
from tsode.api import Forecaster
from tsode.serving import (
    ARTIFACT_KEY,
    CUTOFF_COLUMN,
    REQUIREMENTS,
    input_schema,
    log_pyfunc_model,
    output_schema,
    save_pyfunc_model,
    signature,
)


class ForecasterModel(serving.ForecasterModel):
    """pyfunc wrapper around a saved :class:`tsode.api.Forecaster` (see
    :class:`tsode.serving.ForecasterModel`; ``forecaster_class`` defaults to ``Forecaster``)."""

    forecaster_class: Any = Forecaster


__all__ = [
    "ARTIFACT_KEY",
    "CUTOFF_COLUMN",
    "REQUIREMENTS",
    "ForecasterModel",
    "input_schema",
    "log_pyfunc_model",
    "output_schema",
    "save_pyfunc_model",
    "signature",
]
