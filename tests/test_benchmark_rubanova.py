"""The latent ODE (Rubanova et al. 2019) PhysioNet protocols of benchmarks/physionet.py: the
reference's per-patient, per-feature MSE, its (x - min) / max units and the union-grid
extrapolation boundary."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_physionet_rub", REPO / "benchmarks/physionet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


def _example():
    """2 patients, 3 times, 3 features, already in the protocol's units.

    patient 0: feature 0 errors 1 and 3 (observed twice) -> 5; feature 1 error 2 -> 4;
               feature 2 never observed -> 0.       patient mean (5 + 4 + 0) / 3 = 3
    patient 1: feature 0 error 0 -> 0; feature 1 unobserved -> 0; feature 2 errors 6, 0, 0
               -> 12.                                patient mean (0 + 0 + 12) / 3 = 4
    MSE = (3 + 4) / 2 = 3.5 (pooling the 7 targets would give 50 / 7).
    """
    truth = np.zeros((2, 3, 3))
    pred = np.zeros((2, 3, 3))
    mask = np.zeros((2, 3, 3), dtype=bool)
    pred[0, 0, 0], pred[0, 2, 0], pred[0, 1, 1] = 1.0, -3.0, 2.0
    mask[0, 0, 0] = mask[0, 2, 0] = mask[0, 1, 1] = True
    mask[1, 0, 0] = True
    pred[1, 0, 2] = 6.0
    mask[1, :, 2] = True
    pred[1, 1, 1] = 99.0  # unobserved: ignored
    return pred, truth, mask


def test_dense_mse_is_per_patient_per_feature_with_zeros():
    pred, truth, mask = _example()
    assert bench.rubanova_mse(pred, truth, mask) == pytest.approx(3.5)
    assert bench.rubanova_mse(pred, truth, mask) != pytest.approx(50.0 / 7.0)


def test_patient_without_targets_counts_as_zero():
    pred, truth, mask = _example()
    pad = lambda a, v: np.concatenate([a, np.full((1, 3, 3), v, dtype=a.dtype)])  # noqa: E731
    assert bench.rubanova_mse(pad(pred, 7.0), pad(truth, 0.0), pad(mask, False)) == pytest.approx(7.0 / 3)


def test_score_matches_dense_and_divides_by_data_max():
    pred, truth, mask = _example()
    # original units: feature k scaled by data_max[k]; feature 1 has max 0 -> divisor 1
    data_max = np.array([10.0, 0.0, 4.0])
    scale = np.where(data_max == 0, 1.0, data_max)
    p_i, t_i, f_i = np.nonzero(mask)
    # both shifted by the same data_min (5): (x - min) / max - (y - min) / max = (x - y) / max
    score = bench.RubanovaScore(2, ["a", "b", "c"], data_max)
    score.update(p_i, f_i, pred[p_i, t_i, f_i] * scale[f_i] + 5.0, truth[p_i, t_i, f_i] * scale[f_i] + 5.0)
    result = score.result()
    assert result["mse"] == pytest.approx(3.5)
    assert result["patients"] == 2 and result["patients_with_targets"] == 2 and result["targets"] == 7
    # per-variable diagnostics: mean over patients of the per-patient MSE
    assert result["per_variable"] == pytest.approx({"a": 2.5, "b": 2.0, "c": 6.0})


def test_union_boundary_splits_the_batch_grid_in_half():
    # union with t = 0: {0, 1, 2, 5, 7} -> index 5 // 2 = 2 -> first predicted time 2
    assert bench._union_boundary(np.array([1.0, 5.0, 2.0, 7.0, 1.0])) == 2.0
    # even count {0, 1, 2, 3}: index 2 -> 2; the boundary depends on the batch, not on hours
    assert bench._union_boundary(np.array([3.0, 1.0, 2.0])) == 2.0
    assert bench._union_boundary(np.array([30.0, 40.0, 47.0])) == 40.0  # {0, 30, 40, 47}


def test_quantization_rounds_half_to_even_like_the_reference():
    # the reference rounds with Python's round (half to even) at 0.1 h
    minutes = np.array([3.0, 9.0, 15.0, 4.0])
    hours = minutes / 60.0
    got = np.round(hours / 0.1) * 0.1
    want = [round(h / 0.1) * 0.1 for h in hours.tolist()]
    assert got.tolist() == want
