"""Training output that reads well in a terminal and in a log file.

- On a terminal, Lightning's progress bar. When stdout is not a TTY (a log file, a pipe, a CI
  job), no progress bar (its carriage-return frames make megabytes of log) but
  :class:`EpochLogger`: one line per epoch (epoch, ``train/loss``, ``val/mse``).
- :func:`quiet_lightning_warnings`: Lightning warnings that say nothing to a tsode user
  (checkpoint directory of another run, parameter-free baselines) are silenced.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

#: Lightning warnings silenced for every tsode fit / test / predict (message regexes)
ALWAYS_SILENCED = (
    # restoring a checkpoint written by another run (``tsode test --ckpt_path``): the new run
    # checkpoints elsewhere by design
    r".*dirpath has changed from .*",
)
#: silenced for models without trainable parameters (the LOCF / channel-mean baselines)
PARAMETER_FREE_SILENCED = (
    r".*configure_optimizers.* returned .*None.*",
    r".*parameters.* is an empty generator.*",
    r".*training_step.* returned .*None.*",
)


def stdout_is_tty() -> bool:
    """Whether standard output is a terminal (progress bars redraw in place there)."""
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def has_trainable_parameters(module: Any) -> bool:
    """Whether ``module`` has a parameter that requires a gradient."""
    parameters = getattr(module, "parameters", None)
    return callable(parameters) and any(p.requires_grad for p in parameters())


@contextmanager
def quiet_lightning_warnings(trainable: bool = True) -> Iterator[None]:
    """Silence the Lightning warnings listed in :data:`ALWAYS_SILENCED` (and, for a module
    without trainable parameters, :data:`PARAMETER_FREE_SILENCED`) inside the block."""
    with warnings.catch_warnings():
        patterns = ALWAYS_SILENCED + (() if trainable else PARAMETER_FREE_SILENCED)
        for pattern in patterns:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def logging_interval(configured: int, num_batches: int) -> int:
    """``log_every_n_steps`` no larger than the number of training batches per epoch (so
    every epoch logs, and Lightning does not warn about the interval)."""
    if num_batches <= 0:
        return configured
    return max(1, min(int(configured), int(num_batches)))


def _format(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}" if math.isfinite(number) else str(number)


class EpochLogger(Callback):
    """Print one line per training epoch to stdout: ``epoch 3/30  train/loss 0.52  val/mse
    0.31`` (metrics the model logged; absent ones are left out).

    Args:
        metrics: metric names to report, in order (``train/loss`` falls back to
            ``train/loss_epoch``, what Lightning names an epoch mean of a per-step metric).
    """

    def __init__(self, metrics: tuple[str, ...] = ("train/loss", "val/mse")) -> None:
        self.metrics = tuple(metrics)

    def line(self, trainer: pl.Trainer) -> str:
        """The line for the epoch that just ended."""
        found = trainer.callback_metrics
        total = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        parts = [f"epoch {trainer.current_epoch + 1}/{total}"]
        for name in self.metrics:
            value = found.get(name, found.get(f"{name}_epoch"))
            if value is not None:
                parts.append(f"{name} {_format(value)}")
        return "  ".join(parts)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            print(self.line(trainer), flush=True)
