"""Linear learning-rate warm-up as a Lightning callback (for any optimizer and model).

The first ``steps`` optimizer steps run at ``lr * (step + 1) / steps`` of each parameter
group's configured learning rate; from then on the configured rate (and any scheduler) is
untouched. Early steps are where a vector field initialised at random takes its largest,
least informed updates; warming up keeps them from throwing an ODE/CDE model into a stiff,
exploding region it never returns from (seen with the Neural CDE at lr 3e-3 on PhysioNet).
Recipes add it under ``trainer.callbacks``:

.. code-block:: yaml

    callbacks:
      - class_path: tsode.warmup.LearningRateWarmup
        init_args: {steps: 200}
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class LearningRateWarmup(Callback):
    """Scale every optimizer's learning rates linearly from ``1/steps`` to 1 over ``steps``
    optimizer steps (``steps=0``: off)."""

    def __init__(self, steps: int = 100) -> None:
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"LearningRateWarmup: steps must be an integer >= 0, got {steps!r}")
        self.steps = steps
        self._base: list[list[float]] | None = None

    def _optimizers(self, trainer: pl.Trainer) -> list[Any]:
        return list(trainer.optimizers)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._base = [[group["lr"] for group in opt.param_groups] for opt in self._optimizers(trainer)]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._base is None or step > self.steps:
            return
        scale = min(1.0, (step + 1) / self.steps) if self.steps else 1.0
        for opt, base in zip(self._optimizers(trainer), self._base):
            for group, lr in zip(opt.param_groups, base):
                group["lr"] = lr * scale

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "base": self._base}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._base = state_dict.get("base")
