"""``tsode quickstart``: train the default model from ``recipes/quickstart.yaml`` and compare it
with the baselines.

Steps: fit the recipe's model (tracked in MLflow), test it with its best checkpoint, then train
and test GRU-Δt (same epochs, clipping and early stopping) and test last-observation-carried-
forward and the training channel mean on the same split, print the metric rows side by side
(errors, interval coverage, CRPS) and say where the MLflow run, its forecast plot and the local
store are.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from tsode.config import DATA_DERIVED_ARGS, data_derived_kwargs
from tsode.tracking import MLflowArtifacts, MLflowLogger, find_mlflow_logger

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
BASELINES = ("gru_dt", "locf", "mean")
REPORTED = (
    "test/mse_orig", "test/mae_orig", "test/mse", "test/mae", "test/coverage80",
    "test/coverage90", "test/crps",
)


class QuickstartError(RuntimeError):
    """The quickstart cannot run (missing recipe, model or baseline)."""


def _baseline_model(name: str, model: pl.LightningModule, datamodule: Any) -> pl.LightningModule:
    """Baseline ``name`` built with the same data-derived arguments as the trained model."""
    from tsode.models import MODELS

    if name not in MODELS:
        raise QuickstartError(
            f"tsode quickstart: the {name!r} baseline is not available; "
            f"tsode.models.MODELS has {sorted(MODELS)}"
        )
    cls = MODELS[name]
    values = {}
    for arg in DATA_DERIVED_ARGS:
        if arg == "num_classes":
            continue  # the baselines forecast; the quickstart task has no labels
        value = getattr(model, arg, None)
        if value is None:
            value = getattr(model.hparams, arg, None) if hasattr(model, "hparams") else None
        if value is None:
            value = getattr(datamodule, arg, None)
        values[arg] = value
    return cls(**data_derived_kwargs(cls, values))


def _fit_and_test_baseline(
    name: str, model: pl.LightningModule, datamodule: Any, max_epochs: int | None, workdir: str
) -> dict[str, float]:
    """Train a baseline like the main model (same epochs, clipping, early stopping on
    ``val/mse``; parameter-free ones take one pass for their statistics) and test it."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    baseline = _baseline_model(name, model, datamodule)
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False,
                 accelerator="auto", default_root_dir=workdir)
    if not any(p.requires_grad for p in baseline.parameters()):
        trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, enable_checkpointing=False, **quiet)
        trainer.fit(baseline, datamodule=datamodule)
        return trainer.test(baseline, datamodule=datamodule, verbose=False)[0]
    checkpoint = ModelCheckpoint(dirpath=workdir, monitor="val/mse", mode="min")
    trainer = pl.Trainer(
        max_epochs=max_epochs or 15, gradient_clip_val=1.0,
        callbacks=[EarlyStopping("val/mse", patience=5), checkpoint], **quiet,
    )
    trainer.fit(baseline, datamodule=datamodule)
    return trainer.test(baseline, datamodule=datamodule, ckpt_path=checkpoint.best_model_path or None,
                        verbose=False)[0]


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

    missing = [name for name in BASELINES if name not in MODELS]
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

    import tempfile

    rows = {type(model).__name__: {k: float(v) for k, v in model_metrics.items()}}
    logger = find_mlflow_logger(trainer)
    for name in BASELINES:
        print(f"[quickstart] baseline {name} on the same split")
        with tempfile.TemporaryDirectory(prefix="tsode-quickstart-") as workdir:
            metrics = _fit_and_test_baseline(name, model, datamodule, trainer.max_epochs, workdir)
        rows[name.upper() if name in ("locf", "mean") else name] = {
            k: float(v) for k, v in metrics.items()
        }
        if logger is not None:
            logger.log_metrics({f"baseline_{name}/{k}": float(v) for k, v in metrics.items()})
    if logger is not None:
        logger.finalize("success")

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
