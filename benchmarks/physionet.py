"""PhysioNet 2012 "forecast-24h": the t-PatchGNN benchmark protocol (Zhang et al., ICML 2024).

``--protocol interp`` / ``extrap``: the latent ODE paper's PhysioNet protocols (Rubanova et
al. 2019), see the "latent ODE protocols" section below and docs/benchmarks.md.

Protocol (every rule and its source line in the reference code: docs/benchmarks.md):

* records of the requested sets in order (set a, then b, ...; within a set by RecordID),
  ``--max-series N`` keeps the first N (the reference's ``-n``);
* 41 variables: the 36 time series, Weight (descriptor at 00:00 and series) and the
  descriptors Age, Gender, Height, ICUType as observations at time 0 (``-1`` kept as a value);
  minute resolution; repeated (time, variable) values averaged;
* split by patient: ``train_test_split(records, train_size=0.8, random_state=42,
  shuffle=True)``, then the seen part 75/25 into train/val without shuffling (reproduced here
  without scikit-learn: :func:`protocol_split`);
* per-variable min-max scaling with min/max over train+val (every time, every variable);
* observe ``t < 24 h``, forecast every observation at ``t >= 24 h``;
* test MSE and MAE in min-max units: per variable (sum of errors / count over the whole
  test set), then averaged over the variables with targets. Reported as MSE x 1e-3 and
  MAE x 1e-2.

Models: tsode's ``PhysioNet2012DataModule`` with the same split (``splits=``) and the open
boundary (context ``t < 24``, targets ``t >= 24``); inputs are tsode's (37 channels z-scored
with training statistics, the descriptors as static covariates). Each model trains with its
library defaults plus the data-derived sizes: Adam at the model's default learning rate,
batch 32, gradient clipping 1.0, at most ``--epochs`` epochs with early stopping (patience
``--patience``) on ``--monitor`` (forecast-24h: ``val/mse_channel``, the per-variable MSE,
as the protocol validates with its own metric), tested at the best validation epoch. With
``--loss protocol`` (default) forecast-24h trains on the protocol's metric: per-variable MSE
in min-max units (``loss_weighting="channel"`` with ``loss_channel_weights``, see
:func:`protocol_loss`), as the reference code trains every baseline. The protocol's metric is
computed here from the forecasts in original units, min-max scaled with the protocol's
statistics. Each model runs in its own single-threaded subprocess; runs are logged to MLflow.

Usage: ``python benchmarks/physionet.py --protocol forecast-24h --models locf mean gru_dt
[--seeds 1] [--epochs 1000] [--patience 10] [--max-minutes M] [--sets a b] [--max-series N]
[--jobs 2] [--per-variable] [--json out.json] [--tracking-uri sqlite:///mlflow.db]``
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PROTOCOLS = ("forecast-24h", "interp", "extrap")
DEFAULT_MODELS = ("locf", "mean", "gru_dt", "odernn", "latent_ode", "ncde")
EXPERIMENT = "benchmark-forecast-24h"
HISTORY_HOURS = 24.0
# the reference's 41 variables (lib/physionet.py, PhysioNet.params), in its order
PROTOCOL_PARAMS = (
    "Age", "Gender", "Height", "ICUType", "Weight", "Albumin", "ALP", "ALT", "AST", "Bilirubin",
    "BUN", "Cholesterol", "Creatinine", "DiasABP", "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR",
    "K", "Lactate", "Mg", "MAP", "MechVent", "Na", "NIDiasABP", "NIMAP", "NISysABP", "PaCO2",
    "PaO2", "pH", "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT",
    "Urine", "WBC",
)  # fmt: skip
# t-PatchGNN (ICML 2024) Table 2, PhysioNet, sets A+B+C: (MSE x 1e-3, MAE x 1e-2)
PUBLISHED = {
    "t-PatchGNN": (4.98, 3.72),
    "GraFITi": (4.89, 3.65),
    "GRU-D": (5.59, 4.08),
    "Latent-ODE": (6.05, 4.23),
    "mTAND": (6.23, 4.51),
    "Neural Flow": (7.20, 4.67),
    "CRU": (8.56, 5.16),
}
TSODE_METRICS = ("mse", "mae", "coverage80", "coverage90", "crps")


def default_physionet_dir() -> Path:
    """``$TSODE_PHYSIONET_DIR`` or the shared data directory next to the repository."""
    env = os.environ.get("TSODE_PHYSIONET_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared/data/physionet2012"


# ---------------------------------------------------------------------- protocol: records
def read_protocol_records(
    root: Path, sets: Sequence[str], quantization: float | None = None
) -> tuple[list[int], dict]:
    """Every record of ``sets`` as the reference reads it (41 variables, see module doc).

    ``quantization`` (hours, the latent ODE reference's ``--quantization``): times become
    ``round(t / q) * q`` (half to even, like Python's ``round``) before repeated
    (time, variable) values are averaged; None keeps minutes.

    Returns:
        record_ids: in protocol order (sets in the given order, RecordID ascending within a set).
        long: dict of equal-length arrays ``record`` (index into record_ids), ``time`` (float
            hours), ``param`` (index into :data:`PROTOCOL_PARAMS`), ``value`` (float, original
            units, ``-1`` descriptors kept), one entry per (record, time, variable) with
            repeated values averaged.
    """
    lookup = {p: k for k, p in enumerate(PROTOCOL_PARAMS)}
    record_ids: list[int] = []
    blobs: list[bytes] = []
    counts: list[int] = []
    for set_name in sets:
        source = Path(root) / f"set-{set_name}.tar.gz"
        members: list[tuple[str, bytes]] = []
        if source.exists():
            with tarfile.open(source, "r|*") as tar:
                for m in tar:
                    if m.isfile() and m.name.endswith(".txt"):
                        fh = tar.extractfile(m)
                        members.append((Path(m.name).name, fh.read() if fh else b""))
        else:
            folder = Path(root) / f"set-{set_name}"
            if not folder.is_dir():
                raise FileNotFoundError(f"PhysioNet 2012 set {set_name!r} not found under {root}")
            members = [(p.name, p.read_bytes()) for p in folder.glob("*.txt")]
        members.sort(key=lambda m: int(Path(m[0]).stem))
        for name, raw in members:
            body = raw.replace(b"\r\n", b"\n").strip().partition(b"\n")[2]
            if body:
                body += b"\n"
            record_ids.append(int(Path(name).stem))
            blobs.append(body)
            counts.append(body.count(b"\n"))
    frame = _read_csv(b"".join(blobs).replace(b":", b","))
    record = np.repeat(np.arange(len(record_ids)), counts)
    keep = frame["parameter"].isin(lookup).to_numpy()
    others = set(frame["parameter"][~keep].unique()) - {"RecordID"}
    if others:
        raise ValueError(f"unexpected variables {sorted(others)} in {root}")
    hours = frame["hh"].to_numpy(float)[keep] + frame["mm"].to_numpy(float)[keep] / 60.0
    if quantization:
        hours = np.round(hours / quantization) * quantization
    param = frame["parameter"][keep].map(lookup).to_numpy(np.int64)
    values = frame["value"].to_numpy(float)[keep]
    import pandas as pd

    grouped = (
        pd.DataFrame({"record": record[keep], "time": hours, "param": param, "value": values})
        .groupby(["record", "time", "param"], sort=True)["value"]
        .mean()
        .reset_index()
    )
    long = {c: grouped[c].to_numpy() for c in ("record", "time", "param", "value")}
    return record_ids, long


def _read_csv(blob: bytes):  # noqa: ANN202 - pandas frame
    import pandas as pd

    return pd.read_csv(io.BytesIO(blob), header=None, names=["hh", "mm", "parameter", "value"])


def protocol_split(record_ids: Sequence, seed: int = 42) -> dict[str, list]:
    """The reference's split of ``record_ids`` (in protocol order), without scikit-learn.

    ``train_test_split(ids, train_size=0.8, random_state=seed, shuffle=True)`` takes
    ``n_train = floor(0.8 n)``, ``n_test = n - n_train`` and the permutation
    ``RandomState(seed).permutation(n)``: test = its first ``n_test`` entries, seen = the next
    ``n_train`` (in permutation order). The seen part is then cut without shuffling:
    train = its first ``floor(0.75 n_train)``, val = the rest.
    """
    n = len(record_ids)
    n_seen = math.floor(0.8 * n)
    n_test = n - n_seen
    perm = np.random.RandomState(seed).permutation(n)
    test, seen = perm[:n_test], perm[n_test : n_test + n_seen]
    n_train = math.floor(0.75 * n_seen)
    ids = list(record_ids)
    return {
        "train": [ids[i] for i in seen[:n_train]],
        "val": [ids[i] for i in seen[n_train:]],
        "test": [ids[i] for i in test],
    }


def protocol_min_max(long: dict, record_ids: Sequence, seen_ids: Sequence) -> dict[str, list]:
    """Per-variable min and max over every observation (any time) of the ``seen_ids`` records.

    Returns ``{"min": [41], "max": [41]}`` in :data:`PROTOCOL_PARAMS` order (NaN if unseen).
    """
    index = {rid: k for k, rid in enumerate(record_ids)}
    seen = np.zeros(len(record_ids), dtype=bool)
    seen[[index[r] for r in seen_ids]] = True
    sel = seen[long["record"]]
    lo = np.full(len(PROTOCOL_PARAMS), np.inf)
    hi = np.full(len(PROTOCOL_PARAMS), -np.inf)
    np.minimum.at(lo, long["param"][sel], long["value"][sel])
    np.maximum.at(hi, long["param"][sel], long["value"][sel])
    return {
        "min": [float(x) if np.isfinite(x) else math.nan for x in lo],
        "max": [float(x) if np.isfinite(x) else math.nan for x in hi],
    }


def protocol_target_counts(long: dict, record_ids: Sequence, test_ids: Sequence) -> dict[str, int]:
    """Number of test targets (observations at ``t >= 24 h``) per variable with any."""
    index = {rid: k for k, rid in enumerate(record_ids)}
    test = np.zeros(len(record_ids), dtype=bool)
    test[[index[r] for r in test_ids]] = True
    sel = test[long["record"]] & (long["time"] >= HISTORY_HOURS)
    counts = np.bincount(long["param"][sel], minlength=len(PROTOCOL_PARAMS))
    return {p: int(c) for p, c in zip(PROTOCOL_PARAMS, counts) if c > 0}


def build_protocol(root: Path, sets: Sequence[str], max_series: int | None) -> dict:
    """Records, split, min-max statistics and test target counts of the protocol."""
    record_ids, long = read_protocol_records(root, sets)
    if max_series is not None and max_series < len(record_ids):
        keep = long["record"] < max_series
        long = {k: v[keep] for k, v in long.items()}
        record_ids = record_ids[:max_series]
    split = protocol_split(record_ids)
    stats = protocol_min_max(long, record_ids, split["train"] + split["val"])
    return {
        "sets": list(sets),
        "record_ids": record_ids,
        "split": split,
        "params": list(PROTOCOL_PARAMS),
        "min": stats["min"],
        "max": stats["max"],
        "target_counts": protocol_target_counts(long, record_ids, split["test"]),
    }


# ---------------------------------------------------------------------- protocol: metric
class ProtocolScore:
    """Per-variable squared / absolute error sums and counts in the protocol's min-max units.

    Args:
        channels: C variable names, in the order of the arrays passed to :meth:`update`.
        data_min / data_max: (C,) train+val min and max per variable, original units.
    """

    def __init__(self, channels: Sequence[str], data_min: Sequence[float], data_max: Sequence[float]):
        self.channels = list(channels)
        scale = np.asarray(data_max, dtype=np.float64) - np.asarray(data_min, dtype=np.float64)
        # A zero range (MechVent is always 1) scales every target to 0 in the reference and its
        # models predict in those units directly, so an error there is the raw output's
        # deviation: here the deviation in original units (= tsode's normalized units for a
        # constant channel, std 1). Dividing by the reference's 1e-8 guard instead would
        # magnify a 1e-4 deviation to 1e4. Unseen variables (NaN) get 1 (never scored).
        self.scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        c = len(self.channels)
        self.se = np.zeros(c)
        self.ae = np.zeros(c)
        self.count = np.zeros(c, dtype=np.int64)

    def update(self, pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> None:
        """Add targets: ``pred``/``truth`` (..., C) original units, ``mask`` (..., C) bool."""
        err = (np.asarray(pred, np.float64) - np.asarray(truth, np.float64)) / self.scale
        mask = np.asarray(mask, dtype=bool)
        err = np.where(mask, err, 0.0).reshape(-1, len(self.channels))
        self.se += (err**2).sum(0)
        self.ae += np.abs(err).sum(0)
        self.count += mask.reshape(-1, len(self.channels)).sum(0)

    def per_variable(self) -> dict[str, dict[str, float]]:
        """``{variable: {"mse", "mae", "count"}}`` for variables with targets."""
        return {
            name: {"mse": se / n, "mae": ae / n, "count": int(n)}
            for name, se, ae, n in zip(self.channels, self.se, self.ae, self.count)
            if n > 0
        }

    def result(self) -> dict[str, float]:
        """Protocol MSE and MAE: per-variable means averaged over variables with targets."""
        has = self.count > 0
        if not has.any():
            return {"mse": math.nan, "mae": math.nan, "variables": 0, "targets": 0}
        return {
            "mse": float((self.se[has] / self.count[has]).mean()),
            "mae": float((self.ae[has] / self.count[has]).mean()),
            "variables": int(has.sum()),
            "targets": int(self.count.sum()),
        }


def protocol_loss(data, protocol: dict, zero_range: str = "unit") -> dict:  # noqa: ANN001
    """Model arguments that make the training loss the protocol's: the mean over variables of
    each variable's MSE in min-max units (as the reference trains every model). The model sees
    z-scores, so variable c's squared errors are weighted by ``(std_c / range_c)^2``. A
    zero-range variable (scored in original units) is weighted by ``std_c^2`` (``zero_range=
    "unit"``: the score's own weight) or by the median weight of the other variables
    (``"typical"``: its z-errors count as a typical variable's)."""
    pos = {p: k for k, p in enumerate(protocol["params"])}
    weights: list[float | None] = []
    for channel, std in zip(data.channels, data.normalizer.std):
        span = protocol["max"][pos[channel]] - protocol["min"][pos[channel]]
        if math.isfinite(span) and span > 0:
            weights.append((float(std) / span) ** 2)
        else:
            weights.append(float(std) ** 2 if zero_range == "unit" else None)
    ranged = sorted(w for w in weights if w is not None)
    typical = ranged[len(ranged) // 2] if ranged else 1.0
    weights = [typical if w is None else w for w in weights]
    return {"loss_weighting": "channel", "loss_channel_weights": weights}


def score_model(model, data, protocol: dict) -> ProtocolScore:  # noqa: ANN001
    """Forecast every test target of ``data`` with ``model`` and score it by the protocol."""
    import torch

    channels = data.channels
    pos = {p: k for k, p in enumerate(protocol["params"])}
    score = ProtocolScore(
        channels,
        [protocol["min"][pos[c]] for c in channels],
        [protocol["max"][pos[c]] for c in channels],
    )
    normalizer = data.normalizer
    model.eval()
    with torch.no_grad():
        for batch in data.test_dataloader():
            batch = batch.to(model.device)
            target = batch.target
            out = model.forecast(batch, target.times)
            mean = out.mean.to(torch.float64)
            pred = normalizer.inverse(mean.cpu().numpy())
            truth = normalizer.inverse(target.values.to(torch.float64).cpu().numpy())
            mask = (target.mask & target.time_mask.unsqueeze(-1)).cpu().numpy()
            score.update(pred, truth, mask)
    return score


# ---------------------------------------------------------------------- latent ODE protocols
# Rubanova, Chen & Duvenaud, "Latent ODEs for Irregularly-Sampled Time Series" (NeurIPS 2019),
# reference code github.com/YuliaRubanova/latent_ode (commit c0682d4); rules and source lines
# in docs/benchmarks.md.
RUBANOVA_PROTOCOLS = ("interp", "extrap")
RUBANOVA_QUANTIZATION = 0.1  # hours: run_models.py --quantization default
RUBANOVA_BATCH = 50  # run_models.py -b default (training batches; the test set is one batch)
# descriptors the reference treats as variables observed at t = 0 and tsode as static inputs
RUBANOVA_DESCRIPTORS = ("Age", "Gender", "Height", "ICUType")
# paper Table (PhysioNet test MSE x 1e-3), reference code path without --classif: sets A+B
PUBLISHED_RUBANOVA = {
    "interp": {"Latent ODE (ODE enc)": 2.118, "ODE-RNN": 2.361, "Latent ODE + Poisson": 2.789},
    "extrap": {"Latent ODE (ODE enc)": 2.231, "Latent ODE + Poisson": 2.208},
}


def rubanova_reduce(se: np.ndarray, count: np.ndarray) -> float:
    """The reference's MSE from per-(patient, feature) squared-error sums and counts.

    Per patient and feature: mean squared error over that feature's targets, 0 when it has
    none; then the mean over *all* features (zeros included), then over all patients
    (patients without any target included, with 0).
    """
    se = np.asarray(se, dtype=np.float64)
    count = np.asarray(count)
    per = np.where(count > 0, se / np.maximum(count, 1), 0.0)
    return float(per.mean(axis=-1).mean()) if per.size else math.nan


def rubanova_mse(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """The reference's masked MSE on dense ``(patients, times, features)`` arrays (same units)."""
    mask = np.asarray(mask, dtype=bool)
    err = np.where(mask, np.asarray(pred, np.float64) - np.asarray(truth, np.float64), 0.0)
    return rubanova_reduce((err**2).sum(axis=1), mask.sum(axis=1))


class RubanovaScore:
    """Accumulates the reference's MSE over a fixed set of test patients.

    Args:
        num_patients: P test patients (every one counts, targets or not).
        params: F variable names (the reference's 41).
        data_max: (F,) the reference's divisor: data max over the whole data set, 0 -> 1.
            Errors are divided by it: ``(x - min) / max`` minus ``(y - min) / max``.
    """

    def __init__(self, num_patients: int, params: Sequence[str], data_max: Sequence[float]):
        self.params = list(params)
        scale = np.asarray(data_max, dtype=np.float64)
        self.scale = np.where(np.isfinite(scale) & (scale != 0), scale, 1.0)
        self.se = np.zeros((num_patients, len(self.params)))
        self.count = np.zeros((num_patients, len(self.params)), dtype=np.int64)

    def update(self, patient: np.ndarray, param: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add targets (one per entry): patient index, variable index, values in original units."""
        param = np.asarray(param, dtype=np.int64)
        err = (np.asarray(pred, np.float64) - np.asarray(truth, np.float64)) / self.scale[param]
        np.add.at(self.se, (patient, param), err**2)
        np.add.at(self.count, (patient, param), 1)

    def result(self) -> dict[str, float]:
        has = self.count > 0
        per = np.where(has, self.se / np.maximum(self.count, 1), 0.0)
        return {
            "mse": rubanova_reduce(self.se, self.count),
            "patients": int(self.se.shape[0]),
            "patients_with_targets": int(has.any(1).sum()),
            "targets": int(self.count.sum()),
            "per_variable": {  # mean over patients of the per-patient MSE (zeros included)
                p: float(per[:, j].mean()) for j, p in enumerate(self.params) if has[:, j].any()
            },
            "per_variable_counts": {
                p: int(self.count[:, j].sum()) for j, p in enumerate(self.params) if has[:, j].any()
            },
        }


def _union_boundary(times: np.ndarray) -> float:
    """The reference's extrapolation split of one batch: its union time grid (every record has
    a row at t = 0) cut at index ``len // 2``; returns the first predicted time."""
    grid = np.unique(np.concatenate([[0.0], times]))
    return float(grid[len(grid) // 2])


def build_rubanova_protocol(root: Path, sets: Sequence[str], max_series: int | None,
                            kind: str, quantization: float = RUBANOVA_QUANTIZATION) -> dict:
    """Records, split, normalisation, extrapolation boundary and test targets (see docs)."""
    record_ids: list[int] = []
    parts: list[dict] = []
    for set_name in sets:  # the reference's -n keeps the first n records of each set
        ids, long = read_protocol_records(root, [set_name], quantization)
        if max_series is not None and max_series < len(ids):
            keep = long["record"] < max_series
            long = {k: v[keep] for k, v in long.items()}
            ids = ids[:max_series]
        long["record"] = long["record"] + len(record_ids)
        record_ids += ids
        parts.append(long)
    long = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    split = protocol_split(record_ids)
    nparam = len(PROTOCOL_PARAMS)
    # min / max over every observed entry of the whole data set (train and test), float32
    values32 = long["value"].astype(np.float32).astype(np.float64)
    lo = np.full(nparam, np.inf)
    hi = np.full(nparam, -np.inf)
    np.minimum.at(lo, long["param"], values32)
    np.maximum.at(hi, long["param"], values32)
    index = {rid: k for k, rid in enumerate(record_ids)}
    test_rec = np.array([index[r] for r in split["test"]], dtype=np.int64)
    is_test = np.zeros(len(record_ids), dtype=bool)
    is_test[test_rec] = True
    sel = is_test[long["record"]]
    boundary = None
    if kind == "extrap":
        boundary = _union_boundary(long["time"][sel])
        sel &= long["time"] >= boundary
    # get_next_batch drops target time columns whose normalized values sum to 0 over the batch
    divisor = np.where(hi == 0, 1.0, hi)
    norm = (values32 - np.where(np.isfinite(lo), lo, 0.0)[long["param"]]) / divisor[long["param"]]
    times_t = long["time"][sel]
    grid, inv = np.unique(times_t, return_inverse=True)
    col_sum = np.zeros(len(grid))
    np.add.at(col_sum, inv, norm[sel].astype(np.float32).astype(np.float64))
    dropped = col_sum[inv] == 0.0
    rows = np.flatnonzero(sel)[~dropped]
    # extrapolation boundaries the reference's training batches get (50 records, split order)
    train_boundaries: list[float] = []
    if kind == "extrap":
        seen = [index[r] for r in split["train"] + split["val"]]
        rec_times = np.split(long["time"], np.searchsorted(long["record"], np.arange(1, len(record_ids))))
        batch = min(max_series or RUBANOVA_BATCH, RUBANOVA_BATCH)
        for b in range(0, len(seen), batch):
            chunk = [rec_times[k] for k in seen[b : b + batch]]
            train_boundaries.append(_union_boundary(np.concatenate(chunk) if chunk else np.zeros(0)))
    patient = np.full(len(record_ids), -1, dtype=np.int64)
    patient[test_rec] = np.arange(len(test_rec))
    return {
        "kind": kind,
        "sets": list(sets),
        "quantization": quantization,
        "record_ids": record_ids,
        "split": split,
        "params": list(PROTOCOL_PARAMS),
        "min": [float(x) if np.isfinite(x) else math.nan for x in lo],
        "max": [float(x) if np.isfinite(x) else math.nan for x in hi],
        "boundary": boundary,
        "train_boundaries": train_boundaries,
        "dropped_target_columns": int((col_sum == 0.0).sum()),
        "dropped_targets": int(dropped.sum()),
        "targets": {  # the scored entries: test patient index, time (h), variable, value
            "patient": patient[long["record"][rows]].tolist(),
            "time": long["time"][rows].tolist(),
            "param": long["param"][rows].tolist(),
            "value": long["value"][rows].tolist(),
        },
    }


def rubanova_predict(model, data, protocol: dict) -> dict:  # noqa: ANN001
    """tsode's predictions for every protocol target, and the score.

    Each test series is given its context (interp: every observation; extrap: ``t <``
    boundary) and asked for all 37 channels at the record's target times. Targets of the four
    pure descriptors (tsode's static inputs) are copied; targets of a record tsode cannot serve
    (no observation in its context) get the training channel mean.
    """
    import torch

    from tsode.data.tasks import TaskConfig

    targets = {k: np.asarray(v) for k, v in protocol["targets"].items()}
    params = protocol["params"]
    test_ids = protocol["split"]["test"]
    channels = list(data.channels)
    chan_of_param = np.array([channels.index(p) if p in channels else -1 for p in params])
    is_descr = np.isin(np.array(params), RUBANOVA_DESCRIPTORS)[targets["param"]]
    pred = np.full(len(targets["value"]), np.nan)
    pred[is_descr] = targets["value"][is_descr]
    if protocol["kind"] == "extrap":
        task = TaskConfig(kind="forecast", cutoff=protocol["boundary"], context_boundary="open")
    else:
        task = TaskConfig(kind="none")
    pos = {rid: k for k, rid in enumerate(data.table.series_ids)}
    test_table = data.table.subset([pos[r] for r in test_ids if r in pos])
    patient_of = {rid: k for k, rid in enumerate(test_ids)}
    order = np.argsort(targets["patient"], kind="stable")
    starts = np.searchsorted(targets["patient"][order], np.arange(len(test_ids) + 1))
    normalizer = data.normalizer
    model.eval()
    with torch.no_grad():
        for batch in data.dataloader_for(test_table, task, batch_size=64):
            rows, queries = [], []
            for rid in batch.series_ids:
                p = patient_of[rid]
                idx = order[starts[p] : starts[p + 1]]
                idx = idx[~is_descr[idx]]
                rows.append(idx)
                queries.append(np.unique(targets["time"][idx]))
            width = max(1, max(len(q) for q in queries))
            offset = batch.time_offset.cpu().numpy() if batch.time_offset is not None else None
            query = np.zeros((len(queries), width))
            for b, q in enumerate(queries):
                if len(q):
                    query[b, : len(q)] = q
                    query[b, len(q) :] = q[-1]
                if offset is not None:
                    query[b] -= offset[b]
            batch = batch.to(model.device)
            times = torch.as_tensor(query, dtype=batch.context.times.dtype, device=model.device)
            mean = model.forecast(batch, times).mean.to(torch.float64).cpu().numpy()
            out = normalizer.inverse(mean)
            for b, (idx, q) in enumerate(zip(rows, queries)):
                if len(idx):
                    at = np.searchsorted(q, targets["time"][idx])
                    pred[idx] = out[b, at, chan_of_param[targets["param"][idx]]]
    missing = np.isnan(pred)
    fallback = np.asarray(normalizer.mean, dtype=np.float64)
    pred[missing] = fallback[chan_of_param[targets["param"][missing]]]
    score = RubanovaScore(len(test_ids), params, protocol["max"])
    score.update(targets["patient"], targets["param"], pred, targets["value"])
    out = score.result()
    out["fallback_targets"] = int(missing.sum())
    out["fallback_patients"] = int(len(np.unique(targets["patient"][missing])))
    out["copied_descriptor_targets"] = int(is_descr.sum())
    return out


# ---------------------------------------------------------------------- one model (worker)
def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``VmHWM``, else ``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_one(model_name: str, seed: int, args: argparse.Namespace, protocol: dict) -> dict:
    """Fit ``model_name`` on the protocol's split, test at the best validation epoch, score."""
    import datetime

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from tsode.config import accepted_args
    from tsode.data import LoaderConfig, PhysioNet2012DataModule, TaskConfig
    from tsode.models import MODELS
    from tsode.tracking import MLflowLogger

    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    rubanova = args.protocol in RUBANOVA_PROTOCOLS
    if rubanova:
        # extrap: the test batch's boundary for every series; interp: tsode's interpolation
        # task (30 % of the entries held out) for training and validation
        task = (
            TaskConfig("forecast", cutoff=protocol["boundary"], context_boundary="open")
            if args.protocol == "extrap" else TaskConfig("interpolation")
        )
        data = PhysioNet2012DataModule(
            root=str(args.root), sets=tuple(args.sets), progress=False,
            quantization_minutes=protocol["quantization"] * 60.0, splits=protocol["split"],
            loader=LoaderConfig(batch_size=RUBANOVA_BATCH), seed=seed, task=task,
        )
    else:
        data = PhysioNet2012DataModule(
            root=str(args.root), sets=tuple(args.sets), progress=False,
            task=TaskConfig("forecast", cutoff=HISTORY_HOURS, context_boundary="open"),
            splits=protocol["split"], loader=LoaderConfig(batch_size=32), seed=seed,
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
    if not rubanova and args.loss == "protocol":
        derived.update(protocol_loss(data, protocol, args.zero_range_weight))
    accepted = accepted_args(cls)
    kwargs = {k: v for k, v in derived.items() if k in accepted}
    model = cls(**{**kwargs, **json.loads(args.model_kwargs)})
    trainable = any(p.requires_grad for p in model.parameters())
    workdir = tempfile.mkdtemp(prefix="tsode-physionet-")
    logger = MLflowLogger(
        experiment_name=f"benchmark-{args.protocol}", run_name=f"{model_name}-seed{seed}",
        tracking_uri=args.tracking_uri, save_dir=workdir,
        tags={"benchmark": "physionet", "protocol": args.protocol, "model": model_name,
              "sets": "+".join(args.sets)},
    )
    logger.log_hyperparams({
        "model": model_name, "seed": seed, "sets": "+".join(args.sets),
        "max_series": args.max_series, "epochs": args.epochs, "patience": args.patience,
        "batch_size": RUBANOVA_BATCH if rubanova else 32, "gradient_clip_val": 1.0,
        "context_boundary": "open", "max_minutes": args.max_minutes,
        "cutoff_hours": protocol.get("boundary") if rubanova else HISTORY_HOURS,
        "model_kwargs": args.model_kwargs, "monitor": monitor_metric(args), "loss": args.loss,
        "zero_range_weight": args.zero_range_weight,
        "train_cutoff_range": args.train_cutoff_range,
        **{f"split_{k}": len(v) for k, v in protocol["split"].items()},
    })
    common = dict(logger=logger, enable_progress_bar=False, enable_model_summary=False,
                  accelerator="cpu", default_root_dir=workdir)
    start = time.perf_counter()
    best_epoch = None
    if trainable:
        monitor = monitor_metric(args)
        checkpoint = ModelCheckpoint(dirpath=workdir, monitor=monitor, mode="min")
        max_time = (datetime.timedelta(minutes=args.max_minutes)
                    if args.max_minutes is not None else None)
        trainer = pl.Trainer(
            max_epochs=args.epochs, gradient_clip_val=1.0, max_time=max_time,
            callbacks=[EarlyStopping(monitor, patience=args.patience), checkpoint], **common,
        )
        trainer.fit(model, datamodule=data)
        epochs = trainer.current_epoch
        match = re.search(r"epoch=(\d+)", Path(checkpoint.best_model_path).name)
        best_epoch = int(match.group(1)) if match else None
        # restores the best checkpoint's weights into ``model`` before testing
        result = trainer.test(model, datamodule=data, ckpt_path=checkpoint.best_model_path,
                              verbose=False)[0]
    else:
        # parameter-free baselines: one pass over the training data for their statistics
        trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, **common)
        trainer.fit(model, datamodule=data)
        epochs = trainer.current_epoch
        result = trainer.test(model, datamodule=data, verbose=False)[0]
    if rubanova:
        return _finish_rubanova(model_name, seed, model, data, protocol, logger, start, epochs,
                                best_epoch, result)
    score = score_model(model, data, protocol)
    seconds = time.perf_counter() - start
    proto = score.result()
    row = {
        "model": model_name, "seed": seed, "seconds": seconds, "epochs": epochs,
        "best_epoch": best_epoch, "peak_rss_mb": peak_rss_mb(),
        "protocol_mse": proto["mse"], "protocol_mae": proto["mae"],
        "variables": proto["variables"], "targets": proto["targets"],
        "test_series_excluded": int(data.datasets["test"].num_excluded),
        "per_variable": score.per_variable(),
        "run_id": logger.run_id,
    }
    for metric in TSODE_METRICS:
        if f"test/{metric}" in result:
            row[f"tsode_{metric}"] = float(result[f"test/{metric}"])
    metrics = {"protocol/mse": proto["mse"], "protocol/mae": proto["mae"],
               "protocol/mse_x1e3": proto["mse"] * 1e3, "protocol/mae_x1e2": proto["mae"] * 1e2,
               "protocol/targets": proto["targets"], "wall_seconds": seconds,
               "peak_rss_mb": row["peak_rss_mb"]}
    for name, v in row["per_variable"].items():
        metrics[f"protocol/mse/{name}"] = v["mse"]
        metrics[f"protocol/mae/{name}"] = v["mae"]
    logger.log_metrics(metrics)
    logger.finalize("success")
    return row


def _finish_rubanova(model_name, seed, model, data, protocol, logger, start, epochs,  # noqa: ANN001, PLR0913
                     best_epoch, result) -> dict:
    score = rubanova_predict(model, data, protocol)
    seconds = time.perf_counter() - start
    row = {
        "model": model_name, "seed": seed, "seconds": seconds, "epochs": epochs,
        "best_epoch": best_epoch, "peak_rss_mb": peak_rss_mb(), "protocol_mse": score["mse"],
        **{k: score[k] for k in ("patients", "patients_with_targets", "targets",
                                 "fallback_targets", "fallback_patients",
                                 "copied_descriptor_targets")},
        "per_variable": {k: {"mse": v, "count": score["per_variable_counts"][k]}
                         for k, v in score["per_variable"].items()},
        "run_id": logger.run_id,
    }
    for metric in TSODE_METRICS:
        if f"test/{metric}" in result:
            row[f"tsode_{metric}"] = float(result[f"test/{metric}"])
    logger.log_metrics({"protocol/mse": score["mse"], "protocol/mse_x1e3": score["mse"] * 1e3,
                        "protocol/targets": score["targets"], "wall_seconds": seconds,
                        "peak_rss_mb": row["peak_rss_mb"],
                        **{f"protocol/mse/{k}": v for k, v in score["per_variable"].items()}})
    logger.finalize("success")
    return row


def render_rubanova(rows: list[dict], models: Sequence[str], sets: Sequence[str], kind: str) -> str:
    """Markdown table of the latent ODE protocols with the paper's rows beside ours."""
    by_model = {m: [r for r in rows if r["model"] == m] for m in models}
    locf = _values(by_model.get("locf", []), "protocol_mse")
    locf_mse = statistics.fmean(locf) if locf else math.nan
    ours = "+".join(s.upper() for s in sets)
    lines = ["| model | data | MSE ×1e-3 | MSE / LOCF | scored targets | fallback targets | "
             "tsode test MSE (z) | wall s | epochs |", "|" + "---|" * 9]
    for model, group in by_model.items():
        if not group:
            continue
        mse = _values(group, "protocol_mse")
        ratio = statistics.fmean(mse) / locf_mse if mse and locf_mse == locf_mse else math.nan
        lines.append(
            f"| {model} | {ours} | {_cell(group, 'protocol_mse', '.3f', 1e3)} | "
            f"{'–' if ratio != ratio else f'{ratio:.3f}'} | {group[0]['targets']} | "
            f"{group[0]['fallback_targets']} | {_cell(group, 'tsode_mse', '.4f')} | "
            f"{_cell(group, 'seconds', '.0f')} | {_cell(group, 'epochs', '.0f')} |"
        )
    for name, mse in PUBLISHED_RUBANOVA[kind].items():
        lines.append(f"| {name} (published) | A+B | {mse:.3f} | | | | | | |")
    return "\n".join(lines)


def _run_subprocess(model: str, seed: int, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, __file__, "--worker", model, "--worker-seed", str(seed), *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


# ---------------------------------------------------------------------- report
def _values(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None and r[key] == r[key]]


def _cell(rows: list[dict], key: str, fmt: str, factor: float = 1.0) -> str:
    values = [v * factor for v in _values(rows, key)]
    if not values:
        return "–"
    text = f"{statistics.fmean(values):{fmt}}"
    if len(rows) > 1:
        text += f" ± {statistics.stdev(values) if len(values) > 1 else 0.0:{fmt}}"
    return text


def render(rows: list[dict], models: Sequence[str], sets: Sequence[str]) -> str:
    """Markdown results table (mean ± std over seeds) with the published rows beside it."""
    by_model = {m: [r for r in rows if r["model"] == m] for m in models}
    locf = _values(by_model.get("locf", []), "protocol_mse")
    locf_mse = statistics.fmean(locf) if locf else math.nan
    ours = "+".join(s.upper() for s in sets)
    lines = [
        "| model | data | MSE ×1e-3 | MAE ×1e-2 | MSE / LOCF | cov80 | cov90 | CRPS | "
        "tsode test MSE (z) | wall s | epochs | peak RSS MB |",
        "|" + "---|" * 12,
    ]
    for model, group in by_model.items():
        if not group:
            continue
        mse = _values(group, "protocol_mse")
        ratio = statistics.fmean(mse) / locf_mse if mse and locf_mse == locf_mse else math.nan
        lines.append(
            f"| {model} | {ours} | {_cell(group, 'protocol_mse', '.3f', 1e3)} | "
            f"{_cell(group, 'protocol_mae', '.3f', 1e2)} | "
            f"{'–' if ratio != ratio else f'{ratio:.3f}'} | "
            f"{_cell(group, 'tsode_coverage80', '.3f')} | {_cell(group, 'tsode_coverage90', '.3f')} | "
            f"{_cell(group, 'tsode_crps', '.4f')} | {_cell(group, 'tsode_mse', '.4f')} | "
            f"{_cell(group, 'seconds', '.0f')} | {_cell(group, 'epochs', '.0f')} | "
            f"{_cell(group, 'peak_rss_mb', '.0f')} |"
        )
    for name, (mse, mae) in PUBLISHED.items():
        lines.append(f"| {name} (published) | A+B+C | {mse:.2f} | {mae:.2f} | | | | | | | | |")
    return "\n".join(lines)


def render_per_variable(rows: list[dict], models: Sequence[str]) -> str:
    """Markdown table: per-variable MSE ×1e-3 (mean over seeds) of each model and LOCF."""
    shown = [m for m in models if any(r["model"] == m for r in rows)]
    variables: list[str] = []
    for r in rows:
        variables += [v for v in r["per_variable"] if v not in variables]
    lines = ["| variable | targets | " + " | ".join(f"{m} MSE ×1e-3" for m in shown) + " |",
             "|" + "---|" * (2 + len(shown))]
    for var in variables:
        cells, count = [], 0
        for m in shown:
            vals = [r["per_variable"][var]["mse"] * 1e3 for r in rows
                    if r["model"] == m and var in r["per_variable"]]
            count = max([count] + [r["per_variable"][var]["count"] for r in rows
                                   if r["model"] == m and var in r["per_variable"]])
            cells.append(f"{statistics.fmean(vals):.3f}" if vals else "–")
        lines.append(f"| {var} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def monitor_metric(args: argparse.Namespace) -> str:
    """The validation metric that early-stops and picks the tested checkpoint."""
    if args.monitor:
        return args.monitor
    return "val/mse" if args.protocol in RUBANOVA_PROTOCOLS else "val/mse_channel"


def shared_args(args: argparse.Namespace) -> list[str]:
    """Worker arguments shared by every model run."""
    shared = ["--protocol", args.protocol, "--epochs", str(args.epochs), "--patience",
              str(args.patience), "--sets", *args.sets, "--root", str(args.root),
              "--tracking-uri", args.tracking_uri, "--model-kwargs", args.model_kwargs,
              "--monitor", monitor_metric(args), "--loss", args.loss,
              "--zero-range-weight", args.zero_range_weight]
    if args.max_minutes is not None:
        shared += ["--max-minutes", str(args.max_minutes)]
    if args.train_cutoff_range is not None:
        shared += ["--train-cutoff-range", *map(str, args.train_cutoff_range)]
    if args.max_series is not None:
        shared += ["--max-series", str(args.max_series)]
    return shared


def run_models(args: argparse.Namespace, protocol: dict) -> tuple[list[dict], bool]:
    """Every (model, seed) in its own worker subprocess, ``--jobs`` at once."""
    tmp = Path(tempfile.mkdtemp(prefix="tsode-physionet-protocol-"))
    protocol_file = tmp / "protocol.json"
    protocol_file.write_text(json.dumps(protocol))
    shared = shared_args(args) + ["--protocol-file", str(protocol_file)]
    queue = [(m, s) for s in args.seeds for m in args.models]
    running: list[tuple[str, int, subprocess.Popen]] = []
    rows: list[dict] = []
    failed = False
    while queue or running:
        while queue and len(running) < args.jobs:
            model, seed = queue.pop(0)
            running.append((model, seed, _run_subprocess(model, seed, shared)))
        model, seed, proc = running.pop(0)
        out, err = proc.communicate()
        if proc.returncode != 0:
            print(f"[physionet] {model} seed {seed} failed:\n{err[-3000:]}", file=sys.stderr)
            failed = True
            continue
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        brief = {k: v for k, v in row.items() if k != "per_variable"}
        print(f"[physionet] {json.dumps(brief)}", flush=True)
    return rows, failed


def _main_rubanova(args: argparse.Namespace, start: float) -> int:
    protocol = build_rubanova_protocol(args.root, args.sets, args.max_series, args.protocol,
                                       args.quantization)
    split = protocol["split"]
    n_targets = len(protocol["targets"]["value"])
    bounds = protocol["train_boundaries"]
    extra = ""
    if args.protocol == "extrap":
        extra = (f"; boundary of the test batch {protocol['boundary']:g} h (training batches of "
                 f"{RUBANOVA_BATCH} would get {min(bounds):g}-{max(bounds):g} h, median "
                 f"{statistics.median(bounds):g})")
    print(f"[physionet] {args.protocol}: {len(protocol['record_ids'])} records of sets "
          f"{'+'.join(args.sets)} at {args.quantization:g} h; split train {len(split['train'])} "
          f"/ val {len(split['val'])} / test {len(split['test'])}; {n_targets} test targets "
          f"({protocol['dropped_targets']} dropped in zero-sum columns){extra} "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    rows, failed = run_models(args, protocol)
    print()
    print(f"PhysioNet 2012 {args.protocol} (latent ODE protocol, Rubanova et al. 2019) on sets "
          f"{'+'.join(s.upper() for s in args.sets)}"
          f"{f', first {args.max_series} records of each set' if args.max_series else ''}; "
          f"MSE x 1e-3 in the reference's (x - min) / max units; seeds {args.seeds}. "
          f"Published rows: the reference code path (sets A+B, all 8000 records).")
    print(render_rubanova(rows, args.models, args.sets, args.protocol))
    for row in rows:
        if row["fallback_targets"]:
            print(f"note: {row['model']} seed {row['seed']}: {row['fallback_targets']} targets of "
                  f"{row['fallback_patients']} patients without a tsode context got the training "
                  f"channel mean")
    if args.per_variable:
        print()
        print("per variable: mean over test patients of the patient's MSE on that variable "
              "(0 for patients without it); the protocol MSE is the mean of these over all 41")
        print(render_per_variable(rows, args.models))
    if args.json:
        args.json.write_text(json.dumps(
            {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "protocol": {k: v for k, v in protocol.items() if k not in ("record_ids", "targets")},
             "rows": rows}, indent=1))
    return 1 if failed else 0


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="forecast-24h")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-time budget per model run (minutes)")
    parser.add_argument("--sets", nargs="+", default=["a", "b"])
    parser.add_argument("--max-series", type=int, default=None,
                        help="the reference's -n, for smoke runs: forecast-24h keeps the first N "
                        "records, interp/extrap the first N of each set")
    parser.add_argument("--quantization", type=float, default=RUBANOVA_QUANTIZATION,
                        help="interp/extrap: time grid in hours (the reference's --quantization)")
    parser.add_argument("--root", type=Path, default=default_physionet_dir())
    parser.add_argument("--jobs", type=int, default=1, help="model runs at once")
    parser.add_argument("--per-variable", action="store_true")
    parser.add_argument("--zero-range-weight", choices=("unit", "typical"), default="unit",
                        help="forecast-24h, --loss protocol: training weight of a zero-range "
                        "variable (MechVent): 'unit' (std^2, the score's own weight) or "
                        "'typical' (the median weight of the other variables)")
    parser.add_argument("--train-cutoff-range", type=float, nargs=2, default=None,
                        metavar=("LO", "HI"),
                        help="forecast-24h / extrap: draw each training series' cutoff uniformly "
                        "in [LO, HI] hours every epoch (TaskConfig.train_cutoff_range); "
                        "validation and test keep the protocol's boundary")
    parser.add_argument("--loss", choices=("protocol", "library"), default="protocol",
                        help="forecast-24h: 'protocol' trains on the protocol's metric (per-variable "
                        "MSE in min-max units, as the reference trains every model); 'library' "
                        "keeps each model's default loss (pooled MSE of z-scores)")
    parser.add_argument("--monitor", default=None,
                        help="validation metric for early stopping and the best checkpoint "
                        "(default: val/mse_channel, the per-variable MSE, for forecast-24h as its "
                        "protocol scores per variable; val/mse for interp/extrap)")
    parser.add_argument("--model-kwargs", default="{}",
                        help="JSON arguments for every model (variants; default: library defaults)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--protocol-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        protocol = json.loads(args.protocol_file.read_text())
        print(json.dumps(train_one(args.worker, args.worker_seed, args, protocol)))
        return 0

    from tsode.models import MODELS

    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; available: {sorted(MODELS)}")
    start = time.perf_counter()
    if args.protocol in RUBANOVA_PROTOCOLS:
        return _main_rubanova(args, start)
    protocol = build_protocol(args.root, args.sets, args.max_series)
    split = protocol["split"]
    print(f"[physionet] {len(protocol['record_ids'])} records of sets {'+'.join(args.sets)}; "
          f"split train {len(split['train'])} / val {len(split['val'])} / test "
          f"{len(split['test'])}; {sum(protocol['target_counts'].values())} test targets over "
          f"{len(protocol['target_counts'])} variables ({time.perf_counter() - start:.1f} s)",
          flush=True)
    rows, failed = run_models(args, protocol)
    expected = sum(protocol["target_counts"].values())
    print()
    print(f"PhysioNet 2012 forecast-24h (t-PatchGNN protocol) on sets "
          f"{'+'.join(s.upper() for s in args.sets)}"
          f"{f', first {args.max_series} records' if args.max_series else ''}; "
          f"seeds {args.seeds}; max {args.epochs} epochs, patience {args.patience}. "
          f"The published rows use sets A+B+C (12000 records): not directly comparable.")
    print(render(rows, args.models, args.sets))
    for row in rows:
        if row["targets"] != expected:
            print(f"note: {row['model']} seed {row['seed']} scored {row['targets']} of the "
                  f"protocol's {expected} test targets ({row['test_series_excluded']} test "
                  f"series excluded by tsode: no observation before 24 h or none after)")
    if args.per_variable:
        print()
        print(render_per_variable(rows, args.models))
    if args.json:
        args.json.write_text(json.dumps(
            {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "protocol": {k: v for k, v in protocol.items() if k != "record_ids"},
             "rows": rows}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
