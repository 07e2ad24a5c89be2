"""``Forecaster``: fit / predict / evaluate / save / load on pandas DataFrames.

    from tsode import Forecaster

    fc = Forecaster("latent_ode", latent_dim=16, trainer_kwargs={"max_epochs": 30})
    fc.fit(df, task="forecast", cutoff=24.0)            # df: long or wide table (tsode.data)
    forecast = fc.predict(df, horizon=24.0, quantiles=(0.1, 0.9))
    metrics = fc.evaluate(test_df)
    fc.save("my_forecaster"); fc = Forecaster.load("my_forecaster")

Everything a trained forecaster needs to turn a new table into predictions travels with it
(:class:`tsode.data.fitted.FittedData`, re-exported here: the table spec, channels, static
covariates, per-channel normalizers, time axis and task), so ``predict`` and ``evaluate``
never need the training data.

Output tables are tidy, one row per (series, time, channel), in original units and in the
input's time representation: ``series_id, time, channel, mean[, q<level> ...]``.

Why one long module: it is the one public class, ``Forecaster``, whose methods (fit, predict,
evaluate, save / load, the per-request checks) share its state; what other layers also need
lives below it (:mod:`tsode.forecasts`, :mod:`tsode.checkpoints`, :mod:`tsode.data.fitted`).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import math
import pickle
import re
import typing
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import Tensor
from tqdm.auto import tqdm

from tsode.checkpoints import load_checkpoint_weights
from tsode.config import accepted_args, constructor_args, data_derived_kwargs
from tsode.data import (
    IrregularBatch,
    SeriesDataset,
    SeriesTable,
    StreamingTableDataModule,
    TableDataModule,
    TaskConfig,
)
from tsode.data.atomic import atomic_directory
from tsode.data.config import group_data_args
from tsode.data.fitted import FittedData
from tsode.data.series import DataValidationError
from tsode.data.streaming import is_file_collection
from tsode.errors import (
    CheckpointFileError,
    ResourceLimitError,
    SolverFailureContext,
    SplitError,
    check_finite_state_dict,
    describe_solver_failure,
    explained,
    finite_number,
)
from tsode.forecasts import model_forecast, quantile_name, split_forecast_frames
from tsode.models.forecast import Forecast
from tsode.progress import (
    EpochLogger,
    has_trainable_parameters,
    logging_interval,
    quiet_lightning_warnings,
    stdout_is_tty,
)
from tsode.resume import (
    EpochSeed,
    ResumeCheckpoint,
    checkpoint_mlflow_run,
    close_orphaned_run,
    last_checkpoint,
    resume_dir,
)
from tsode.solvers import SolverError
from tsode.tracking import MLflowArtifacts, MLflowLogger, _jsonable, resolve_tracking_uri

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SAVE_FILE = "forecaster.pt"
CONFIG_FILE = "config.yaml"
MONITOR = "val/mse"
#: What a ``task="classification"`` fit monitors (early stopping, best checkpoint).
CLASSIFICATION_MONITOR = "val/ce"


# ---------------------------------------------------------------------- helpers


def _resolve_model_class(model: str | type[pl.LightningModule]) -> type[pl.LightningModule]:
    """A model the user names in code (short name, class or class path). A class given this
    way is registered (``tsode.register_model``), so this process can load what it saves."""
    from tsode.models import MODELS, register_model

    if isinstance(model, str) and model in MODELS:
        return MODELS[model]
    if isinstance(model, str) and "." in model:  # a class path
        module_name, _, class_name = model.rpartition(".")
        model = getattr(importlib.import_module(module_name), class_name)
    if isinstance(model, type):
        if not issubclass(model, pl.LightningModule):
            raise TypeError(f"model {model!r} is not a LightningModule subclass")
        return register_model(model)
    raise ValueError(f"unknown model {model!r}: choose one of {sorted(MODELS)} or pass a class path")


def _saved_model_class(path: Any, file: Path) -> type[pl.LightningModule]:
    """The model class a saved file names, only if it is a tsode model or one the user
    registered (``tsode.register_model``): nothing is imported or called before this check."""
    from tsode.models import MODELS, allowed_model_class

    cls = allowed_model_class(path) if isinstance(path, str) else None
    if cls is None:
        raise ValueError(
            f"{file}: refusing to load model class {path!r}: only tsode models "
            f"({sorted(MODELS)}) or classes registered with tsode.register_model(cls) are "
            "instantiated from a saved file"
        )
    return cls


def _model_name(cls: type) -> str:
    from tsode.models import MODELS

    for name, registered in MODELS.items():
        if registered is cls:
            return name
    return f"{cls.__module__}.{cls.__qualname__}"


def _accepted_args(cls: type) -> set[str]:
    """Keyword arguments of ``cls`` (with the former flat optimizer arguments, ``lr`` ...,
    which a model with an ``optim`` group maps into it)."""
    return accepted_args(cls)


def _data_derived_kwargs(cls: type, data: FittedData) -> dict[str, Any]:
    """The data-derived arguments (:data:`tsode.config.DATA_DERIVED_ARGS`: num_channels,
    num_static, channel statistics, and num_classes for a classification fit) ``cls`` accepts."""
    if data.num_classes and "num_classes" not in _accepted_args(cls):
        raise TypeError(
            f"{cls.__name__} has no classification head (no num_classes argument): "
            "task='classification' needs latent_ode, odernn, ncde or gru_dt"
        )
    values = {
        "num_channels": len(data.channels),
        "num_static": len(data.static_names),
        "num_classes": int(data.num_classes) or None,
        "channel_means": [float(x) for x in data.normalizer.mean],
        "channel_stds": data.scale,
    }
    return data_derived_kwargs(cls, values)


def _plain(value: Any) -> Any:
    """Config values for YAML (dataclasses as mappings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return _jsonable(value)


def _mentions_solver_config(annotation: Any) -> bool:
    """Whether an annotation is ``SolverConfig`` or a union / generic holding it (a string
    annotation that could not be resolved counts when it names ``SolverConfig``)."""
    from tsode.solvers import SolverConfig

    if annotation is SolverConfig:
        return True
    if isinstance(annotation, str):
        return re.search(r"\bSolverConfig\b", annotation) is not None
    return any(_mentions_solver_config(arg) for arg in typing.get_args(annotation))


def _solver_args(cls: type) -> set[str]:
    """Constructor arguments of ``cls`` typed ``SolverConfig`` (``SolverConfig | None`` etc.);
    an unannotated argument named ``solver`` counts too."""
    params = inspect.signature(cls.__init__).parameters
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations naming what the module cannot resolve: use their text
        hints = {}
    found = set()
    for name, param in params.items():
        annotation = hints.get(name, param.annotation)
        if annotation is inspect.Parameter.empty:
            if name == "solver":
                found.add(name)
        elif _mentions_solver_config(annotation):
            found.add(name)
    return found


def _convert_args(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain-data forms of structured constructor arguments of ``cls``: every argument typed
    ``SolverConfig`` given as a mapping (``solver={"method": "rk4", ...}``,
    ``encoder_solver={"method": "euler", "step_size": 0.25}``) becomes a ``SolverConfig``."""
    from tsode.solvers import SolverConfig

    solver_args = _solver_args(cls)
    return {
        name: SolverConfig(**value) if name in solver_args and isinstance(value, Mapping) else value
        for name, value in values.items()
    }


def _pad_rows(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, Tensor]:
    """Per-series query times -> ``(B, M)`` float64 times padded with each row's last time,
    and the ``(B, M)`` bool mask of real entries."""
    width = max(max((len(r) for r in rows), default=0), 1)
    times = np.zeros((len(rows), width), dtype=np.float64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        if len(row) == 0:
            continue
        times[i, : len(row)] = row
        times[i, len(row) :] = row[-1]
        mask[i, : len(row)] = True
    return times, torch.from_numpy(mask)


def process_rank() -> int:
    """This process's rank under distributed training (DDP): the ``torch.distributed`` rank
    when a process group is initialized, else the rank the launcher's environment gives
    (``RANK``, ``LOCAL_RANK``, ... as read by Lightning); 0 in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _best_checkpoint_dir(path: str | Path) -> Path | None:
    """The directory of the best-``val/mse`` checkpoints of the fit that wrote ``path``
    (from its ModelCheckpoint state), if it still exists."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: Lightning reports it when resuming
        return None
    for key, value in (state.get("callbacks") or {}).items():
        monitored = any(m in str(key) for m in (MONITOR, CLASSIFICATION_MONITOR, "val/auroc"))
        if str(key).startswith("ModelCheckpoint") and monitored and "dirpath" in value:
            directory = Path(value["dirpath"])
            return directory if directory.is_dir() else None
    return None


def check_validation_split(datamodule: Any, split_fractions: Any = None, where: str = "fit") -> None:
    """Refuse a fit whose validation split is empty (it drives early stopping and the choice
    of the best checkpoint on ``val/mse``), giving the series per split and the fixes."""
    datasets = getattr(datamodule, "datasets", None) or {}
    if "val" not in datasets or len(datasets["val"]) > 0:
        return
    counts = ", ".join(f"{name} {len(ds)}" for name, ds in datasets.items())
    fractions = f" with split_fractions={tuple(split_fractions)}" if split_fractions is not None else ""
    raise SplitError(
        f"{where}: the validation split is empty ({counts} series{fractions}); validation "
        "drives early stopping and the best checkpoint (val/mse). Fix: give more series "
        "(at least 3 for three splits), a split_fractions with a non-zero validation fraction "
        "(e.g. (0.8, 0.2, 0.0)), or explicit splits with validation series"
    )


def _plain_data(value: Any) -> bool:
    """Whether ``value`` is built from str/int/float/bool/None, lists, tuples and str-keyed dicts."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(_plain_data(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    return False


def _check_points(count: int, max_points: int | None, request: str) -> None:
    """Refuse a request for more than ``max_points`` forecast times per series."""
    if max_points is not None and count > max_points:
        raise ResourceLimitError(
            f"predict: {request} asks for {count:,} forecast times per series, more than "
            f"max_points_per_series={max_points:,}; use a larger step, a shorter horizon, or raise "
            "the cap with predict(..., max_points_per_series=N)"
        )


def _given_time(table: SeriesTable, index: int, hours: float, data: FittedData) -> Any:
    """Series ``index``'s time ``hours`` (relative to its origin) in the input's representation."""
    value = data.time_axis.from_hours(np.asarray([hours + table.time_offset[index]]))
    return value.iloc[0] if isinstance(value, pd.Series) else float(value[0])


def _show(value: Any) -> str:
    """A time for a message: numbers as plain floats, timestamps as text."""
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        return repr(float(value))
    return str(value)


# ---------------------------------------------------------------------- the forecaster


class Forecaster:
    """Train and use a tsode model on pandas tables.

    Args:
        model: a registered model name (``"latent_ode"``, ``"odernn"``, ``"ncde"``, ``"gru_dt"``,
            ``"locf"``, ``"mean"``), a class path, a model class, or an already built module.
        trainer_kwargs: extra ``lightning.Trainer`` options (override the defaults:
            ``max_epochs=100``, progress bar, model summary, early stopping on ``val/mse``).
        patience: early-stopping patience in epochs (None disables early stopping).
        tracking: log the fit as an MLflow run (see ``docs/tracking.md``).
        experiment_name: MLflow experiment.
        tracking_uri: MLflow store (default: the ``MLFLOW_TRACKING_URI`` environment variable,
            else ``sqlite:///mlflow.db``).
        work_dir: local directory for checkpoints.
        seed: seeds weights and data splits.
        verbose: print a short summary after fitting.
        **model_kwargs: constructor arguments of the model (e.g. ``latent_dim=16``);
            ``num_channels`` etc. are filled in from the data.
    """

    def __init__(
        self,
        model: str | type[pl.LightningModule] | pl.LightningModule = "latent_ode",
        *,
        trainer_kwargs: Mapping[str, Any] | None = None,
        patience: int | None = 10,
        tracking: bool = True,
        experiment_name: str = "tsode",
        tracking_uri: str | None = None,
        work_dir: str | Path = "outputs",
        seed: int = 0,
        verbose: bool = True,
        **model_kwargs: Any,
    ) -> None:
        if isinstance(model, pl.LightningModule):
            self.module: pl.LightningModule | None = model
            self.model_class: type[pl.LightningModule] = _resolve_model_class(type(model))
            if model_kwargs:
                raise ValueError(
                    f"model_kwargs {sorted(model_kwargs)} given with an already built module"
                )
        else:
            self.module = None
            self.model_class = _resolve_model_class(model)
            unknown = set(model_kwargs) - _accepted_args(self.model_class)
            if unknown:
                raise TypeError(
                    f"{self.model_class.__name__} has no argument(s) {sorted(unknown)}; it accepts "
                    f"{sorted(constructor_args(self.model_class))}"
                )
        self.model_kwargs = _convert_args(self.model_class, model_kwargs)
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.patience = patience
        self.tracking = tracking
        self.experiment_name = experiment_name
        self.tracking_uri = tracking_uri
        self.work_dir = Path(work_dir)
        self.seed = seed
        self.verbose = verbose
        self.data: FittedData | None = None
        self.data_kwargs: dict[str, Any] = {}
        self.run_id: str | None = None
        self.evaluation_run_id: str | None = None  # the last evaluate's child run (tracking)
        self.fit_summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_trained(cls, module: pl.LightningModule, datamodule: Any) -> Forecaster:
        """Wrap a trained module and the (set up) data module it was trained on."""
        forecaster = cls(module, tracking=False, verbose=False)
        forecaster.data = FittedData.from_datamodule(datamodule)
        forecaster.module = module.eval()
        return forecaster

    @property
    def model(self) -> pl.LightningModule:
        """The trained module (raises if not fitted)."""
        if self.module is None or self.data is None:
            raise RuntimeError("this Forecaster is not fitted yet: call fit(df) or Forecaster.load")
        return self.module

    def _fitted(self) -> FittedData:
        """The fitted data state (raises if not fitted)."""
        _ = self.model
        assert self.data is not None
        return self.data

    @property
    def model_name(self) -> str:
        return _model_name(self.model_class)

    def config(self) -> dict[str, Any]:
        """The resolved configuration: model (class, arguments), data, trainer and fit options."""
        hparams = dict(self.module.hparams) if self.module is not None else dict(self.model_kwargs)
        return _plain(
            {
                "model": {
                    "name": self.model_name,
                    "class_path": f"{self.model_class.__module__}.{self.model_class.__qualname__}",
                    "init_args": hparams,
                },
                "data": {
                    **self.data_kwargs,
                    **({"fitted": self.data.state_dict()} if self.data is not None else {}),
                },
                "trainer": self._trainer_options(),
                "fit": {"patience": self.patience, "seed": self.seed, "monitor": self._monitor()},
            }
        )

    # ------------------------------------------------------------------ fit
    def _monitor(self) -> str:
        """``val/mse``, or ``val/ce`` for a classification fit."""
        task = self.data_kwargs.get("task")
        kind = task.get("kind") if isinstance(task, Mapping) else task
        classifying = kind == "classification" or (
            self.data is not None and self.data.num_classes > 0
        )
        return CLASSIFICATION_MONITOR if classifying else MONITOR

    def _trainer_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_epochs": 100,
            "accelerator": "auto",
            "devices": 1,
            "enable_progress_bar": stdout_is_tty(),  # else EpochLogger: a line per epoch
            "enable_model_summary": True,
            "log_every_n_steps": 10,
            "gradient_clip_val": 1.0,
        }
        options.update({k: v for k, v in self.trainer_kwargs.items() if k not in ("callbacks", "logger")})
        return options

    def _build_module(self, data: FittedData) -> pl.LightningModule:
        if self.module is not None:
            expected = len(data.channels)
            got = getattr(self.module, "num_channels", expected)
            if got != expected:
                raise ValueError(
                    f"the given module has num_channels={got} but the data has {expected} "
                    f"channels ({data.channels})"
                )
            return self.module
        kwargs = {**_data_derived_kwargs(self.model_class, data), **self.model_kwargs}
        return self.model_class(**kwargs)

    def resume_dir(self) -> Path:
        """Where :meth:`fit` keeps ``last.ckpt`` (every epoch) for ``fit(..., resume=True)``:
        ``<work_dir>/resume/<experiment_name>/forecaster-<model name>``."""
        return resume_dir(self.work_dir, self.experiment_name, f"forecaster-{self.model_name}")

    def fit(
        self,
        data: Any,
        *,
        resume: bool = False,
        streaming: bool | None = None,
        **data_kwargs: Any,
    ) -> Forecaster:
        """Train on a table: a DataFrame or CSV/Parquet path, long or wide format.

        Args:
            data: the training table (split by series into train/val; val drives early stopping
                and checkpoint selection on ``val/mse``): a DataFrame, a file, or (streamed) a
                directory of Parquet / CSV files (a partitioned dataset), a glob or a list of
                files.
            streaming: read the table through :class:`tsode.data.StreamingTableDataModule`
                (an index pass into a series cache on disk, then series on demand: tables
                larger than memory, docs/scale.md) instead of into memory. None (default):
                streamed when ``data`` is a directory, a glob pattern or a list of paths. The
                cache is kept under ``<work_dir>/series-cache`` unless ``cache_dir=`` is given.
            resume: continue from ``last.ckpt`` in :meth:`resume_dir` (written at the end of
                every epoch, e.g. by a fit that was killed or stopped at ``max_epochs``): the
                weights, optimizer, epoch, early-stopping and per-epoch random state are
                restored, and the checkpoint's MLflow run is continued. Pass the same data
                and options. Without a last checkpoint: a warning, and training from scratch.
            **data_kwargs: :class:`tsode.data.TableDataModule` options: column names
                (``id_col``, ``time_col``, ``channel_col``, ``value_col``, ``value_cols``,
                ``static_cols``), ``time_unit``, ``task`` (``"forecast"``, ``"extrapolation"``,
                ``"interpolation"``, or ``"classification"`` with ``label_col``: a series-level
                classifier, monitored on ``val/ce``, see :meth:`predict_proba`),
                ``cutoff`` / ``cutoff_fraction`` / ``horizon`` (hours), ``train_cutoff_range``
                (``(lo, hi)``: training cutoffs drawn per series and epoch, see
                :class:`~tsode.data.TaskConfig`),
                ``split_fractions`` (default ``(0.8, 0.2, 0.0)``), or explicit splits:
                ``splits={"train": ids, "val": ids, "test": ids}`` or ``split_col`` (a column
                naming each series' split), ``batch_size``, ... The task and loader keywords
                go into the data module's ``task`` / ``loader`` blocks (a
                :class:`~tsode.data.TaskConfig` / :class:`~tsode.data.LoaderConfig` may be
                given as ``task=`` / ``loader=`` instead).

        Returns:
            self, with the best-validation weights loaded.
        """
        pl.seed_everything(self.seed, verbose=False)
        last_dir = self.resume_dir()
        resume_from = last_checkpoint(last_dir) if resume else None
        if resume and resume_from is None:
            warnings.warn(
                f"Forecaster.fit(resume=True): no last checkpoint in {last_dir}; training from "
                "scratch", UserWarning, stacklevel=2,
            )
        elif resume_from is not None:
            load_checkpoint_weights(resume_from)  # readable, weights only, finite (or an error)
        elif not resume and last_checkpoint(last_dir) is not None:
            close_orphaned_run(last_checkpoint(last_dir))  # a killed fit's run: KILLED
        options = {"split_fractions": (0.8, 0.2, 0.0), "seed": self.seed, **data_kwargs}
        # the flat task / loader keywords of this call go into the data module's blocks
        datamodule = self._fit_datamodule(data, streaming, group_data_args(options))
        datamodule.setup("fit")
        explicit = options.get("splits") is not None or options.get("split_col") is not None
        check_validation_split(datamodule, None if explicit else options.get("split_fractions"))
        self.data_kwargs = _plain({k: v for k, v in options.items()})
        self.data = datamodule.fitted
        module = self._build_module(self.data)
        self.module = module

        trainable = has_trainable_parameters(module)
        options = self._trainer_options()
        if not trainable:
            options["max_epochs"] = 1  # parameter-free baselines: one pass for the metrics
        options["log_every_n_steps"] = logging_interval(
            options["log_every_n_steps"], len(datamodule.train_dataloader())
        )
        run_id = None
        if resume_from is not None and self.tracking and "logger" not in self.trainer_kwargs:
            run_id = checkpoint_mlflow_run(resume_from, resolve_tracking_uri(self.tracking_uri))
        best_dir: Path | None = None
        if not self.tracking:  # a fresh folder (the resumed fit's own, to keep its best model)
            best_dir = _best_checkpoint_dir(resume_from) if resume_from is not None else None
            best_dir = best_dir or self.work_dir / "checkpoints" / uuid.uuid4().hex[:12]
        monitor = self._monitor()
        checkpoint = ModelCheckpoint(
            monitor=monitor, mode="min", save_top_k=1, filename="best-{epoch}",
            # with MLflow: <work_dir>/<experiment>/<run>/checkpoints; else a fresh folder
            dirpath=best_dir,
        )
        callbacks: list[Callback] = [
            checkpoint, ResumeCheckpoint(last_dir), EpochSeed(self.seed), SolverFailureContext()
        ]
        if not options["enable_progress_bar"] and "enable_progress_bar" not in self.trainer_kwargs:
            callbacks.append(EpochLogger())  # not a terminal: one line per epoch
        if self.patience is not None and trainable:
            callbacks.append(EarlyStopping(monitor=monitor, mode="min", patience=self.patience))
        logger: MLflowLogger | bool = False
        if self.tracking:
            logger = MLflowLogger(
                experiment_name=self.experiment_name,
                tracking_uri=self.tracking_uri,
                save_dir=str(self.work_dir),
                run_name=f"forecaster-{self.model_name}",
                run_id=run_id,
            )
            artifacts = MLflowArtifacts()
            artifacts.forecaster_factory = Forecaster.from_trained  # the logged pyfunc model
            callbacks.append(artifacts)
        callbacks.extend(self.trainer_kwargs.get("callbacks", []))
        if "logger" in self.trainer_kwargs:
            logger = self.trainer_kwargs["logger"]
        trainer = pl.Trainer(
            **options, callbacks=callbacks, logger=logger, default_root_dir=str(self.work_dir)
        )
        if isinstance(logger, MLflowLogger):
            logger.log_config(self.config())
            self.run_id = logger.run_id
        try:
            with quiet_lightning_warnings(trainable), warnings.catch_warnings():
                if resume_from is not None:  # the resumed fit's own checkpoint directory
                    warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
                trainer.fit(
                    module, datamodule=datamodule,
                    ckpt_path=None if resume_from is None else str(resume_from),
                )
        except SolverError as err:
            found = explained(err)
            if found is None:
                raise
            raise found from err

        best = checkpoint.best_model_path
        if best and Path(best).is_file():
            module.load_state_dict(load_checkpoint_weights(best))
        self.module = module.cpu().eval()
        score = checkpoint.best_model_score
        self.fit_summary = {
            "model": self.model_name,
            "num_series": self.data_summary(datamodule),
            "epochs": trainer.current_epoch,
            "best_val_mse": None if score is None or monitor != MONITOR else float(score),
            "monitor": monitor,
            "best_score": None if score is None else float(score),
            "best_checkpoint": best or None,
            "mlflow_run_id": self.run_id,
            "tracking_uri": logger.tracking_uri if isinstance(logger, MLflowLogger) else None,
        }
        if self.verbose:
            print(self._summary_text())
        return self

    def _fit_datamodule(
        self, data: Any, streaming: bool | None, options: dict[str, Any]
    ) -> TableDataModule:
        """The data module of :meth:`fit`: in memory, or streamed (see its ``streaming``)."""
        if streaming is None:
            streaming = is_file_collection(data)
        if not streaming:
            if "cache_dir" in options:
                raise TypeError(
                    "Forecaster.fit: cache_dir= is an option of the streamed table "
                    "(streaming=True, or a directory / glob as data)"
                )
            return TableDataModule(data, **options)
        if isinstance(data, pd.DataFrame):
            raise TypeError(
                "Forecaster.fit(streaming=True) reads Parquet / CSV files (a directory, glob, file "
                "or list of files), not a DataFrame; write it to Parquet or drop streaming=True"
            )
        options.setdefault("cache_dir", self.work_dir / "series-cache")
        return StreamingTableDataModule(data, **options)

    @staticmethod
    def data_summary(datamodule: TableDataModule) -> dict[str, int]:
        return {name: len(ds) for name, ds in datamodule.datasets.items()}

    def _summary_text(self) -> str:
        s = self.fit_summary
        n = s["num_series"]
        lines = [
            f"tsode: trained {s['model']} on {n.get('train', 0)} series "
            f"({n.get('val', 0)} for validation), {len(self.data.channels)} channels, "
            f"{s['epochs']} epochs",
        ]
        if s["best_val_mse"] is not None:
            lines.append(f"       best val/mse (normalized units): {s['best_val_mse']:.4g}")
        elif s.get("best_score") is not None:
            lines.append(f"       best {s['monitor']}: {s['best_score']:.4g}")
        if s["mlflow_run_id"]:
            lines.append(f"       MLflow run {s['mlflow_run_id']} in {s['tracking_uri']}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ predict
    def _query_times(
        self,
        dataset: SeriesDataset,
        horizon: float | None,
        times: Any,
        step: float | None,
        max_points: int,
        starts: np.ndarray | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Per-series query times in hours relative to each series' origin, and (for
        ``times=``) the requested times as given, in the same order, to report them exactly.

        Raises ``ValueError`` naming the series and time for a query time before a series'
        first observation, and :class:`ResourceLimitError` beyond ``max_points`` per series.
        """
        table = dataset.table
        indices = dataset.indices
        if (horizon is None) == (times is None):
            raise ValueError("predict: give exactly one of horizon= (hours) or times=")
        if horizon is not None:
            horizon = finite_number("horizon", horizon, "predict")
            step = horizon / 24.0 if step is None else finite_number("step", step, "predict")
            count = math.floor(horizon / step + 1e-9)
            _check_points(count, max_points, f"horizon={horizon:g} h at step={step:g} h")
            offsets = step * np.arange(1, max(1, count) + 1)
            last = table.times[table.offsets[indices + 1] - 1] if starts is None else starts
            return [t + offsets for t in last], None
        if step is not None:
            raise ValueError("predict: step= applies to horizon=, not to times=")
        spec = self._fitted().spec
        hours_rows: list[np.ndarray] = []
        given_rows: list[np.ndarray] = []
        if isinstance(times, pd.DataFrame):
            for column in (spec.id_col, spec.time_col):
                if column not in times.columns:
                    raise ValueError(
                        f"predict: the times table needs columns {spec.id_col!r} and "
                        f"{spec.time_col!r}; it has {list(times.columns)}"
                    )
            given, hours = self._query_column(times[spec.time_col])
            by_id: dict[Any, list[int]] = {}
            for row, sid in enumerate(times[spec.id_col].tolist()):
                by_id.setdefault(sid, []).append(row)
            known = {sid for sid in table.series_ids}
            unknown = [sid for sid in by_id if sid not in known]
            if unknown:
                raise ValueError(
                    f"predict: times given for series {sorted(map(repr, unknown))[:5]} that are "
                    "not in the observations table"
                )
            rows_of = {sid: rows for sid, rows in by_id.items()}
            for i in indices:
                rows = np.asarray(rows_of.get(table.series_ids[i], []), dtype=np.int64)
                bad = rows[~np.isfinite(hours[rows])] if len(rows) else rows
                if len(bad):
                    raise ValueError(
                        f"predict: times table row {int(bad[0])} (series {table.series_ids[i]!r}): "
                        f"time {_show(given[bad[0]])} is not a finite time"
                    )
                order = rows[np.argsort(hours[rows], kind="stable")]
                hours_rows.append(hours[order] - table.time_offset[i])
                given_rows.append(given[order])
        else:
            column = times if isinstance(times, pd.Series) else pd.Series(np.asarray(times))
            given, hours = self._query_column(column)
            bad = np.flatnonzero(~np.isfinite(hours))
            if len(bad):
                raise ValueError(
                    f"predict: times[{int(bad[0])}] = {_show(given[bad[0]])} is not a finite time"
                )
            order = np.argsort(hours, kind="stable")
            for i in indices:
                hours_rows.append(hours[order] - table.time_offset[i])
                given_rows.append(given[order])
        _check_points(max((len(r) for r in hours_rows), default=0), max_points, "times=")
        for row, i in enumerate(indices):
            first = table.times[table.offsets[i]]
            early = np.flatnonzero(hours_rows[row] < first)
            if len(early):
                raise ValueError(
                    f"predict: query time {_show(given_rows[row][early[0]])} for series "
                    f"{table.series_ids[i]!r} is before its first observation "
                    f"({_show(_given_time(table, i, first, self._fitted()))}); forecasts start at a "
                    "series' context: drop the earlier times or add observations before them"
                )
        return hours_rows, given_rows

    def _cut_table(
        self, table: SeriesTable, cutoff: Any
    ) -> tuple[SeriesTable, np.ndarray]:
        """``table`` without the observations after each series' cutoff (boundary: the fitted
        task's ``context_boundary``), and the cutoffs in hours since each series' origin.

        Raises ``ValueError`` for a cutoff that is not a finite time, or that names series
        not in the table.
        """
        n = table.num_series
        if isinstance(cutoff, Mapping | pd.Series):
            items = dict(cutoff.items())
            unknown = [sid for sid in items if sid not in set(table.series_ids)]
            if unknown:
                raise ValueError(
                    f"predict: cutoff given for series {', '.join(sorted(map(repr, unknown))[:5])} "
                    "that are not in the observations table"
                )
            keep = [i for i, sid in enumerate(table.series_ids) if sid in items]
            table = table.subset(keep)
            values = [items[sid] for sid in table.series_ids]
            numeric = [
                isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values
            ]
            cuts = np.full(table.num_series, np.nan)
            for i, (v, is_number) in enumerate(zip(values, numeric)):
                if is_number:
                    cuts[i] = float(v)
            others = [i for i, is_number in enumerate(numeric) if not is_number]
            if others:
                _, hours = self._query_column(pd.Series([values[i] for i in others], dtype=object))
                cuts[others] = hours - table.time_offset[others]
            bad = np.flatnonzero(~np.isfinite(cuts))
            if len(bad):
                raise ValueError(
                    f"predict: cutoff {values[bad[0]]!r} for series "
                    f"{table.series_ids[bad[0]]!r} is not a finite time (hours since the "
                    "series' origin, or a time in the input's representation)"
                )
        else:
            value = finite_number("cutoff", cutoff, "predict", positive=False)
            cuts = np.full(n, value)
        closed = self._fitted().task.context_boundary != "open"
        row_cut = cuts[table.row_series]
        keep_rows = table.times <= row_cut if closed else table.times < row_cut
        csum = np.concatenate([[0], np.cumsum(keep_rows, dtype=np.int64)])
        counts = csum[table.offsets[1:]] - csum[table.offsets[:-1]]
        offsets = np.zeros(table.num_series + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        cut = dataclasses.replace(
            table, offsets=offsets, times=table.times[keep_rows], values=table.values[keep_rows]
        )
        return cut, cuts

    def _query_column(self, column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Requested times as given (object array, parsed to datetimes / timedeltas where the
        time axis needs it) and as float hours."""
        column = column.reset_index(drop=True)
        try:
            parsed = self._parse_times(column)
            hours = np.asarray(self._fitted().time_axis.to_hours(parsed), dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"predict: times could not be read as times of the fitted time axis "
                f"({self._fitted().time_axis.kind}): {err}"
            ) from err
        if pd.api.types.is_numeric_dtype(parsed):
            return parsed.to_numpy(dtype=np.float64), hours  # float64: the numbers as given
        return parsed.to_numpy(dtype=object), hours

    def _parse_times(self, column: pd.Series) -> pd.Series:
        """Query times in the input's representation (numbers, datetimes or their strings,
        timedeltas) on the fitted time axis's representation."""
        axis = self._fitted().time_axis
        if axis.kind == "datetime" and not pd.api.types.is_datetime64_any_dtype(column):
            column = pd.to_datetime(column)
            if axis.tz is not None and column.dt.tz is None:
                column = column.dt.tz_localize(axis.tz)
        elif axis.kind == "timedelta" and not pd.api.types.is_timedelta64_dtype(column):
            column = pd.to_timedelta(column)
        elif axis.kind not in ("datetime", "timedelta") and not pd.api.types.is_numeric_dtype(column):
            raise ValueError(f"numeric times expected, got {column.dtype} values")
        return column

    def _forecast(
        self, batch: IrregularBatch, times: Tensor, quantiles: Sequence[float]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Model mean ``(B, M, C)`` and requested quantiles (normalized units)."""
        return model_forecast(self.model, batch, times, quantiles)

    def predict(
        self,
        data: Any,
        *,
        horizon: float | None = None,
        times: Any = None,
        step: float | None = None,
        quantiles: Sequence[float] = (),
        batch_size: int = 64,
        progress: bool = True,
        seed: int | None = 0,
        max_points_per_series: int | None = 100_000,
        cutoff: float | Mapping[Any, Any] | pd.Series | None = None,
    ) -> pd.DataFrame:
        """Forecast every series of an observations table.

        Args:
            data: observed values (DataFrame or CSV/Parquet path), same column names as for
                ``fit``, long or wide whatever the training table's format; all of them are
                context (up to ``cutoff`` when given).
            horizon: hours past each series' last observation (or past its ``cutoff``) to
                forecast, on a grid of ``step`` hours (default ``horizon / 24``).
            times: alternatively, query times in the input's time representation: a sequence
                (same for every series) or a DataFrame with the id and time columns.
            quantiles: levels in (0, 1) to report as ``q<level>`` columns (needs a
                probabilistic model such as ``latent_ode``).
            batch_size: series per forward pass.
            progress: show a progress bar over batches.
            seed: seeds the sampling of probabilistic models (same input, same output);
                None leaves the global random state alone.
            max_points_per_series: cap on forecast times per series (a request beyond it is
                refused before any work; None: no cap).
            cutoff: forecast from a time instead of from each series' last row: only the
                observations up to the cutoff are context, and ``horizon`` counts from the
                cutoff. A number is hours since each series' origin, for every series (as the
                training ``cutoff``); a mapping or Series ``series_id -> cutoff`` sets it per
                series (numbers in hours since the series' origin, or times in the input's
                representation, e.g. timestamps); series it does not name are skipped. Boundary
                as in training (the task's ``context_boundary``): ``"closed"`` (default) keeps
                observations at or before the cutoff, ``"open"`` only those strictly before.

        Returns:
            DataFrame ``series_id, time, channel, mean[, q<level> ...]`` in original units,
            one row per (series, query time, channel). Times given with ``times=`` come back
            exactly as given (as parsed on the fitted time axis).

        Under DDP every rank that calls ``predict`` gets the same full result (it writes
        nothing, and returning part of the series on some ranks would be a silently
        incomplete forecast); write it from rank 0 only, or call it on rank 0 only.
        """
        fitted = self._fitted()
        for q in quantiles:
            level = finite_number("quantile level", q, "predict", positive=False)
            if not 0.0 < level < 1.0:
                raise ValueError(f"predict: quantile levels must be in (0, 1), got {q}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(f"predict: batch_size must be an integer >= 1, got {batch_size!r}")
        if max_points_per_series is not None and (
            isinstance(max_points_per_series, bool)
            or not isinstance(max_points_per_series, int | np.integer)
            or max_points_per_series < 1
        ):
            raise ValueError(
                f"predict: max_points_per_series must be an integer >= 1 or None, got "
                f"{max_points_per_series!r}"
            )
        # the query (and its bounds) is checked before the table is read
        if (horizon is None) == (times is None):
            raise ValueError("predict: give exactly one of horizon= (hours) or times=")
        if horizon is not None:
            horizon = finite_number("horizon", horizon, "predict")
            if step is not None:
                step = finite_number("step", step, "predict")
                _check_points(
                    math.floor(horizon / step + 1e-9), max_points_per_series,
                    f"horizon={horizon:g} h at step={step:g} h",
                )
        table = fitted.table(data)
        starts = None
        if cutoff is not None:
            table, starts = self._cut_table(table, cutoff)
        dataset = fitted.dataset(table, TaskConfig(kind="none"))
        if dataset.num_excluded:
            skipped = [table.series_ids[i] for i in np.flatnonzero(table.lengths == 0)]
            where = " before their cutoff" if cutoff is not None else ""
            message = (
                f"predict: {dataset.num_excluded} series without observations{where} skipped "
                f"(e.g. {', '.join(map(repr, skipped[:5]))})"
            )
            log.warning(message)
            if cutoff is not None:
                warnings.warn(message, UserWarning, stacklevel=2)
        if starts is not None:
            starts = starts[dataset.indices]
        query, given = self._query_times(
            dataset, horizon, times, step, max_points_per_series, starts
        )
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            frames = self._predict_batches(dataset, query, quantiles, int(batch_size), progress, given)
        columns = ["series_id", "time", "channel", "mean", *map(quantile_name, quantiles)]
        if not frames:
            return pd.DataFrame(columns=columns)
        result = pd.concat(frames, ignore_index=True).rename(columns={"value": "mean"})
        return result[columns]

    def predict_proba(
        self,
        data: Any,
        *,
        cutoff: float | None = None,
        batch_size: int = 64,
    ) -> pd.DataFrame:
        """Class probabilities per series of a classifier (``fit(..., task="classification")``).

        Args:
            data: observations (DataFrame or CSV/Parquet path), same columns as for ``fit``
                (a label column is not needed).
            cutoff: the context ends at this many hours since each series' origin (default:
                the training cutoff, e.g. the first 48 h; None there: every observation).
            batch_size: series per forward pass.

        Returns:
            DataFrame ``series_id, class, probability``: one row per (series, class), classes
            ``0..K-1`` (binary: 0 and 1). Series without observations in the context are
            skipped.
        """
        fitted = self._fitted()
        module = self._classifier("predict_proba")
        if cutoff is None:
            cutoff = fitted.task.cutoff if fitted.task.kind == "classification" else None
        task = TaskConfig(
            kind="classification",
            cutoff=cutoff,
            cutoff_fraction=fitted.task.cutoff_fraction if cutoff is None else None,
            context_boundary=fitted.task.context_boundary,
        )
        dataset = fitted.dataset(fitted.table(data), task, keep_unusable=True)
        frames = []
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                batch = dataset.collate(list(range(start, min(start + batch_size, len(dataset)))))
                probs = module.predict_proba(batch).double().numpy()
                k = probs.shape[1]
                frames.append(
                    pd.DataFrame(
                        {
                            "series_id": np.repeat(np.asarray(batch.series_ids, dtype=object), k),
                            "class": np.tile(np.arange(k), len(batch.series_ids)),
                            "probability": probs.reshape(-1),
                        }
                    )
                )
        if not frames:
            return pd.DataFrame(columns=["series_id", "class", "probability"])
        return pd.concat(frames, ignore_index=True)

    def _predict_batches(
        self,
        dataset: SeriesDataset,
        query: list[np.ndarray],
        quantiles: Sequence[float],
        batch_size: int,
        progress: bool,
        given: list[np.ndarray] | None = None,
    ) -> list[pd.DataFrame]:
        """Forecast frames batch by batch; ``given``: the requested times as given (reported
        in place of times re-derived from hours, mapped back by position)."""
        fitted = self._fitted()
        frames = []
        starts = range(0, len(dataset), batch_size)
        for index, start in enumerate(
            tqdm(starts, desc="predict", disable=not progress or len(starts) < 2)
        ):
            positions = list(range(start, min(start + batch_size, len(dataset))))
            batch = dataset.collate(positions)
            q_times, q_mask = _pad_rows([query[p] for p in positions])
            model_times = torch.from_numpy(q_times.astype(np.float32))
            mean, extra = self._forecast_batch(batch, model_times, quantiles, "predict", index)
            frame = fitted.to_frame(
                batch.series_ids, q_times, mean, q_mask, channels=batch.channels,
                time_offset=batch.time_offset, extra=extra,
            )
            if given is not None and len(frame):
                # entries come out in (row, time, channel) order: the requested times, each
                # repeated once per channel, by position
                exact = np.concatenate([np.repeat(given[p], len(batch.channels)) for p in positions])
                frame["time"] = exact if exact.dtype != object else pd.Series(exact).to_numpy()
            frames.append(frame)
        return frames

    def _forecast_batch(
        self,
        batch: IrregularBatch,
        times: Tensor,
        quantiles: Sequence[float],
        stage: str,
        batch_idx: int,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`_forecast`, with an ODE solver failure re-raised naming the series ids."""
        try:
            return self._forecast(batch, times, quantiles)
        except SolverError as err:
            rows_times = times

            def rerun(sub: IrregularBatch) -> Any:
                rows = [batch.series_ids.index(sid) for sid in sub.series_ids]
                return self._forecast(sub, rows_times[rows], ())

            raise describe_solver_failure(err, batch, stage, None, batch_idx, rerun) from err

    # ------------------------------------------------------------------ evaluate
    def evaluate(
        self, data: Any, *, task: TaskConfig | Mapping[str, Any] | None = None, batch_size: int = 64
    ) -> pd.DataFrame:
        """Score the model on a table under the training task (or ``task``).

        Every series is split into context and target exactly as in training (e.g. first 24 h
        observed, the next hours predicted); errors are computed on the observed target entries
        in original units.

        Returns:
            DataFrame indexed by ``channel`` (each channel, then ``"all"``) with columns
            ``n_obs``, ``mse``, ``rmse``, ``mae`` and, for a probabilistic model, the empirical
            coverage of the central 80 % / 90 % intervals (``coverage80``, ``coverage90``) and
            ``crps`` (original units). Channels never observed in a target get NaN.
            A classifier (``task="classification"``) returns one row ``"all"`` with
            ``n_series`` (series with a known label), ``auroc``, ``auprc``, ``accuracy`` and
            ``ce`` (cross-entropy); the table must carry the label column.
        """
        fitted = self._fitted()
        if task is None:
            task = fitted.task
        elif isinstance(task, Mapping):
            task = TaskConfig(**task)
        if task.kind == "none":
            raise ValueError("evaluate: the task must define a target (not 'none')")
        if task.kind == "classification":
            return self._evaluate_classification(data, task, batch_size)
        dataset = fitted.dataset(fitted.table(data), task)
        if len(dataset) == 0:
            raise DataValidationError(
                f"evaluate: no series has both context and target under task {task}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            scores = self._score(dataset, batch_size)
        if self.tracking and self.run_id and self.fit_summary.get("tracking_uri"):
            if process_rank() == 0:  # under DDP, one child run (rank 0's), not one per rank
                self._log_evaluation(scores, task)
        return scores

    def _classifier(self, caller: str) -> Any:
        """The fitted model, which must have a classification head (else ValueError)."""
        module = self.model
        if getattr(module, "classifier", None) is None:
            raise ValueError(
                f"{caller}: {type(module).__name__} has no classification head; fit with "
                "task='classification' and label_col=... (or build the model with num_classes)"
            )
        return module

    def _evaluate_classification(self, data: Any, task: TaskConfig, batch_size: int) -> pd.DataFrame:
        """``evaluate`` for a classifier: the model's own torchmetrics over the labelled series."""
        from tsode.models.base import classification_metrics

        fitted = self._fitted()
        module = self._classifier("evaluate")
        dataset = fitted.dataset(fitted.table(data), task)
        metrics = classification_metrics(module.num_classes)
        ce_sum, known_total = 0.0, 0
        module.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for start in range(0, len(dataset), batch_size):
                batch = dataset.collate(list(range(start, min(start + batch_size, len(dataset)))))
                if batch.labels is None:
                    break
                known = ~torch.isnan(batch.labels)
                if not bool(known.any()):
                    continue
                logits = module.classify(batch)[known].float()
                labels = batch.labels[known].long()
                probs = torch.softmax(logits, dim=-1)
                scores = probs[:, 1] if module.num_classes == 2 else probs
                for metric in metrics.values():
                    metric.update(scores, labels)
                ce_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
                known_total += int(known.sum())
        if known_total == 0:
            raise DataValidationError(
                f"evaluate: no series with a known label in the table (label column "
                f"{fitted.spec.label_col!r}); classification is scored on labelled series"
            )
        row = {"n_series": known_total, **{name: float(m.compute()) for name, m in metrics.items()},
               "ce": ce_sum / known_total}
        frame = pd.DataFrame([row], index=pd.Index(["all"], name="channel"))
        if self.tracking and self.run_id and self.fit_summary.get("tracking_uri") and process_rank() == 0:
            self._log_evaluation(frame, task)
        return frame

    def _log_evaluation(self, scores: pd.DataFrame, task: TaskConfig) -> None:
        """Log ``evaluate`` results as a child run of the fit's MLflow run: metrics
        ``eval/<channel>/<mse|rmse|mae|n_obs>`` and the table ``evaluation/evaluation.csv``."""
        import tempfile

        from tsode.tracking import log_child_run

        def key(channel: Any) -> str:  # MLflow metric names: letters, digits, _ - . / space
            return re.sub(r"[^\w\-. /]", "_", str(channel))

        metrics = {
            f"eval/{key(channel)}/{column}": float(value)
            for channel, row in scores.iterrows()
            for column, value in row.items()
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "evaluation.csv"
            scores.to_csv(path)
            self.evaluation_run_id = log_child_run(
                self.fit_summary["tracking_uri"], self.run_id, f"forecaster-{self.model_name}-evaluate",
                metrics=metrics, artifacts={"evaluation": path},
                tags={"tsode.task": task.describe()},
            )

    def _score(self, dataset: SeriesDataset, batch_size: int) -> pd.DataFrame:
        """Per-channel errors in original units, accumulated by the models' own metrics
        (:class:`~tsode.models.base.MaskedChannelError`, and
        :class:`~tsode.models.predictive.ProbabilisticMetrics` for a predictive distribution)
        scaled by the fitted data's channel stds (:attr:`FittedData.scale`)."""
        from tsode.models.base import MaskedChannelError
        from tsode.models.predictive import ProbabilisticMetrics

        fitted = self._fitted()
        num_channels = len(fitted.channels)
        mse = MaskedChannelError(num_channels, "mse", fitted.scale)
        mae = MaskedChannelError(num_channels, "mae", fitted.scale)
        predictive = ProbabilisticMetrics(fitted.scale, num_channels=num_channels)
        for start in range(0, len(dataset), batch_size):
            batch = dataset.collate(list(range(start, min(start + batch_size, len(dataset)))))
            out = self._forecast_output(batch, "evaluate", start // batch_size)
            target, mask = batch.target.values, batch.target.mask
            mean = torch.where(mask, out.mean, target)  # entries not observed score exactly 0
            mse.update(mean, target, mask)
            mae.update(mean, target, mask)
            if out.is_probabilistic:
                predictive.update(out, target, mask)
        probabilistic = predictive.channel_sums() if predictive.update_called else {}
        with np.errstate(invalid="ignore", divide="ignore"):
            n = mse.count.numpy()
            sq, ab = mse.err_sum, mae.err_sum
            per_mse = sq.numpy() / n
            per_mae = ab.numpy() / n
            total = n.sum()
            rows = {
                **{
                    c: (int(n[i]), per_mse[i], math.sqrt(per_mse[i]) if n[i] else math.nan, per_mae[i])
                    for i, c in enumerate(fitted.channels)
                },
                "all": (
                    int(total),
                    sq.sum().item() / total,
                    math.sqrt(sq.sum().item() / total),
                    ab.sum().item() / total,
                ),
            }
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=["n_obs", "mse", "rmse", "mae"])
        with np.errstate(invalid="ignore", divide="ignore"):
            for name, sums in probabilistic.items():  # coverage80/90, crps (probabilistic models)
                per_channel = sums.numpy() / n
                frame[name] = [*per_channel, sums.sum().item() / total]
        frame.index.name = "channel"
        return frame

    def _forecast_output(self, batch: IrregularBatch, stage: str, batch_idx: int) -> Forecast:
        """The model's full :class:`Forecast` at the batch's target times (mean and any
        predictive distribution), with an ODE solver failure re-raised naming the series ids."""
        try:
            with torch.no_grad():
                return self.model.forecast(batch, batch.target.times)
        except SolverError as err:
            def rerun(sub: IrregularBatch) -> Any:
                rows = [batch.series_ids.index(sid) for sid in sub.series_ids]
                return self._forecast(sub, batch.target.times[rows], ())

            raise describe_solver_failure(err, batch, stage, None, batch_idx, rerun) from err

    # ------------------------------------------------------------------ plots
    def forecast_split(
        self, datamodule: Any, split: str = "val", max_series: int = 3, grid_points: int = 60
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Observed points and a dense forecast (mean, 5%/95% quantiles when available) for a
        few series of a data module split, in original units — the input of ``plot_forecast``.
        """
        fitted = self._fitted()
        return split_forecast_frames(
            self.model, datamodule, fitted, split=split, max_series=max_series,
            grid_points=grid_points,
        )

    def plot(self, data: Any, forecast: pd.DataFrame | None = None, **kwargs: Any):  # noqa: ANN201
        """``plot_forecast`` of ``data`` (observations) and ``forecast`` (default: predict with
        the default horizon and 5%/95% quantiles when the model gives them)."""
        from tsode.plotting import plot_forecast

        fitted = self._fitted()
        if forecast is None:
            band = (0.05, 0.95)
            quantiles = band if self._gives_quantiles(data, band) else ()  # else the mean only
            forecast = self.predict(data, horizon=fitted.default_horizon, quantiles=quantiles)
        observed = fitted.table(data).to_long_frame()
        return plot_forecast(observed, forecast, **kwargs)

    def _gives_quantiles(self, data: Any, levels: Sequence[float]) -> bool:
        """Whether the model's forecasts have quantiles at ``levels`` (a probabilistic model):
        read from its :class:`Forecast` for the first series of ``data`` at its last
        observation (False when no series has observations)."""
        fitted = self._fitted()
        dataset = fitted.dataset(fitted.table(data), TaskConfig(kind="none"))
        if len(dataset) == 0:
            return False
        batch = dataset.collate([0])
        last = batch.context.times.gather(1, (batch.context.lengths - 1).clamp_min(0).unsqueeze(1))
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # leaves the random state alone
            return self.model.forecast(batch, last).has_quantiles(levels)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Save model weights, its arguments, the fitted data state and the resolved config.

        Writes ``<path>/forecaster.pt`` (what ``load`` reads) and ``<path>/config.yaml`` as
        one unit: into a temporary sibling directory that then replaces ``<path>`` whole, so
        concurrent saves to one path leave one complete model, never files of two, and an
        error leaves the previous model intact. ``<path>`` must be new, empty or a saved
        forecaster (its other files would be replaced too).

        Under DDP (several processes, see :func:`process_rank`) only rank 0 writes; other
        ranks return ``path`` without writing (load it there after your own barrier).

        Raises:
            FileExistsError: ``<path>`` holds files other than a saved forecaster's.
        """
        module = self.model
        path = Path(path)
        rank = process_rank()
        if rank != 0:  # under DDP every rank holds the same model: rank 0 writes it
            log.info("save: process rank %d does not write %s (rank 0 saves)", rank, path)
            return path
        if path.is_dir():
            foreign = sorted(
                p.name for p in path.iterdir()
                if p.name not in (SAVE_FILE, CONFIG_FILE)
                and not p.name.startswith((f".{SAVE_FILE}.", f".{CONFIG_FILE}."))
            )
            if foreign:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise FileExistsError(
                    f"Forecaster.save: {path} holds other files ({shown}); a saved forecaster "
                    "replaces its whole directory, so save into a new or empty directory"
                )
        elif path.exists():
            raise FileExistsError(f"Forecaster.save: {path} is a file; give a directory path")
        trainer_kwargs = {}
        for key, value in self.trainer_kwargs.items():
            if key in ("callbacks", "logger"):
                continue
            if _plain_data(value):
                trainer_kwargs[key] = value
            else:  # objects (strategies, profilers, ...) are not portable: not saved
                log.warning("save: trainer option %r=%r is not plain data; not saved", key, value)
        payload = {
            "format_version": FORMAT_VERSION,
            "model_class": f"{type(module).__module__}.{type(module).__qualname__}",
            "hyper_parameters": dict(module.hparams),
            "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
            "data": self.data.state_dict(),
            "data_kwargs": self.data_kwargs,
            "options": {
                "trainer_kwargs": trainer_kwargs,
                "patience": self.patience,
                "experiment_name": self.experiment_name,
                "seed": self.seed,
            },
            "fit_summary": self.fit_summary,
        }
        # both files into a temporary directory that replaces ``path`` as a whole (atomic
        # exchange on Linux): no truncated model, no pair of files from two saves
        with atomic_directory(path) as tmp:
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(self.config(), sort_keys=False))
            torch.save(payload, tmp / SAVE_FILE)
        return path

    @classmethod
    def load(cls, path: str | Path, *, weights_only: bool = True) -> Forecaster:
        """Load a forecaster written by :meth:`save` (ready to ``predict`` / ``evaluate``).

        Args:
            path: the directory given to ``save`` (or its ``forecaster.pt``).
            weights_only: read the file with ``torch.load(weights_only=True)`` (tensors and
                plain data only, safe for untrusted files). ``False`` allows arbitrary pickled
                objects: only for files you trust.
        """
        path = Path(path)
        file = path / SAVE_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no saved forecaster at {file}")
        try:
            payload = torch.load(file, map_location="cpu", weights_only=weights_only)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{file}: corrupt, or holds objects torch.load(weights_only=True) refuses ({err}). "
                "If you trust the file, use Forecaster.load(path, weights_only=False)."
            ) from err
        except (EOFError, OSError, RuntimeError) as err:
            size = file.stat().st_size
            raise ValueError(
                f"{file}: not a readable saved forecaster ({size} bytes; truncated or corrupt?): "
                f"{type(err).__name__}: {err or 'unexpected end of file'}"
            ) from err
        if not isinstance(payload, Mapping):
            raise ValueError(f"{file}: not a saved forecaster (holds a {type(payload).__name__})")
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{file}: unsupported forecaster format version {version!r}")
        model_class = _saved_model_class(payload.get("model_class"), file)
        hparams = payload.get("hyper_parameters")
        if not isinstance(hparams, Mapping) or not all(isinstance(k, str) for k in hparams):
            raise ValueError(f"{file}: 'hyper_parameters' is not a mapping of argument names")
        hparams = dict(hparams)
        # (LightningCLI stores structured arguments such as the solver as plain mappings and
        # adds bookkeeping keys: keep constructor arguments, rebuild structured ones)
        accepted = _accepted_args(model_class)
        hparams = _convert_args(model_class, {k: v for k, v in hparams.items() if k in accepted})
        weights = payload.get("state_dict")
        if not isinstance(weights, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()
        ):
            raise CheckpointFileError(f"{file}: 'state_dict' is not a mapping of names to tensors")
        check_finite_state_dict(weights, str(file))
        module = model_class(**hparams)
        module.load_state_dict(weights)
        options = payload["options"]
        forecaster = cls(
            module.eval(),
            trainer_kwargs=options["trainer_kwargs"],
            patience=options["patience"],
            experiment_name=options["experiment_name"],
            seed=options["seed"],
            tracking=False,
        )
        forecaster.data = FittedData.from_state_dict(payload["data"])
        forecaster.data_kwargs = payload.get("data_kwargs", {})
        forecaster.fit_summary = payload.get("fit_summary", {})
        return forecaster

    def __repr__(self) -> str:
        state = "fitted" if self.data is not None and self.module is not None else "not fitted"
        return f"Forecaster(model={self.model_name!r}, {state})"
