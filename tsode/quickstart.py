"""``tsode quickstart``: train the default model from ``recipes/quickstart.yaml``, compare with LOCF.

Steps: fit the recipe's model (tracked in MLflow), test it with its best checkpoint, test the
last-observation-carried-forward baseline on the same test split, print both metric rows,
and say where the MLflow run, its forecast plot and the local store are.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from tsode.tracking import MLflowArtifacts, MLflowLogger, find_mlflow_logger

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
BASELINE = "locf"
REPORTED = ("test/mse_orig", "test/mae_orig", "test/mse", "test/mae")


class QuickstartError(RuntimeError):
    """The quickstart cannot run (missing recipe, model or baseline)."""


def _baseline_model(model: pl.LightningModule, datamodule: Any) -> pl.LightningModule:
    """The LOCF baseline built with the same data-derived arguments as the trained model."""
    from tsode.models import MODELS

    if BASELINE not in MODELS:
        raise QuickstartError(
            f"tsode quickstart: the {BASELINE!r} baseline is not available; "
            f"tsode.models.MODELS has {sorted(MODELS)}"
        )
    cls = MODELS[BASELINE]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for name in ("num_channels", "num_static", "channel_means", "channel_stds"):
        if name in accepted:
            value = getattr(model, name, None)
            if value is None:
                value = getattr(model.hparams, name, None) if hasattr(model, "hparams") else None
            if value is None:
                value = getattr(datamodule, name, None)
            if value is not None:
                kwargs[name] = value
    return cls(**kwargs)


def format_comparison(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> str:
    """Plain-text table: one column per row name, one line per metric present anywhere."""
    names = list(rows)
    present = [m for m in metrics if any(m in rows[n] for n in names)]
    width = max([len(m) for m in present] + [6])
    header = f"{'metric':<{width}}  " + "  ".join(f"{n:>14}" for n in names)
    lines = [header, "-" * len(header)]
    for metric in present:
        cells = []
        for name in names:
            value = rows[name].get(metric, math.nan)
            cells.append(f"{value:>14.4f}")
        lines.append(f"{metric:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def run_quickstart(argv: Sequence[str] = ()) -> int:
    """Run the quickstart (see module docstring); returns a process exit code."""
    parser = argparse.ArgumentParser(
        prog="tsode quickstart",
        description="Train the default model on embedded synthetic ICU data and compare with LOCF.",
    )
    parser.add_argument("--config", default=str(DEFAULT_RECIPE), help="recipe (default: %(default)s)")
    parser.add_argument("--max_epochs", type=int, default=None, help="override trainer.max_epochs")
    parser.epilog = "Any other option is passed to the recipe, e.g. --model.init_args.latent_dim 8"
    args, extra = parser.parse_known_args(list(argv))
    recipe = Path(args.config)
    if not recipe.is_file():
        raise QuickstartError(f"tsode quickstart: recipe not found: {recipe}")

    from tsode.cli import TsodeArgumentParser, TsodeCLI
    from tsode.models import MODELS

    missing = [name for name in ("latent_ode", BASELINE) if name not in MODELS]
    if missing:
        raise QuickstartError(
            f"tsode quickstart: model(s) {missing} are not implemented yet "
            f"(tsode.models.MODELS has {sorted(MODELS)}); nothing was trained"
        )

    cli_args = ["--config", str(recipe), *extra]
    if args.max_epochs is not None:
        cli_args += ["--trainer.max_epochs", str(args.max_epochs)]
    TsodeArgumentParser.recipe_files = [str(recipe)]
    cli = TsodeCLI(args=cli_args, run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule

    print(f"[quickstart] training {type(model).__name__} from {recipe}")
    trainer.fit(model, datamodule=datamodule)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    model_metrics = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]

    baseline = _baseline_model(model, datamodule)
    baseline_trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="auto",
    )
    baseline_metrics = baseline_trainer.test(baseline, datamodule=datamodule, verbose=False)[0]

    logger = find_mlflow_logger(trainer)
    if logger is not None:
        logger.log_metrics(
            {f"baseline_{BASELINE}/{k}": float(v) for k, v in baseline_metrics.items()}
        )
        logger.finalize("success")

    rows = {
        type(model).__name__: {k: float(v) for k, v in model_metrics.items()},
        BASELINE.upper(): {k: float(v) for k, v in baseline_metrics.items()},
    }
    print()
    print("[quickstart] test metrics (held-out series; *_orig in original units):")
    print(format_comparison(rows, REPORTED))
    print()
    _print_locations(logger, trainer, best)
    return 0


def _print_locations(logger: MLflowLogger | None, trainer: pl.Trainer, best: str) -> None:
    if logger is None:
        print("[quickstart] no MLflow logger configured: the run was not tracked")
        return
    from mlflow.tracking import MlflowClient

    run = MlflowClient(logger.tracking_uri).get_run(logger.run_id)
    artifacts = run.info.artifact_uri
    print(f"[quickstart] MLflow run {run.info.run_id} (experiment '{logger._experiment_name}')")
    print(f"             tracking store: {logger.tracking_uri}")
    print(f"             artifacts:      {artifacts}")
    plot = next(
        (cb.logged.get("plot") for cb in trainer.callbacks if isinstance(cb, MLflowArtifacts)), None
    )
    if plot:
        local = artifacts.removeprefix("file://")
        print(f"[quickstart] forecast plot:  {local}/{plot}")
    if best:
        print(f"[quickstart] best checkpoint: {best}")
    if logger.tracking_uri.startswith("sqlite:///"):
        print(f"[quickstart] browse runs:    mlflow ui --backend-store-uri {logger.tracking_uri}")


def main() -> int:  # pragma: no cover - convenience for `python -m tsode.quickstart`
    try:
        return run_quickstart(sys.argv[1:])
    except QuickstartError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
