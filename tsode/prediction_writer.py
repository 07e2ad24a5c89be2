"""Write ``tsode predict`` outputs as a tidy table (CSV or Parquet) in original units.

Columns: ``series_id, time, channel, mean[, q<level> ...], observed`` — one row per (series,
target time, channel) of the data module's prediction split, ``observed`` being the held-out
value where there is one (NaN elsewhere), so forecasts and truth sit side by side. The file is written atomically (temporary file +
rename): an error never leaves a truncated table.

A classifier under ``task: classification`` (no target part) writes ``series_id, class,
probability, label`` instead: one row per (series, class), ``label`` the series' known class
(NaN where unknown).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from tsode.data import IrregularBatch, values_to_frame
from tsode.data.atomic import atomic_path
from tsode.data.fitted import FittedData
from tsode.forecasts import named_quantiles


class ForecastWriter(BasePredictionWriter):
    """Collect ``predict_step`` outputs (a dict holding the model's
    :class:`~tsode.models.forecast.Forecast` under ``"forecast"``) and write them to ``output``
    at the end of prediction.

    Args:
        output: ``.csv`` or ``.parquet`` path; None writes nothing.
        quantiles: levels to add as quantile columns (named by
            :func:`tsode.forecasts.quantile_name`: ``q0.1``), from the model's predictive distribution
            (samples, a Gaussian std or quantiles; deterministic models: omitted).
        cutoff: forecast from this many hours after each series' origin instead of the
            recipe's task cutoff: only observations up to it are context (boundary: the data
            module's ``context_boundary``), targets the observations after it.
        horizon: hours after the cutoff to forecast (default: the recipe's task horizon).
    """

    def __init__(
        self,
        output: str | None = None,
        quantiles: list[float] | None = None,
        cutoff: float | None = None,
        horizon: float | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.quantiles = list(quantiles or [])
        self.cutoff = cutoff
        self.horizon = horizon
        self.frames: list[pd.DataFrame] = []
        self.fitted: FittedData | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Apply ``cutoff`` / ``horizon`` to the data module's task before predicting."""
        if stage != "predict" or (self.cutoff is None and self.horizon is None):
            return
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "set_task"):
            raise ValueError(
                f"predictions.cutoff / predictions.horizon need a tsode data module, got "
                f"{type(datamodule).__name__}"
            )
        task = getattr(datamodule, "task", None)
        classifying = getattr(task, "kind", None) == "classification"
        changes = {} if classifying else {"kind": "forecast"}  # classification: the context ends at the cutoff
        if self.cutoff is not None:
            changes["cutoff"] = float(self.cutoff)
        if self.horizon is not None and not classifying:
            changes["horizon"] = float(self.horizon)
        datamodule.set_task(**changes)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.frames = []
        # the data module's fitted state maps forecasts back to original units
        self.fitted = getattr(trainer.datamodule, "fitted", None) if self.output is not None else None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: IrregularBatch,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if self.output is None or not trainer.is_global_zero:
            return
        forecast = prediction.get("forecast")
        if forecast is None and "probabilities" in prediction:
            self.frames.append(_probability_frame(prediction, batch))
            return
        datamodule = trainer.datamodule
        target = batch.target
        observed = torch.where(target.mask, target.values, torch.full_like(target.values, float("nan")))
        # quantile columns from a probabilistic forecast (deterministic models: omitted)
        levels = self.quantiles if forecast.is_probabilistic else []
        named = named_quantiles(forecast, levels, type(pl_module).__name__)
        quantiles = {name: q.cpu() for name, q in named.items()}
        extra = {"observed": observed.cpu(), **quantiles}
        arrays = (batch.series_ids, prediction["times"].cpu(), forecast.mean.cpu(),
                  prediction["mask"].cpu())
        options = {
            "time_offset": None if batch.time_offset is None else batch.time_offset.cpu(),
            "extra": extra,
            "std_columns": (),
            "table": getattr(datamodule, "table", None),  # observations exactly as read
            "observed_columns": ("observed",),
        }
        if self.fitted is not None:
            frame = self.fitted.to_frame(*arrays, channels=batch.channels, **options)
        else:  # not a tsode data module: its own normalizer / time axis, if any
            frame = values_to_frame(
                *arrays, batch.channels, normalizer=getattr(datamodule, "normalizer", None),
                time_axis=getattr(datamodule, "time_axis", None), **options,
            )
        frame = frame.rename(columns={"value": "mean"})
        columns = ["series_id", "time", "channel", "mean"]
        columns += [*quantiles, "observed"]
        self.frames.append(frame[columns])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.output is None or not trainer.is_global_zero or not self.frames:
            return
        table = pd.concat(self.frames, ignore_index=True)
        path = Path(self.output)
        with atomic_path(path) as tmp:  # never a half-written output file
            if path.suffix == ".parquet":
                table.to_parquet(tmp, index=False)
            else:
                table.to_csv(tmp, index=False)
        kind = "probability" if "probability" in table.columns else "forecast"
        print(f"tsode: wrote {len(table)} {kind} rows to {path}")
        from tsode.tracking import find_mlflow_logger

        logger = find_mlflow_logger(trainer)
        if logger is not None:  # the predict run keeps its forecasts
            logger.experiment.log_artifact(logger.run_id, str(path), "predictions")


def _probability_frame(prediction: dict, batch: IrregularBatch) -> pd.DataFrame:
    """``series_id, class, probability, label`` rows of a classifier's batch."""
    import numpy as np

    probs = prediction["probabilities"].detach().cpu().double().numpy()
    bsz, k = probs.shape
    labels = (
        np.full(bsz, np.nan) if batch.labels is None else batch.labels.detach().cpu().double().numpy()
    )
    return pd.DataFrame(
        {
            "series_id": np.repeat(np.asarray(list(prediction["series_ids"]), dtype=object), k),
            "class": np.tile(np.arange(k), bsz),
            "probability": probs.reshape(-1),
            "label": np.repeat(labels, k),
        }
    )
