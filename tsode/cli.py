"""The ``tsode`` command: LightningCLI over every tsode model and data module, plus ``quickstart``.

Usage::

    tsode fit      --config recipes/<name>.yaml [--trainer.max_epochs 3 ...]
    tsode validate --config recipes/<name>.yaml --ckpt_path <checkpoint>
    tsode test     --config recipes/<name>.yaml --ckpt_path <checkpoint>
    tsode predict  --config recipes/<name>.yaml --ckpt_path <checkpoint> --predictions.output f.csv
    tsode fit      --config recipes/<name>.yaml --print_config
    tsode quickstart [--config recipes/quickstart.yaml] [--max_epochs N]

A recipe names ``model.class_path`` (any ``tsode.models`` class), ``data.class_path`` (any
``tsode.data`` data module) and trainer options. ``num_channels`` /
``channel_means`` / ``channel_stds`` of the model are linked from the data module. Every run
logs to MLflow (:class:`tsode.tracking.MLflowLogger`, see ``docs/tracking.md``); the
``checkpoint`` section configures the best-checkpoint callback, ``tracking`` the MLflow
artifacts callback and ``predictions`` where ``tsode predict`` writes its forecasts.
"""

from __future__ import annotations

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

from tsode.prediction_writer import ForecastWriter
from tsode.tracking import MLflowArtifacts, find_mlflow_logger

SUBCOMMANDS = ("fit", "validate", "test", "predict")
MONITOR = "val/mse"
REPO_RECIPES = Path(__file__).resolve().parents[1] / "recipes"

#: Values every model may take from the data module (linked only where the model accepts them).
LINKED_FROM_DATA = ("num_channels", "channel_means", "channel_stds")


USAGE = """usage: tsode {fit,validate,test,predict} --config RECIPE.yaml [--key value ...]
       tsode quickstart [--max_epochs N] [--config RECIPE.yaml]

  fit        train a model (an MLflow run)      validate / test   score a checkpoint (--ckpt_path)
  predict    forecast (--predictions.output f.csv)   quickstart   the README's main job
  options: --print_config, any recipe key (--trainer.max_epochs 3); tsode fit --help lists them
"""


class RecipeError(SystemExit):
    """A recipe (or command-line override) was rejected; the message names key and file."""


def _recipe_files(args: Sequence[str]) -> list[str]:
    """Config files given with ``--config`` / ``-c`` / ``--config=...``."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def explain_parse_error(message: str) -> tuple[str | None, str]:
    """Pull the offending dotted key and a one-line reason out of a jsonargparse message."""
    top = re.search(r"does not accept option '([^']+)'", message)
    if top:
        return top.group(1), "unknown key"
    path: list[str] = []
    reason = "invalid value"
    token = re.compile(
        r"Parser key \"(?P<key>[^\"]+)\"|class_path '(?P<cls>[^']+)'|"
        r"Option '(?P<opt>[^']+)' is not accepted|Key \"(?P<k2>[^\"]+)\" is required|"
        r"(?P<exp>Expected a [^\n]*)"
    )
    owner = None
    for match in token.finditer(message):
        if match.group("key"):
            path.append(match.group("key"))
        elif match.group("cls"):
            owner = match.group("cls")
            path.append("init_args")
        elif match.group("opt"):
            path.append(match.group("opt"))
            reason = f"unknown key (not a parameter of {owner})" if owner else "unknown key"
            break
        elif match.group("k2"):
            path.append(match.group("k2"))
            reason = "required key missing"
            break
        elif match.group("exp"):
            if "NoneType" in match.group("exp"):
                continue
            reason = f"wrong type: {match.group('exp').strip()}"
            break
    if path and path[-1] == "init_args":
        path.pop()
    key = ".".join(path) if path else None
    return key, reason


def _normalizer_means(normalizer: Any) -> list[float]:
    return [float(x) for x in normalizer.mean]


def _normalizer_stds(normalizer: Any) -> list[float]:
    return [float(x) for x in normalizer.std]


class TsodeArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with recipe-aware error messages (key, reason and file)."""

    recipe_files: list[str] = []

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        key, reason = explain_parse_error(message)
        where = ", ".join(self.recipe_files) if self.recipe_files else "command-line arguments"
        headline = f"tsode: invalid configuration in {where}"
        if key:
            headline += f": key '{key}': {reason}"
        details = "\n".join(f"  {line}" for line in message.splitlines())
        sys.stderr.write(
            f"{headline}\n{details}\n(see accepted keys with `tsode <subcommand> --help`, "
            f"or the resolved recipe with --print_config)\n"
        )
        raise RecipeError(2)


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
            },
            args=list(args) if args is not None else None,
            **kwargs,
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        self.parser_class = TsodeArgumentParser
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (a list, as on the command line; None: ``sys.argv``)."""
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
        # (num_static is not linked: no model takes static covariates yet, and jsonargparse
        # would pass a link target the model lacks as an unexpected keyword argument)
        parser.link_arguments("data.num_channels", "model.init_args.num_channels", apply_on="instantiate")
        parser.link_arguments(
            "data.normalizer", "model.init_args.channel_means", compute_fn=_normalizer_means,
            apply_on="instantiate",
        )
        parser.link_arguments(
            "data.normalizer", "model.init_args.channel_stds", compute_fn=_normalizer_stds,
            apply_on="instantiate",
        )

    def before_instantiate_classes(self) -> None:
        """Name the MLflow run after the recipe file unless the recipe names it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        logger = config.get("trainer", {}).get("logger")
        files = TsodeArgumentParser.recipe_files
        if files and logger is not None and not isinstance(logger, bool):
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
            if init_args is not None and init_args.get("run_name") is None:
                init_args["run_name"] = Path(files[-1]).stem


# ---------------------------------------------------------------------- quickstart


def _quickstart(argv: Sequence[str]) -> int:
    from tsode.quickstart import QuickstartError, run_quickstart

    try:
        return run_quickstart(argv)
    except QuickstartError as error:
        sys.stderr.write(f"{error}\n")
        return 1


def _limit_threads() -> None:
    """One intra-op thread unless ``OMP_NUM_THREADS`` says otherwise.

    tsode's models run many small ops (ODE steps on small batches); on a busy CPU, torch's
    intra-op thread pool makes each of them orders of magnitude slower.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tsode`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(USAGE)
        return 2
    if args and args[0] == "quickstart":
        _limit_threads()
        return _quickstart(args[1:])
    missing = [path for path in _recipe_files(args) if not Path(path).is_file()]
    if missing:
        sys.stderr.write(f"tsode: recipe file not found: {', '.join(missing)}\n")
        return 2
    run(args)
    return 0


def run(args: Sequence[str]) -> TsodeCLI:
    """Run the ``tsode`` LightningCLI on ``args`` in this process; returns the CLI object
    (its ``trainer``, ``model`` and ``datamodule`` are inspectable afterwards)."""
    _limit_threads()
    TsodeArgumentParser.recipe_files = _recipe_files(args)
    return TsodeCLI(args=args)


if __name__ == "__main__":
    sys.exit(main())
