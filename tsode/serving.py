"""A trained forecaster as an MLflow pyfunc model: DataFrame of observations in, forecasts out.

The implementation behind :mod:`tsode.pyfunc` (which re-exports it): it imports nothing of
:mod:`tsode.api`, so :mod:`tsode.api` and :mod:`tsode.tracking` can log models with it; the
forecaster class a logged model loads is taken from the forecaster saved.

Input: the observations, every row context, in either format whatever the training table's:
long (one row per observation: ``series_id, time, channel, value``) or wide (one row per time
point: ``series_id, time, <one column per fitted channel>``), with the id / time / channel /
value column names the forecaster was fitted with (:func:`input_schema`). Output: the tidy
forecast of :meth:`tsode.api.Forecaster.predict` (``series_id, time, channel, mean[,
q<level> ...]``).
Inference parameters (MLflow ``params``): ``horizon`` (hours, default: the training task's),
``step`` (hours between forecast times; 0 = horizon / 24), ``quantiles`` (list of levels) and
``max_points_per_series`` (cap on forecast times per series, default 100000), ``cutoff``
(forecast from this many hours after each series' origin, using only the observations up to
it, as ``Forecaster.predict(cutoff=...)``) and ``cutoff_col`` (an input column holding each
series' cutoff, one value per series; the column is not a channel, and must be one the
signature declares, e.g. ``cutoff``). Values are validated by ``Forecaster.predict``:
non-numeric, non-finite or non-positive ones are errors.

The model's signature (:func:`signature`) declares these columns and params. MLflow passes a
model only the columns its signature declares: other columns (a label, a split column, a
channel the model was not fitted on) are dropped with a warning.

So ``mlflow models predict -m runs:/<run id>/model -i obs.csv -t csv --env-manager local`` and
``mlflow models serve`` work on any logged tsode run.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, DataType, ParamSchema, ParamSpec, Schema

ARTIFACT_KEY = "forecaster"
_PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
#: optional input column for per-series cutoffs (``params={"cutoff_col": "cutoff"}``)
CUTOFF_COLUMN = "cutoff"
REQUIREMENTS = ("torch", "lightning", "pandas", "numpy", "pyarrow", "mlflow", "torchmetrics", "scipy")


class ForecasterModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a saved :class:`tsode.api.Forecaster`.

    Args:
        forecaster_class: the class whose ``load`` reads the saved forecaster (the class of
            the forecaster :func:`save_pyfunc_model` wrote; pickled by reference with the
            model). ``tsode.pyfunc.ForecasterModel`` defaults it to ``tsode.api.Forecaster``.
    """

    forecaster_class: Any = None

    def __init__(self, forecaster_class: Any = None) -> None:
        if forecaster_class is not None:
            self.forecaster_class = forecaster_class

    def load_context(self, context: Any) -> None:
        if self.forecaster_class is None:
            raise TypeError(
                "ForecasterModel: no forecaster_class (use tsode.pyfunc.ForecasterModel, which "
                "loads a tsode.api.Forecaster)"
            )
        self.forecaster = self.forecaster_class.load(context.artifacts[ARTIFACT_KEY])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Forecast every series of ``model_input`` (see module docstring for ``params``)."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        params = dict(params or {})
        horizon = params.get("horizon")
        if horizon is None:
            horizon = self.forecaster.data.default_horizon
        step = params.get("step")
        if isinstance(step, int | float) and not isinstance(step, bool) and step == 0:
            step = None  # 0: horizon / 24 (the signature's default)
        quantiles = list(params.get("quantiles") or [])
        max_points = params.get("max_points_per_series")
        cutoff = params.get("cutoff")
        cutoff_col = params.get("cutoff_col") or None
        if cutoff_col is not None:
            if cutoff is not None:
                raise ValueError("pyfunc predict: give either the cutoff or the cutoff_col param")
            model_input, cutoff = self._cutoffs_from_column(model_input, str(cutoff_col))
        # predict validates every value (numbers, finite, > 0, bounded points per series)
        return self.forecaster.predict(
            model_input,
            horizon=horizon,
            step=step,
            quantiles=quantiles,
            progress=False,
            max_points_per_series=100_000 if max_points is None else int(max_points),
            cutoff=cutoff,
        )

    def _cutoffs_from_column(
        self, model_input: pd.DataFrame, column: str
    ) -> tuple[pd.DataFrame, dict[Any, Any]]:
        """The input without ``column`` and its per-series cutoffs (one value per series, on
        any of its rows; hours since the series' origin, or times like the time column)."""
        id_col = self.forecaster.data.spec.id_col
        if column not in model_input.columns:
            raise ValueError(
                f"pyfunc predict: cutoff_col {column!r} is not a column of the input; it has "
                f"{list(model_input.columns)} (MLflow passes only the columns of the model's "
                f"signature: put the cutoffs in column {CUTOFF_COLUMN!r})"
            )
        given = model_input[[id_col, column]].dropna()
        per_series = given.groupby(id_col, sort=False)[column].unique()
        conflicting = per_series[per_series.map(len) > 1]
        if len(conflicting):
            sid = conflicting.index[0]
            raise ValueError(
                f"pyfunc predict: series {sid!r} has different cutoffs in column {column!r}: "
                f"{list(conflicting.iloc[0])}; give one cutoff per series"
            )
        return model_input.drop(columns=[column]), {k: v[0] for k, v in per_series.items()}


def input_schema(data: Any) -> Schema:
    """Input columns of a forecaster fitted on ``data`` (a :class:`tsode.data.fitted.FittedData`).

    Required: the id and time columns. Optional: the long format's channel and value columns,
    one column per fitted channel (wide format), the static covariates and ``cutoff`` (see
    ``cutoff_col``). Every type is ``Any``: tsode validates the values itself, and typed MLflow
    columns would refuse valid inputs (integer values, as read from a CSV, in a ``double``
    column; times given as text; integer or text series ids).
    """
    spec = data.spec
    required = [spec.id_col, spec.time_col]
    optional = [
        spec.channel_col, spec.value_col, *data.channels, *data.static_names, CUTOFF_COLUMN
    ]
    columns: list[ColSpec] = []
    seen: set[str] = set()
    for names, needed in ((required, True), (optional, False)):
        for name in map(str, names):
            if name not in seen:
                seen.add(name)
                columns.append(ColSpec(AnyType(), name, required=needed))
    return Schema(columns)


def output_schema(data: Any) -> Schema:
    """Forecast columns: ``series_id``, ``time`` (numbers in the input's unit, or datetimes),
    ``channel``, ``mean``; ``q<level>`` columns follow for the requested ``quantiles``."""
    time_type = {"numeric": DataType.double, "datetime": DataType.datetime}.get(
        data.time_axis.kind, AnyType()
    )
    return Schema(
        [
            ColSpec(AnyType(), "series_id"),  # the ids as given: text or integers
            ColSpec(time_type, "time"),
            ColSpec(DataType.string, "channel"),
            ColSpec(DataType.double, "mean"),
        ]
    )


def signature(data: Any) -> ModelSignature:
    """Signature of a forecaster fitted on ``data`` (a :class:`tsode.data.fitted.FittedData`): the
    input columns (:func:`input_schema`), the forecast columns (:func:`output_schema`) and the
    inference parameters, with their defaults."""
    return ModelSignature(
        inputs=input_schema(data),
        outputs=output_schema(data),
        params=ParamSchema(
            [
                ParamSpec("horizon", "double", float(data.default_horizon)),
                ParamSpec("step", "double", 0.0),
                ParamSpec("quantiles", "double", [], shape=(-1,)),
                ParamSpec("max_points_per_series", "long", 100_000),
                ParamSpec("cutoff", "double", None),
                ParamSpec("cutoff_col", "string", None),
            ]
        ),
    )


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No artifact-copy progress bars and no pickling advisory while saving a model."""
    previous = os.environ.get(_PROGRESS_ENV)
    os.environ[_PROGRESS_ENV] = "false"
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*CloudPickle.*")
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            yield
    finally:
        pyfunc_log.setLevel(level)
        if previous is None:
            os.environ.pop(_PROGRESS_ENV, None)
        else:
            os.environ[_PROGRESS_ENV] = previous


def _requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def save_pyfunc_model(forecaster: Any, path: str | Path) -> Path:
    """Write ``forecaster`` as an MLflow model directory at ``path`` (must not exist)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow():
        saved = forecaster.save(Path(tmp) / ARTIFACT_KEY)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=ForecasterModel(type(forecaster)),
            artifacts={ARTIFACT_KEY: str(saved)},
            signature=signature(forecaster.data),
            pip_requirements=_requirements(),
        )
    return path


def log_pyfunc_model(forecaster: Any, client: Any, run_id: str, artifact_path: str = "model") -> str:
    """Log ``forecaster`` into run ``run_id`` as an MLflow model; returns ``runs:/<id>/<path>``."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_pyfunc_model(forecaster, Path(tmp) / "model")
        client.log_artifacts(run_id, str(model_dir), artifact_path)
    return f"runs:/{run_id}/{artifact_path}"
