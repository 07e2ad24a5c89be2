"""Resumable fits: a ``last.ckpt`` in a stable place, and per-epoch random state.

- :class:`ResumeCheckpoint` keeps ``last.ckpt`` (written at the end of every epoch) in
  :func:`resume_dir` ``(<save_dir>/resume/<experiment>/<run name>)``: the same directory for
  every fit of one recipe (``tsode fit``) or one ``Forecaster`` configuration, so the next
  ``tsode fit ... --ckpt_path last`` or ``Forecaster.fit(..., resume=True)`` finds it even
  though each fit logs to a new MLflow run directory.
- :class:`EpochSeed` reseeds torch, numpy and ``random`` at the start of every training epoch
  (and at its first batch) from ``(base seed, epoch)``; the base seed is saved in the
  checkpoint. A fit resumed from
  the checkpoint of epoch ``k`` therefore draws the same random numbers in epoch ``k + 1`` as
  the uninterrupted fit (the batch sampler is already seeded by ``seed + epoch``), and on CPU
  reproduces its per-epoch metrics exactly.
- :func:`last_checkpoint` / :func:`checkpoint_mlflow_run` find the checkpoint to resume
  from and the MLflow run it belongs to, which the resumed fit continues; a fit that does not
  resume closes that run as KILLED if its process is gone (:func:`close_orphaned_run`).
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)

LAST_NAME = "last"
RESUME_SUBDIR = "resume"


def _safe(part: str) -> str:
    """A path component from an experiment or run name (no separators, never empty)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(part)).strip("._")
    return cleaned or "default"


def resume_dir(save_dir: str | Path, experiment_name: str | None, run_name: str | None) -> Path:
    """``<save_dir>/resume/<experiment>/<run name>``: where a fit keeps its ``last.ckpt``."""
    return (
        Path(save_dir) / RESUME_SUBDIR / _safe(experiment_name or "default")
        / _safe(run_name or "default")
    )


def last_checkpoint(directory: str | Path) -> Path | None:
    """``<directory>/last.ckpt`` if it exists (the newest ``last*.ckpt`` otherwise), else None."""
    directory = Path(directory)
    exact = directory / f"{LAST_NAME}{ModelCheckpoint.FILE_EXTENSION}"
    if exact.is_file():
        return exact
    found = sorted(
        directory.glob(f"{LAST_NAME}*{ModelCheckpoint.FILE_EXTENSION}"),
        key=lambda p: p.stat().st_mtime,
    )
    return found[-1] if found else None


def checkpoint_mlflow_run(path: str | Path, tracking_uri: str) -> str | None:
    """The MLflow run a checkpoint was written by, if it still exists (active) in
    ``tracking_uri`` (a resumed fit continues it); None otherwise, with a log line."""
    from tsode.tracking import checkpoint_run_id

    run_id = checkpoint_run_id(path)
    if run_id is None:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException as err:
        log.warning("%s: its MLflow run %s is not in %s (%s); logging to a new run",
                    path, run_id, tracking_uri, err)
        return None
    if run.info.lifecycle_stage != "active":
        log.warning("%s: its MLflow run %s is deleted; logging to a new run", path, run_id)
        return None
    return run_id


def close_orphaned_run(path: str | Path) -> str | None:
    """Mark the MLflow run of checkpoint ``path`` KILLED if it is still RUNNING although the
    process that wrote the checkpoint (same host) is gone (e.g. SIGKILL); returns its id.

    Called by a fit that does not resume, so a killed fit's run is never left RUNNING.
    """
    from tsode.tracking import CHECKPOINT_KEY, ERROR_TAG

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: nothing to close
        return None
    info = state.get(CHECKPOINT_KEY) if isinstance(state, Mapping) else None
    if not isinstance(info, Mapping) or not isinstance(info.get("pid"), int):
        return None
    if info.get("host") != socket.gethostname() or info["pid"] == os.getpid():
        return None
    try:
        os.kill(info["pid"], 0)
        return None  # still running (or another process took the pid): leave it
    except ProcessLookupError:
        pass
    except OSError:
        return None
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(str(info["tracking_uri"]))
        run = client.get_run(str(info["run_id"]))
        if run.info.status != "RUNNING":
            return None
        client.set_tag(run.info.run_id, ERROR_TAG, f"the fit (process {info['pid']}) ended "
                       f"without closing its run (killed?); last checkpoint {path}")
        client.set_terminated(run.info.run_id, "KILLED")
    except Exception as err:  # the store may be gone: never fail the new fit for this
        log.warning("could not close the MLflow run of %s: %s", path, err)
        return None
    log.warning("MLflow run %s of %s was left RUNNING by a killed fit: marked KILLED",
                run.info.run_id, path)
    return run.info.run_id


class ResumeCheckpoint(ModelCheckpoint):
    """Write ``last.ckpt`` into ``dirpath`` at the end of every training epoch (no other
    checkpoint), so a killed fit can be resumed with ``ckpt_path`` ``"last"``.

    Args:
        dirpath: a stable directory (see :func:`resume_dir`).
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(
            dirpath=str(dirpath), filename=None, monitor=None, save_top_k=0, save_last=True,
            every_n_epochs=1, enable_version_counter=False,
        )

    @property
    def state_key(self) -> str:
        """Distinct from the best-checkpoint callback (whose state must not be mixed up)."""
        return self._generate_state_key(resume_dirpath=self.dirpath)


class EpochSeed(Callback):
    """Reseed torch, numpy and ``random`` at the start of each training epoch from
    ``(base seed, epoch)``; the base seed travels in checkpoints (see module docstring).

    Args:
        seed: base seed; None takes ``torch.initial_seed()`` (set by ``seed_everything``).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = int(torch.initial_seed() % (2**63))

    def _reseed(self, epoch: int, point: int) -> None:
        sequence = np.random.SeedSequence([int(self.seed or 0) % (2**63), epoch, point])
        state = sequence.generate_state(2, dtype=np.uint32)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))
        np.random.seed(int(state[0]))
        random.seed(int(state[1]))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reseed(trainer.current_epoch, 0)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Again at the first batch: a resumed fit builds its data iterator (which draws from
        torch's generator) before the epoch starts, the uninterrupted one after."""
        if batch_idx == 0:
            self._reseed(trainer.current_epoch, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if state_dict.get("seed") is not None:
            self.seed = int(state_dict["seed"])
