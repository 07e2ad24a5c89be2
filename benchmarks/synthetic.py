"""Forecast accuracy on the embedded synthetic ICU data: every model side by side, one run.

Data: ``SyntheticICUDataModule(num_series=--num-series)`` (default 1000 series over 48 h), the
forecast task observing t <= 24 h and predicting every observation after it (``--horizon``
limits the window), the module's own seeded 70/15/15 split by series. Each model trains with
the library defaults (no per-model tuning) plus what every recipe uses: Adam at the model's
default learning rate, batch 32, gradient clipping at 1.0, at most ``--epochs`` epochs, early
stopping with patience ``--patience`` on ``val/mse``, test at the best validation epoch.

Reported per model (mean over ``--seeds``, each model in its own single-threaded subprocess):
normalized test MSE and MAE (pooled over all target entries), skill ``1 - MSE/MSE(mean)``,
the ratio of MSE to LOCF's, the empirical coverage of the 80 % and 90 % central intervals and
the CRPS (probabilistic models only), epochs trained and wall time.

Usage: ``python benchmarks/synthetic.py [--models odernn latent_ode ...] [--epochs 40]
[--seeds 0 1] [--jobs 2] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = ("mean", "locf", "gru_dt", "odernn", "latent_ode", "ncde")
METRICS = ("mse", "mae", "coverage80", "coverage90", "crps")
# the issue's targets on this data (normalized test MSE, 24 h horizon, 1000 series)
TARGET_MSE = {"odernn": 0.35, "latent_ode": 0.45}
TARGET_COVERAGE = {"coverage80": (0.75, 0.85), "coverage90": (0.86, 0.94)}


def EpochReport(name: str):  # noqa: ANN201, N802 - a Lightning callback built lazily
    """A callback printing each epoch's validation metrics to stderr (the learning curve)."""
    import lightning.pytorch as pl

    class _EpochReport(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            if trainer.sanity_checking:
                return
            shown = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
                     if k.startswith("val/") and k.split("/")[1] in ("mse", "coverage80", "coverage90")}
            print(f"[{name}] epoch {trainer.current_epoch} {shown}", file=sys.stderr, flush=True)

    return _EpochReport()


def train_one(model_name: str, seed: int, args: argparse.Namespace) -> dict:
    """Fit ``model_name`` on the synthetic data and test it at its best validation epoch."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from tsode.data import LoaderConfig, SyntheticICUDataModule, TaskConfig
    from tsode.models import MODELS

    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    data = SyntheticICUDataModule(
        num_series=args.num_series, task=TaskConfig("forecast", cutoff=24.0, horizon=args.horizon),
        loader=LoaderConfig(batch_size=32), seed=seed,
    )
    data.setup("fit")
    if args.train_cutoff_range is not None:
        data.set_task(train_cutoff_range=tuple(args.train_cutoff_range))
    cls = MODELS[model_name]
    derived = {
        "num_channels": data.num_channels,
        "num_static": data.num_static,
        "channel_means": [float(x) for x in data.normalizer.mean],
        "channel_stds": [float(x) for x in data.normalizer.std],
    }
    from tsode.config import accepted_args

    accepted = accepted_args(cls)
    kwargs = {k: v for k, v in derived.items() if k in accepted}
    model = cls(**{**kwargs, **json.loads(args.model_kwargs)})
    trainable = any(p.requires_grad for p in model.parameters())
    workdir = tempfile.mkdtemp(prefix="tsode-synthetic-")
    start = time.perf_counter()
    epochs = 0
    if trainable:
        checkpoint = ModelCheckpoint(dirpath=workdir, monitor="val/mse", mode="min")
        trainer = pl.Trainer(
            max_epochs=args.epochs, gradient_clip_val=1.0, logger=False,
            callbacks=[checkpoint, EpochReport(f"{model_name}-seed{seed}")]
            + ([EarlyStopping("val/mse", patience=args.patience)] if args.patience > 0 else []),
            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
            default_root_dir=workdir,
        )
        trainer.fit(model, datamodule=data)
        epochs = trainer.current_epoch
        result = trainer.test(model, datamodule=data, ckpt_path=checkpoint.best_model_path,
                              verbose=False)[0]
    else:
        trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                             accelerator="cpu", default_root_dir=workdir)
        result = trainer.test(model, datamodule=data, verbose=False)[0]
    seconds = time.perf_counter() - start
    row = {"model": model_name, "seed": seed, "seconds": seconds, "epochs": epochs}
    for metric in METRICS:
        if f"test/{metric}" in result:
            row[metric] = float(result[f"test/{metric}"])
    ckpt = checkpoint.best_model_path if trainable else None
    for cutoff in args.eval_cutoffs:  # the same model asked with shorter / longer contexts
        data.set_task(cutoff=cutoff)
        other = trainer.test(model, datamodule=data, ckpt_path=ckpt, verbose=False)[0]
        row[f"mse@{cutoff:g}"] = float(other["test/mse"])
    return row


def _run_subprocess(model: str, seed: int, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, __file__, "--worker", model, "--worker-seed", str(seed), *argv]
    # stderr is inherited: each worker's learning curve (EpochReport) streams as it trains
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env)


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.fmean(values) if values else math.nan


def _std(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def render(rows: list[dict], models: list[str]) -> str:
    """Markdown table: one line per model, metrics as mean (± std over seeds)."""
    by_model = {m: [r for r in rows if r["model"] == m] for m in models}
    mse_mean = _mean(by_model.get("mean", []), "mse")
    mse_locf = _mean(by_model.get("locf", []), "mse")
    extra = sorted({k for r in rows for k in r if k.startswith("mse@")},
                   key=lambda k: float(k[4:]))
    header = ("| model | MSE | MAE | skill vs mean | MSE / LOCF | cov80 | cov90 | CRPS | epochs | "
              "wall s |" + "".join(f" MSE, cutoff {k[4:]} h |" for k in extra))
    lines = [header, "|" + "---|" * (10 + len(extra))]
    for model, group in by_model.items():
        if not group:
            continue
        mse = _mean(group, "mse")

        def cell(key: str, fmt: str = ".3f", group: list = group) -> str:
            value = _mean(group, key)
            if math.isnan(value):
                return "–"
            spread = _std(group, key)
            return f"{value:{fmt}}" + (f" ± {spread:{fmt}}" if len(group) > 1 else "")

        skill = 1.0 - mse / mse_mean if mse_mean == mse_mean else math.nan
        ratio = mse / mse_locf if mse_locf == mse_locf else math.nan
        lines.append(
            f"| {model} | {cell('mse', '.4f')} | {cell('mae', '.4f')} | {skill:.3f} | {ratio:.3f} "
            f"| {cell('coverage80')} | {cell('coverage90')} | {cell('crps')} | "
            f"{cell('epochs', '.0f')} | {cell('seconds', '.0f')} |"
            + "".join(f" {cell(key, '.4f')} |" for key in extra)
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """One line per issue target: met or missed, and by how much."""
    out = []
    for model, limit in TARGET_MSE.items():
        group = [r for r in rows if r["model"] == model]
        if group:
            mse = _mean(group, "mse")
            verdict = "met" if mse < limit else f"MISSED by {mse - limit:.4f}"
            out.append(f"{model}: MSE {mse:.4f} (target < {limit}) {verdict}")
    for model in sorted({r["model"] for r in rows}):
        group = [r for r in rows if r["model"] == model]
        for key, (low, high) in TARGET_COVERAGE.items():
            value = _mean(group, key)
            if math.isnan(value):
                continue
            verdict = "met" if low <= value <= high else "MISSED"
            out.append(f"{model}: {key} {value:.3f} (target {low}-{high}) {verdict}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=10, help="0: no early stopping")
    parser.add_argument("--model-kwargs", default="{}", help="JSON arguments for every model")
    parser.add_argument("--label", default="", help="name shown for this variant")
    parser.add_argument("--num-series", type=int, default=1000)
    parser.add_argument("--horizon", type=float, default=None, help="hours after the cutoff")
    parser.add_argument("--train-cutoff-range", type=float, nargs=2, default=None,
                        metavar=("LO", "HI"), help="draw each training series' cutoff "
                        "uniformly in [LO, HI] hours every epoch (validation keeps 24 h)")
    parser.add_argument("--eval-cutoffs", type=float, nargs="*", default=[],
                        help="also test the best model with these cutoffs (hours; shorter or "
                        "longer contexts than in training), same horizon")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(train_one(args.worker, args.worker_seed, args)))
        return 0

    shared = ["--epochs", str(args.epochs), "--patience", str(args.patience),
              "--num-series", str(args.num_series), "--model-kwargs", args.model_kwargs]
    if args.horizon is not None:
        shared += ["--horizon", str(args.horizon)]
    if args.train_cutoff_range is not None:
        shared += ["--train-cutoff-range", *map(str, args.train_cutoff_range)]
    if args.eval_cutoffs:
        shared += ["--eval-cutoffs", *map(str, args.eval_cutoffs)]
    queue = [(m, s) for s in args.seeds for m in args.models]
    running: list[tuple[str, int, subprocess.Popen]] = []
    rows: list[dict] = []
    failed = False
    while queue or running:
        while queue and len(running) < args.jobs:
            model, seed = queue.pop(0)
            running.append((model, seed, _run_subprocess(model, seed, shared)))
        model, seed, proc = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            print(f"[synthetic] {model} seed {seed} failed (exit {proc.returncode}; its traceback "
                  "is above)", file=sys.stderr)
            failed = True
            continue
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(f"[synthetic] {json.dumps(row)}", flush=True)
    print()
    if args.model_kwargs != "{}":
        print(f"model arguments: {args.model_kwargs} {args.label}")
    varied = (f", training cutoffs drawn in [{args.train_cutoff_range[0]:g}, "
              f"{args.train_cutoff_range[1]:g}] h" if args.train_cutoff_range else "")
    print(f"Synthetic ICU, {args.num_series} series, cutoff 24 h{varied}, horizon "
          f"{args.horizon or 'to the end'}; seeds {args.seeds}; max {args.epochs} epochs")
    print(render(rows, args.models))
    print()
    for line in targets(rows):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
