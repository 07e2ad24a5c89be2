"""MLflow experiment tracking: every fit is an MLflow run.

Two pieces, both usable from recipes (``trainer.logger`` / ``trainer.callbacks``) and used by
`tsode.api.Forecaster` and the ``tsode`` command:

- :class:`MLflowLogger` — Lightning's MLflow logger with tsode's defaults: the tracking URI is
  resolved when the logger is built (explicit argument > ``MLFLOW_TRACKING_URI`` > a local
  SQLite store ``sqlite:///mlflow.db`` in the working directory); a run that crashes is marked
  ``FAILED`` with the error (tag ``tsode.error`` and artifact ``error.txt``); a run stopped by
  Ctrl-C (KeyboardInterrupt) is marked ``KILLED``. Logs from rank 0 only.
- :class:`MLflowArtifacts` — a callback that adds the dataset summary and normalization
  statistics at the start of training and, at the end, the best checkpoint, forecast plots
  (PNG) for a few validation series and the servable pyfunc model (see `tsode.pyfunc`;
  written through ``forecaster_factory``, which ``Forecaster.fit`` and the ``tsode``
  command set: this module imports nothing of ``tsode.api`` / ``tsode.pyfunc``).

Per-step / per-epoch metrics (loss terms, MSE/MAE, NFE) are whatever the model logs with
``self.log``; they reach MLflow through the logger.

Why one long module (a little over 500 lines): the logger and the artifacts callback share the
run handling (store resolution, rank-0 logging, failed / killed runs); splitting them would
spread that over two modules that always change together.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from tsode.errors import TrackingStoreError

log = logging.getLogger(__name__)

DEFAULT_DB_FILE = "mlflow.db"
ERROR_TAG = "tsode.error"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI a run uses: ``explicit`` > ``$MLFLOW_TRACKING_URI`` > local SQLite file.

    The local default is ``sqlite:///<absolute working directory>/mlflow.db``.
    """
    if explicit:
        return explicit
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB_FILE}"


#: seconds a process waits for another one creating / migrating the same SQLite store
STORE_LOCK_TIMEOUT = 300.0
_READY_STORES: set[str] = set()
_READY_LOCK = threading.Lock()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///<path>`` URI (None: not a file-backed SQLite URI)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _store_error(uri: str, what: str, err: BaseException | None = None) -> TrackingStoreError:
    detail = "" if err is None else f" ({type(err).__name__}: {str(err).strip().splitlines()[0]})"
    return TrackingStoreError(
        f"MLflow tracking store {uri}: {what}{detail}; fix the store, or choose another with "
        "tracking_uri= / trainer.logger.init_args.tracking_uri / MLFLOW_TRACKING_URI"
    )


def ensure_tracking_store(uri: str, attempts: int = 6) -> str:
    """Create (or migrate) a local SQLite tracking store once, before MLflow opens it.

    Concurrent processes (three ``tsode fit`` in a fresh directory, DDP ranks) would otherwise
    race in MLflow's schema creation and fail. The creation runs under a file lock
    (``<database>.lock``) and is retried with backoff on ``database is locked``. Other URIs
    are returned unchanged. Returns ``uri``.

    Raises:
        TrackingStoreError: naming the URI, when the store cannot be created or opened.
    """
    path = _sqlite_path(uri)
    if path is None or uri in _READY_STORES:
        return uri
    if not path.parent.is_dir():
        raise _store_error(uri, f"directory {path.parent} does not exist")
    from filelock import FileLock, Timeout
    from mlflow.tracking import MlflowClient

    delay = 0.1
    for attempt in range(attempts):
        try:
            with FileLock(f"{path}.lock", timeout=STORE_LOCK_TIMEOUT):
                MlflowClient(uri).search_experiments(max_results=1)  # creates / migrates
            break
        except Timeout as err:
            raise _store_error(
                uri, f"waited {STORE_LOCK_TIMEOUT:.0f} s for the lock {path}.lock held by "
                "another process creating the store", err,
            ) from err
        except Exception as err:
            if "database is locked" in str(err) and attempt < attempts - 1:
                time.sleep(delay)
                delay *= 2
                continue
            raise _store_error(uri, "could not be created or opened", err) from err
    with _READY_LOCK:
        _READY_STORES.add(uri)
    return uri


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": value}``; lists of mappings are indexed (``a.0.b``)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    flat.update(flatten_config(item, prefix=f"{name}.{i}."))
                else:
                    flat[f"{name}.{i}"] = item
        else:
            flat[name] = value
    return flat


def _jsonable(value: Any) -> Any:
    """Best-effort conversion of numpy / torch / path values for JSON and YAML dumps."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class MLflowLogger(MLFlowLogger):
    """Lightning MLflow logger with tsode's defaults (see module docstring).

    Args:
        experiment_name: MLflow experiment (created if absent).
        run_name: optional run name.
        tracking_uri: where runs go; None = ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``
            in the working directory (resolved when the logger is built).
        tags: extra run tags.
        save_dir: local directory for checkpoints (``<save_dir>/<experiment id>/<run id>/checkpoints``).
        artifact_location: artifact root for a newly created experiment (server default if None).
        run_id: resume logging into an existing run (a resumed fit): the run is set back to
            RUNNING and tagged ``tsode.resumed``; :meth:`log_config` then adds only new params.
    """

    def __init__(
        self,
        experiment_name: str = "tsode",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        save_dir: str = "outputs",
        artifact_location: str | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=ensure_tracking_store(resolve_tracking_uri(tracking_uri)),
            tags=tags,
            save_dir=save_dir,
            log_model=False,  # MLflowArtifacts logs the best checkpoint under checkpoints/
            artifact_location=artifact_location,
            run_id=run_id,
        )
        self._local_dir = save_dir
        self._resumed = run_id is not None

    @property
    def experiment(self) -> Any:
        """The MLflow client (creates the run, or reopens a resumed one, on first use)."""
        first = not self._initialized
        try:
            client = super().experiment
        except TrackingStoreError:
            raise
        except Exception as err:  # a store that is unreachable or broken, not a tsode bug
            raise _store_error(self._tracking_uri, "could not create or open the run", err) from err
        if first and self._resumed and self._initialized:
            client.update_run(self._run_id, status="RUNNING")
            client.set_tag(self._run_id, "tsode.resumed", "true")
        return client

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    @property
    def save_dir(self) -> str:
        """Local directory for checkpoints (the tracking store may be remote)."""
        return self._local_dir

    @property
    def initialized(self) -> bool:
        """Whether the MLflow run exists yet (it is created lazily on first use)."""
        return self._initialized

    @rank_zero_only
    def log_config(
        self,
        config: Mapping[str, Any],
        artifact_file: str = "config/config.yaml",
        prefix: str = "config.",
    ) -> None:
        """Log a resolved configuration as flattened params and as a YAML artifact.

        Params are named ``<prefix><dotted key>`` (e.g. ``config.model.init_args.latent_dim``),
        apart from the bare hyperparameter names Lightning logs from the model itself.
        """
        from mlflow.entities import Param

        plain = _jsonable(config)
        params = [
            Param(key=key, value=str(value)[:MAX_PARAM_LENGTH])
            for key, value in flatten_config(plain, prefix=prefix).items()
        ]
        if self._resumed:  # MLflow params are immutable: keep the first fit's, add new ones
            logged = self.experiment.get_run(self.run_id).data.params
            params = [p for p in params if p.key not in logged]
            artifact_file = artifact_file.replace(".yaml", "-resumed.yaml")
        for start in range(0, len(params), 100):  # MLflow accepts 100 params per batch
            self.experiment.log_batch(run_id=self.run_id, params=params[start : start + 100])
        self.experiment.log_text(
            self.run_id, yaml.safe_dump(plain, sort_keys=False), artifact_file
        )

    @rank_zero_only
    def log_json(self, obj: Any, artifact_file: str) -> None:
        """Log a JSON-serializable object as an artifact file."""
        self.experiment.log_text(self.run_id, json.dumps(_jsonable(obj), indent=2), artifact_file)

    @rank_zero_only
    def record_error(self, error: BaseException) -> None:
        """Attach an exception to the run: tag ``tsode.error`` and artifact ``error.txt``."""
        message = f"{type(error).__name__}: {error}"
        self.experiment.set_tag(self.run_id, ERROR_TAG, message[:5000])
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.experiment.log_text(self.run_id, text, "error.txt")

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """End the run: FINISHED, FAILED (with the error attached) or KILLED (Ctrl-C).

        Lightning finalizes with ``"failed"`` from inside its exception handler, so the
        exception being handled is available here.
        """
        if status == "failed" and self._initialized:
            error = sys.exc_info()[1]
            if isinstance(error, KeyboardInterrupt):
                status = "KILLED"
            if error is not None:
                try:
                    self.record_error(error)
                except Exception as logging_error:  # never mask the original error
                    log.warning("could not attach the error to the MLflow run: %s", logging_error)
        super().finalize(status)


#: checkpoint key holding the MLflow run of the fit that wrote it
CHECKPOINT_KEY = "tsode_mlflow"


def checkpoint_run_id(path: str | Path) -> str | None:
    """The MLflow run id saved in a checkpoint by :class:`MLflowArtifacts`, or None (read with
    ``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable checkpoints are reported by the checkpoint check
        return None
    info = state.get(CHECKPOINT_KEY) if isinstance(state, Mapping) else None
    run_id = info.get("run_id") if isinstance(info, Mapping) else None
    return run_id if isinstance(run_id, str) else None


def log_child_run(
    tracking_uri: str,
    parent_run_id: str,
    name: str,
    metrics: Mapping[str, float] | None = None,
    artifacts: Mapping[str, str | Path] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create a FINISHED child run of ``parent_run_id`` (same experiment, tag
    ``mlflow.parentRunId``) holding ``metrics`` and ``artifacts`` (artifact dir -> local
    file); returns its run id."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    run = client.create_run(
        parent.info.experiment_id,
        run_name=name,
        tags={"mlflow.parentRunId": parent_run_id, "tsode.fit_run_id": parent_run_id,
              **dict(tags or {})},
    )
    run_id = run.info.run_id
    try:
        import math
        import time

        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, 0)
            for key, value in (metrics or {}).items()
            if value is not None and math.isfinite(float(value))
        ]
        for start in range(0, len(batch), 1000):
            client.log_batch(run_id, metrics=batch[start : start + 1000])
        for directory, file in (artifacts or {}).items():
            client.log_artifact(run_id, str(file), directory)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def find_mlflow_logger(trainer: pl.Trainer) -> MLflowLogger | None:
    """The trainer's first tsode MLflowLogger, if any."""
    for logger in getattr(trainer, "loggers", None) or []:  # stand-ins and loggerless trainers
        if isinstance(logger, MLflowLogger):
            return logger
    return None


def datamodule_summary(datamodule: Any) -> dict[str, Any]:
    """Plain-data description of a data module: channels, sizes, task, static covariates."""
    if datamodule is None:
        return {}
    summary: dict[str, Any] = {"data_module": type(datamodule).__name__}
    described = getattr(datamodule, "summary", None)
    if callable(described) and not hasattr(described, "to_dict"):
        described = described()
    if hasattr(described, "to_dict"):
        described = described.to_dict()
    if isinstance(described, Mapping):
        summary.update(_jsonable(described))
    for name in ("task", "num_channels", "num_static", "channels", "static_names", "batch_size"):
        try:
            value = getattr(datamodule, name)
        except Exception:  # property not available before setup
            continue
        if hasattr(value, "state_dict"):
            value = value.state_dict()
        if not callable(value):
            summary[name] = _jsonable(value)
    datasets = getattr(datamodule, "datasets", None)
    if isinstance(datasets, Mapping):
        summary["series_per_split"] = {split: len(ds) for split, ds in datasets.items()}
    return summary


def normalization_stats(datamodule: Any) -> dict[str, Any] | None:
    """The data module's fitted normalizer as ``{"names", "mean", "std"}``, if it has one."""
    normalizer = getattr(datamodule, "normalizer", None)
    if normalizer is None:
        return None
    if hasattr(normalizer, "state_dict"):
        return _jsonable(normalizer.state_dict())
    return {
        "names": _jsonable(getattr(normalizer, "names", [])),
        "mean": _jsonable(normalizer.mean),
        "std": _jsonable(normalizer.std),
    }


class MLflowArtifacts(Callback):
    """Log dataset summary, normalization, best checkpoint, forecast plots and the pyfunc model.

    Does nothing unless the trainer has a tsode :class:`MLflowLogger`; logs from rank 0 only.

    Args:
        num_plot_series: series drawn in the forecast plot (0 disables plots).
        num_plot_channels: channels drawn per series.
        log_checkpoint: log the best checkpoint under ``checkpoints/``.
        log_model: log the trained forecaster as an MLflow pyfunc model under ``model/``
            (needs :attr:`forecaster_factory`, set by ``Forecaster.fit`` and the ``tsode``
            command; in your own trainer set it to ``tsode.Forecaster.from_trained``).
    """

    def __init__(
        self,
        num_plot_series: int = 3,
        num_plot_channels: int = 4,
        log_checkpoint: bool = True,
        log_model: bool = True,
    ) -> None:
        self.num_plot_series = num_plot_series
        self.num_plot_channels = num_plot_channels
        self.log_checkpoint = log_checkpoint
        self.log_model = log_model
        self.logged: dict[str, str] = {}  # what was logged -> artifact path, for reporting
        # (module, datamodule) -> a forecaster to log as the pyfunc model (its ``save``, ``data``
        # and class are what tsode.serving needs): set by Forecaster.fit and the tsode command,
        # which sit above this module (tsode.Forecaster.from_trained in your own trainer)
        self.forecaster_factory: Callable[[pl.LightningModule, Any], Any] | None = None

    # ------------------------------------------------------------------ start of training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = find_mlflow_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        summary = datamodule_summary(datamodule)
        if summary:
            logger.log_json(summary, "data/summary.json")
        stats = normalization_stats(datamodule)
        if stats is not None:
            logger.log_json(stats, "data/normalization.json")
        logger.experiment.set_tag(logger.run_id, "tsode.model", type(pl_module).__name__)
        if datamodule is not None:
            logger.experiment.set_tag(logger.run_id, "tsode.data", type(datamodule).__name__)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Record the MLflow run in the checkpoint, so ``tsode test`` / ``predict`` with it
        log child runs of this fit (see :func:`checkpoint_run_id`)."""
        logger = find_mlflow_logger(trainer)
        if logger is not None and logger.initialized:
            import socket

            checkpoint[CHECKPOINT_KEY] = {
                "run_id": logger.run_id,
                "experiment_id": logger.experiment_id,
                "tracking_uri": logger.tracking_uri,
                # the writing process: a later fit closes the run if it died (tsode.resume)
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }

    # ------------------------------------------------------------------ end of training
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = find_mlflow_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        best_path = self._best_checkpoint(trainer)
        if self.log_checkpoint and best_path is not None:
            logger.experiment.log_artifact(logger.run_id, best_path, "checkpoints")
            self.logged["checkpoint"] = f"checkpoints/{Path(best_path).name}"
            score = trainer.checkpoint_callback.best_model_score  # type: ignore[union-attr]
            if score is not None:
                logger.experiment.set_tag(logger.run_id, "tsode.best_score", f"{float(score):.6g}")
        if trainer.datamodule is None or not (self.num_plot_series > 0 or self.log_model):
            return
        model = self._best_model(pl_module, best_path)
        if self.log_model and self.forecaster_factory is None:
            # (checked first, as before: a model that cannot be wrapped fails here)
            log.warning(
                "MLflowArtifacts: the pyfunc model is not logged: set forecaster_factory "
                "(e.g. callback.forecaster_factory = tsode.Forecaster.from_trained); "
                "Forecaster.fit and the tsode command set it"
            )
        forecaster = (
            self.forecaster_factory(model, trainer.datamodule)
            if self.log_model and self.forecaster_factory is not None else None
        )
        if self.num_plot_series > 0:
            self._log_plot(logger, model, trainer.datamodule)
        if forecaster is not None:
            from tsode.serving import log_pyfunc_model

            log_pyfunc_model(forecaster, logger.experiment, logger.run_id, artifact_path="model")
            self.logged["model"] = "model"

    @staticmethod
    def _best_checkpoint(trainer: pl.Trainer) -> str | None:
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            if Path(callback.best_model_path).is_file():
                return callback.best_model_path
        return None

    @staticmethod
    def _best_model(pl_module: pl.LightningModule, best_path: str | None) -> pl.LightningModule:
        """A CPU copy of the module with the best checkpoint's weights (current ones if none)."""
        model = copy.deepcopy(pl_module).cpu()
        if best_path is not None:
            from tsode.checkpoints import load_checkpoint_weights

            model.load_state_dict(load_checkpoint_weights(best_path))
        return model.eval()

    def _log_plot(self, logger: MLflowLogger, model: pl.LightningModule, datamodule: Any) -> None:
        import matplotlib.pyplot as plt

        from tsode.data.fitted import FittedData
        from tsode.forecasts import split_forecast_frames

        try:
            observed, forecast = split_forecast_frames(
                model,
                datamodule,
                FittedData.from_datamodule(datamodule),  # what the model was fitted with
                split="val",
                max_series=self.num_plot_series,
            )
        except Exception as error:  # a plot must never fail a finished training run
            log.warning("forecast plot skipped: %s", error)
            return
        from tsode.plotting import plot_forecast

        fig = plot_forecast(
            observed,
            forecast,
            max_series=self.num_plot_series,
            max_channels=self.num_plot_channels,
            title="validation forecasts",
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "forecast_val.png"
            fig.savefig(path, dpi=110)
            logger.experiment.log_artifact(logger.run_id, str(path), "plots")
        plt.close(fig)
        self.logged["plot"] = "plots/forecast_val.png"
