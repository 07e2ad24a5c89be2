"""The ``tsode`` command: LightningCLI over every tsode model and data module.

Usage::

    tsode fit      --config recipes/<name>.yaml [--trainer.max_epochs 3 ...]
    tsode fit      --recipe physionet_forecast_odernn     (a recipe by name, see tsode.recipes)
    tsode validate --config recipes/<name>.yaml --ckpt_path <checkpoint>
    tsode test     --config recipes/<name>.yaml --ckpt_path <checkpoint>
    tsode predict  --config recipes/<name>.yaml --ckpt_path <checkpoint> --predictions.output f.csv
    tsode fit      --config recipes/<name>.yaml --print_config
    tsode quickstart [--config recipes/quickstart.yaml] [--max_epochs N]

(the console script, :mod:`tsode.__main__`, sends ``quickstart`` to :mod:`tsode.quickstart`,
which builds on this module; everything else to :func:`main` here.)

``--recipe NAME`` stands for the ``--config`` files of recipe ``NAME`` (a single file
``recipes/NAME.yaml``, or a composed combination such as ``physionet_forecast_odernn``: base,
task and model overlays, see :mod:`tsode.recipes`). A recipe names ``model.class_path`` (any
``tsode.models`` class), ``data.class_path`` (any ``tsode.data`` data module) and trainer
options. ``num_channels`` / ``channel_means`` / ``channel_stds`` of the model are linked from
the data module. Every run logs to MLflow (:class:`tsode.tracking.MLflowLogger`, see
``docs/tracking.md``); the ``checkpoint`` section configures the best-checkpoint callback,
``tracking`` the MLflow artifacts callback and ``predictions`` where ``tsode predict`` writes
its forecasts.

Reading recipe files (bounds, names, composition) is :mod:`tsode.recipes`; turning a rejected
recipe into ``file: key: reason`` is :mod:`tsode.recipe_errors`. Why this module is still
over 500 lines: the ``TsodeCLI`` hooks (links from the data module, run names, resume,
checkpoint checks, the end-of-fit summary) all act on the one LightningCLI object.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from tsode.config import DATA_DERIVED_ARGS
from tsode.errors import (
    RecipeFileError,
    SolverFailureContext,
    TrackingStoreError,
    TsodeError,
    explained,
)
from tsode.prediction_writer import ForecastWriter
from tsode.progress import (
    EpochLogger,
    has_trainable_parameters,
    logging_interval,
    quiet_lightning_warnings,
    stdout_is_tty,
)
from tsode.recipe_errors import (  # noqa: F401  (explain_parse_error, locate_key: public here too)
    RecipeError,
    _caused_by,
    _data_error,
    explain_instantiation_error,
    explain_parse_error,
    find_rejected_key,
    locate_key,
    report_recipe_error,
)
from tsode.recipes import (  # noqa: F401  (the recipe-file checks, public here too)
    MAX_RECIPE_BYTES,
    MAX_RECIPE_NODES,
    REPO_RECIPES,
    _is_file,
    check_command_line_yaml,
    check_recipe_file,
    check_recipe_text,
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
from tsode.tracking import MLflowArtifacts, find_mlflow_logger

SUBCOMMANDS = ("fit", "validate", "test", "predict")
MONITOR = "val/mse"

#: Values every model may take from the data module (linked only where the model accepts them).
LINKED_FROM_DATA = DATA_DERIVED_ARGS
#: Of those, the ones not every model takes: linked only when the chosen model (and, for
#: ``num_classes``, the data module: 0 unless ``task: classification``) has them.
OPTIONALLY_LINKED = ("num_static", "num_classes")


USAGE = """usage: tsode {fit,validate,test,predict} --config RECIPE.yaml [--key value ...]
       tsode {fit,validate,test,predict} --recipe NAME [--key value ...]   (e.g. physionet_forecast_odernn)
       tsode quickstart [--max_epochs N] [--config RECIPE.yaml]

  fit        train a model (an MLflow run)      validate / test   score a checkpoint (--ckpt_path)
  predict    forecast (--predictions.output f.csv)   quickstart   the README's main job
  options: --print_config, any recipe key (--trainer.max_epochs 3); tsode fit --help lists them
"""


def expand_recipe_args(args: Sequence[str]) -> tuple[list[str], str | None]:
    """``args`` with each ``--recipe NAME`` (or ``--recipe=NAME``) replaced by ``--config``
    options for the files of recipe ``NAME`` (:func:`tsode.recipes.recipe_files`), and the
    last name given (None: no ``--recipe``). Raises :class:`RecipeFileError` for an unknown
    name."""
    from tsode.recipes import recipe_files

    out: list[str] = []
    name = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--recipe" or arg.startswith("--recipe="):
            if arg == "--recipe":
                if i + 1 >= len(args):
                    raise RecipeFileError("--recipe needs a recipe name (e.g. physionet_forecast_odernn)")
                name, i = args[i + 1], i + 2
            else:
                name, i = arg.split("=", 1)[1], i + 1
            for path in recipe_files(name):
                out += ["--config", str(path)]
            continue
        out.append(arg)
        i += 1
    return out, name


def _run_name(files: Sequence[str]) -> str | None:
    """The recipe's name for MLflow run names and resume folders: the ``--recipe`` name, else
    the stem of the last ``--config`` file."""
    if TsodeArgumentParser.recipe_name:
        return TsodeArgumentParser.recipe_name
    return Path(files[-1]).stem if files else None


def _recipe_files(args: Sequence[str]) -> list[str]:
    """Config files given with ``--config`` / ``-c`` / ``--config=...``."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _normalizer_means(normalizer: Any) -> list[float]:
    return [float(x) for x in normalizer.mean]


def _normalizer_stds(normalizer: Any) -> list[float]:
    return [float(x) for x in normalizer.std]


class TsodeArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with recipe-aware error messages (key, reason and file)."""

    recipe_files: list[str] = []
    #: the command line (its ``--key value`` overrides are checked with the files)
    recipe_args: list[str] = []
    #: the ``--recipe`` name the files came from (None: given as ``--config`` files)
    recipe_name: str | None = None

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        # the recipe checked against the classes it configures; jsonargparse's message only
        # for what that check cannot place (a top-level key, a missing key, an override)
        key, reason = (
            find_rejected_key(self.recipe_files, self.recipe_args) or explain_parse_error(message)
        )
        report_recipe_error(key, reason, message, self.recipe_files)


class MLflowSaveConfigCallback(SaveConfigCallback):
    """Log the fully resolved recipe to the MLflow run: flattened params + ``config/config.yaml``."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = find_mlflow_logger(trainer)
        if logger is None:
            return
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        # values linked from the data module are filled in at instantiation: take them from
        # the model, so the logged recipe is complete
        init_args = resolved.get("model", {}).setdefault("init_args", {})
        hparams = getattr(pl_module, "hparams", {})
        for name in LINKED_FROM_DATA:
            if name in hparams and init_args.get(name) is None:
                value = hparams[name]
                init_args[name] = list(value) if isinstance(value, tuple) else value
        logger.log_config(resolved)
        for path in TsodeArgumentParser.recipe_files:
            if Path(path).is_file():
                logger.experiment.log_artifact(logger.run_id, path, "config/recipe")


class TsodeCLI(LightningCLI):
    """LightningCLI in subclass mode over ``LightningModule`` / ``LightningDataModule``."""

    #: where ``tsode fit`` keeps ``last.ckpt`` (see :func:`tsode.resume.resume_dir`)
    resume_dir: Path | None = None

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        import tsode.data  # noqa: F401  (registers the data modules as subclasses)
        import tsode.models  # noqa: F401  (registers the models as subclasses)

        kwargs.setdefault("parser_kwargs", {"parser_mode": "yaml"})
        super().__init__(
            model_class=pl.LightningModule,
            datamodule_class=pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=MLflowSaveConfigCallback,
            save_config_kwargs={"save_to_log_dir": False},
            trainer_defaults={
                "logger": {"class_path": "tsode.tracking.MLflowLogger"},
                # progress bars on a terminal only; elsewhere EpochLogger (a line per epoch)
                "enable_progress_bar": stdout_is_tty(),
            },
            args=list(args) if args is not None else None,
            **kwargs,
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        self.parser_class = TsodeArgumentParser
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (a list, as on the command line; None: ``sys.argv``)."""
        TsodeArgumentParser.recipe_args = list(sys.argv[1:] if args is None else args)
        self.config = parser.parse_args(args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch}",
            }
        )
        parser.add_lightning_class_args(MLflowArtifacts, "tracking")
        parser.add_lightning_class_args(ForecastWriter, "predictions")
        # (``num_static`` is linked in ``before_instantiate_classes``, only for a model whose
        # constructor takes it: jsonargparse passes a link target the class lacks as an
        # unexpected keyword argument under ``validate``/``test``/``predict``)
        parser.link_arguments("data.num_channels", "model.init_args.num_channels", apply_on="instantiate")
        parser.link_arguments(
            "data.normalizer", "model.init_args.channel_means", compute_fn=_normalizer_means,
            apply_on="instantiate",
        )
        parser.link_arguments(
            "data.normalizer", "model.init_args.channel_stds", compute_fn=_normalizer_stds,
            apply_on="instantiate",
        )

    def _link_optional(self, config: Any, names: Sequence[str]) -> None:
        """Link ``data.<name>`` into ``model.init_args.<name>`` for each ``name`` the chosen
        model's constructor accepts (and the recipe leaves at its default)."""
        model = config.get("model") if hasattr(config, "get") else None
        class_path = getattr(model, "class_path", None)
        if not isinstance(class_path, str):
            return
        module_name, _, class_name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
            accepted = inspect.signature(cls.__init__).parameters
        except (ImportError, AttributeError, TypeError, ValueError):
            return  # reported by instantiation
        parser = self._parser(self.subcommand)
        init_args = getattr(model, "init_args", None)
        data_class = _config_class(config.get("data") if hasattr(config, "get") else None)
        for name in names:
            if name not in accepted:
                continue
            if data_class is not None and not hasattr(data_class, name):
                continue  # a data module without it (e.g. a user's own): nothing to link
            given = getattr(init_args, name, None) if init_args is not None else None
            if given is None or given == accepted[name].default:  # not set by the recipe
                parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        """Build the recipe's objects; a constructor rejecting a value is a recipe error
        (key, reason and file), not a traceback."""
        self._trainer_failed = False
        try:
            super().instantiate_classes()
        except (RecipeError, KeyboardInterrupt):
            raise
        except Exception as error:
            store_error = _caused_by(error, TrackingStoreError)
            if store_error is not None:  # the tracking store, not the recipe's trainer.logger
                raise store_error from error
            data_error = _data_error(error)
            if data_error is not None:  # the data is wrong, not the recipe
                sys.stderr.write(f"tsode: invalid data: {data_error}\n")
                raise RecipeError(2) from error
            config = self.config[self.subcommand] if self.subcommand else self.config
            key, reason = explain_instantiation_error(error, config, self._trainer_failed)
            report_recipe_error(key, reason, str(error), TsodeArgumentParser.recipe_files)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> pl.Trainer:
        """The recipe's trainer, plus :class:`SolverFailureContext` (solver failures name
        series ids, stage, epoch and batch); its :class:`MLflowArtifacts` callbacks log
        ``Forecaster.from_trained`` as the pyfunc model."""
        extra: list[Any] = [SolverFailureContext()]
        if not config.get("enable_progress_bar", True) and self.subcommand == "fit":
            extra.append(EpochLogger())
        if self.subcommand == "fit" and getattr(self, "resume_dir", None) is not None:
            # last.ckpt where the next `tsode fit ... --ckpt_path last` finds it; per-epoch seeds
            extra.extend([ResumeCheckpoint(self.resume_dir), EpochSeed()])
        try:
            trainer = super()._instantiate_trainer(config, [*callbacks, *extra])
        except Exception:
            self._trainer_failed = True  # a Trainer option, not the model or data
            raise
        from tsode.api import Forecaster

        for callback in trainer.callbacks:  # the pyfunc model MLflowArtifacts logs
            if isinstance(callback, MLflowArtifacts) and callback.forecaster_factory is None:
                callback.forecaster_factory = Forecaster.from_trained
        return trainer

    def before_fit(self) -> None:
        """Refuse a fit with an empty validation split before any training (the checkpoint and
        early stopping monitor ``val/mse``)."""
        from tsode.api import check_validation_split

        if self.datamodule is not None and hasattr(self.datamodule, "train_dataloader"):
            try:
                self.datamodule.setup("fit")
                batches = len(self.datamodule.train_dataloader())
            except (TypeError, NotImplementedError):  # no sized loader: leave the interval
                batches = 0
            self.trainer.log_every_n_steps = logging_interval(self.trainer.log_every_n_steps, batches)
        monitors = [getattr(cb, "monitor", None) for cb in self.trainer.callbacks]
        if self.datamodule is None or not any(isinstance(m, str) and m.startswith("val/") for m in monitors):
            return
        self.datamodule.setup("fit")
        fractions = None if getattr(self.datamodule, "splits", None) is not None else getattr(
            self.datamodule, "split_fractions", None
        )
        try:
            check_validation_split(self.datamodule, fractions, where="tsode fit")
        except TsodeError as err:
            raise type(err)(
                f"{err} (or, in the recipe, no EarlyStopping callback and checkpoint.monitor: null)"
            ) from None

    def _parse_ckpt_path(self) -> None:
        """Check ``ckpt_path`` (command line or recipe) before Lightning reads it (see
        :func:`check_checkpoint`), then let Lightning take the model arguments it stores."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_checkpoint(self.config[subcommand].get("ckpt_path"))
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand; an ODE solver failure is re-raised naming the series ids."""
        try:
            with quiet_lightning_warnings(has_trainable_parameters(self.model)):
                super()._run_subcommand(subcommand)
        except SolverError as err:
            found = explained(err)
            if found is None:
                raise
            raise found from err
        if subcommand == "fit" and self.trainer.is_global_zero:
            print(
                fit_summary(
                    self.trainer, TsodeArgumentParser.recipe_files, TsodeArgumentParser.recipe_name
                ),
                flush=True,
            )

    def _parent_run_tags(self, config: Any) -> dict[str, str]:
        """Tags making a test / predict run a child of the fit run that wrote its checkpoint."""
        ckpt = config.get("ckpt_path") if hasattr(config, "get") else None
        if self.subcommand not in ("validate", "test", "predict") or not ckpt:
            return {}
        run_id = fit_run_id(ckpt)
        if run_id is None:
            return {}
        return {"mlflow.parentRunId": run_id, "tsode.fit_run_id": run_id,
                "tsode.checkpoint": str(ckpt), "tsode.subcommand": self.subcommand}

    def before_instantiate_classes(self) -> None:
        """Link ``num_static`` when the model takes it; name the MLflow run after the recipe
        file unless the recipe names it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._link_optional(config, OPTIONALLY_LINKED)
        logger = config.get("trainer", {}).get("logger")
        files = TsodeArgumentParser.recipe_files
        if logger is not None and not isinstance(logger, bool):
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
            if init_args is not None:
                stem = _run_name(files)
                tags = self._parent_run_tags(config)
                if tags:  # a child run of the fit: `<recipe>-test`, `<recipe>-predict`
                    init_args["tags"] = {**tags, **dict(init_args.get("tags") or {})}
                    if init_args.get("run_name") is None and stem:
                        init_args["run_name"] = f"{stem}-{self.subcommand}"
                if init_args.get("run_name") is None and stem:
                    init_args["run_name"] = stem
        if self.subcommand == "fit":
            self._resolve_resume(config, logger)

    def _resolve_resume(self, config: Any, logger: Any) -> None:
        """Set :attr:`resume_dir` (where this fit keeps ``last.ckpt``) and turn ``--ckpt_path
        last`` into that file, continuing the MLflow run stored in it."""
        from tsode.tracking import MLflowLogger, resolve_tracking_uri

        stem = _run_name(TsodeArgumentParser.recipe_files)
        init_args = None
        class_path = getattr(logger, "class_path", None) if logger is not None else None
        if isinstance(class_path, str) and _is_subclass(class_path, MLflowLogger):
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is not None:
            self.resume_dir = resume_dir(
                init_args.get("save_dir") or "outputs",
                init_args.get("experiment_name") or "tsode",
                init_args.get("run_name") or stem,
            )
        else:
            root = config.get("trainer", {}).get("default_root_dir") or "."
            self.resume_dir = resume_dir(Path(root) / "outputs", None, stem)
        found = last_checkpoint(self.resume_dir)
        if str(config.get("ckpt_path")) != "last":
            if found is not None:
                close_orphaned_run(found)  # a killed fit's run is not left RUNNING
            return
        if found is None:
            sys.stderr.write(
                f"tsode: fit --ckpt_path last: no last checkpoint in {self.resume_dir}; "
                "training from scratch\n"
            )
            config["ckpt_path"] = None
            return
        check_checkpoint(str(found))
        config["ckpt_path"] = str(found)
        sys.stderr.write(f"tsode: resuming from {found}\n")
        if init_args is not None and init_args.get("run_id") is None:
            uri = resolve_tracking_uri(init_args.get("tracking_uri"))
            init_args["run_id"] = checkpoint_mlflow_run(found, uri)


def _is_subclass(class_path: str, base: type) -> bool:
    """Whether ``class_path`` names a subclass of ``base`` (False if it cannot be imported)."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, base)


def _config_class(node: Any) -> type | None:
    """The class a ``class_path`` config node names (None if it has none or cannot be imported)."""
    class_path = getattr(node, "class_path", None)
    if not isinstance(class_path, str):
        return None
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if isinstance(cls, type) else None


def fit_run_id(ckpt: str | Path) -> str | None:
    """The MLflow run id of the fit that wrote checkpoint ``ckpt``: the one saved in it by
    :class:`tsode.tracking.MLflowArtifacts`, else the run folder of its path
    (``<save_dir>/<experiment id>/<run id>/checkpoints/<file>``); None if neither."""
    if str(ckpt) in SPECIAL_CKPT_PATHS or not Path(ckpt).is_file():
        return None
    from tsode.tracking import checkpoint_run_id

    found = checkpoint_run_id(ckpt)
    if found is not None:
        return found
    path = Path(ckpt).resolve()
    if path.parent.name == "checkpoints" and re.fullmatch(r"[0-9a-f]{32}", path.parent.parent.name):
        return path.parent.parent.name
    return None


def fit_summary(
    trainer: pl.Trainer, recipe_files: Sequence[str], recipe_name: str | None = None
) -> str:
    """What a finished ``tsode fit`` produced and what to run next: the MLflow run, the best
    checkpoint, the best validation score (and the last epoch's validation metrics). The next
    commands name ``--recipe recipe_name`` when given, else the ``--config`` files."""
    lines = [f"tsode: fit finished after {trainer.current_epoch} epoch(s)"]
    logger = find_mlflow_logger(trainer)
    if logger is not None and logger.initialized:
        lines.append(f"  MLflow run:      {logger.run_id} (experiment "
                     f"{logger.experiment_id}, {logger.tracking_uri})")
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") or ""
    if best:
        lines.append(f"  best checkpoint: {best}")
    score = getattr(callback, "best_model_score", None)
    if score is not None:
        lines.append(f"  best {callback.monitor}: {float(score):.6g}")
    val = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if val:
        shown = ", ".join(f"{k} {float(v):.4g}" for k, v in sorted(val.items())[:8])
        lines.append(f"  last epoch:      {shown}")
    if best:
        config = (
            f"--recipe {recipe_name}" if recipe_name
            else " ".join(f"--config {f}" for f in recipe_files) or "--config <recipe>"
        )
        lines.append(f"  next:            tsode test {config} --ckpt_path {best}")
        lines.append(f"                   tsode predict {config} --ckpt_path {best} "
                     "--predictions.output forecasts.csv")
    return "\n".join(lines)


def limit_threads() -> None:
    """One intra-op thread unless ``OMP_NUM_THREADS`` says otherwise.

    tsode's models run many small ops (ODE steps on small batches); on a busy CPU, torch's
    intra-op thread pool makes each of them orders of magnitude slower.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


#: ``ckpt_path`` values Lightning resolves itself (not files).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def check_checkpoint(ckpt: Any) -> None:
    """A missing, truncated, tampered (pickled objects), non-finite or foreign checkpoint is a
    :class:`tsode.errors.CheckpointFileError` naming the file; read with ``weights_only=True``."""
    if not isinstance(ckpt, str | Path) or str(ckpt) in SPECIAL_CKPT_PATHS or str(ckpt).startswith(
        "registry:"
    ):
        return
    import torch

    from tsode.checkpoints import load_checkpoint_weights
    from tsode.errors import CheckpointFileError
    from tsode.models import allowed_model_class

    load_checkpoint_weights(ckpt)  # exists, readable, weights only, finite
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hparams = state.get("hyper_parameters") or {}
    named = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if named is not None and (not isinstance(named, str) or allowed_model_class(named) is None):
        raise CheckpointFileError(
            f"{ckpt}: names model class {named!r}, which is not a tsode model or a class "
            "registered with tsode.register_model; refusing to use it"
        )


def _ckpt_args(args: Sequence[str]) -> list[str]:
    """``--ckpt_path`` values given on the command line."""
    found = []
    for i, arg in enumerate(args):
        if arg == "--ckpt_path" and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--ckpt_path="):
            found.append(arg.split("=", 1)[1])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tsode`` command's LightningCLI subcommands (``fit`` / ``validate`` / ``test`` /
    ``predict``); the console script (:mod:`tsode.__main__`) routes ``quickstart`` elsewhere."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(USAGE)
        return 2
    if args and args[0] == "quickstart":  # dispatched by the console script, tsode.__main__
        sys.stderr.write(
            "tsode: 'quickstart' is run by the tsode console script (tsode.__main__:main; "
            "python -m tsode quickstart); reinstall tsode if your script predates it\n"
        )
        return 2
    try:
        expanded, _ = expand_recipe_args(args)
    except RecipeFileError as err:
        sys.stderr.write(f"tsode: invalid recipe: {err}\n")
        return 2
    missing = [path for path in _recipe_files(expanded) if not _is_file(path)]
    if missing:
        sys.stderr.write(f"tsode: recipe file not found: {', '.join(missing)}{_moved_hint(missing)}\n")
        return 2
    from tsode.data import DataValidationError

    try:
        run(args)
    except RecipeFileError as err:
        sys.stderr.write(f"tsode: invalid recipe: {err}\n")
        return 2
    except (TsodeError, DataValidationError) as err:  # explained: no traceback
        sys.stderr.write(f"tsode: error: {' '.join(str(err).split())}\n")
        return 1
    return 0


def _moved_hint(missing: Sequence[str]) -> str:
    """For a missing file named like a recipe (``recipes/physionet_forecast_odernn.yaml``,
    now composed from overlays), the ``--recipe`` option that runs it."""
    from tsode.recipes import recipe_names

    names = set(recipe_names())
    found = [Path(m).stem for m in missing if Path(m).stem in names]
    if not found:
        return ""
    return f" (recipe {found[0]!r} is composed from overlays: use --recipe {found[0]})"


def run(args: Sequence[str]) -> TsodeCLI:
    """Run the ``tsode`` LightningCLI on ``args`` in this process (``--recipe NAME`` expanded
    to its ``--config`` files); returns the CLI object (its ``trainer``, ``model`` and
    ``datamodule`` are inspectable afterwards)."""
    limit_threads()
    args, name = expand_recipe_args(args)
    TsodeArgumentParser.recipe_name = name
    check_command_line_yaml(args)  # inline YAML: bounded size / alias expansion
    files = [f for f in _recipe_files(args) if _is_file(f)]  # others: inline YAML
    for file in files:  # bounded size / alias expansion, no duplicate keys (RecipeFileError)
        check_recipe_file(file)
    for ckpt in _ckpt_args(args):  # before the (slow) parser is built
        check_checkpoint(ckpt)
    TsodeArgumentParser.recipe_files = files
    return TsodeCLI(args=args)


if __name__ == "__main__":
    sys.exit(main())
