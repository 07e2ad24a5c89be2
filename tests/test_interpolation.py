"""Tests for tsode.models.interpolation (paths X(t) for the Neural CDE)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.interpolate import CubicSpline

from tsode.models.interpolation import (
    PATH_METHODS,
    InterpolatedPath,
    fill_missing,
    path_coefficients,
    path_num_channels,
)

DT = torch.float64


def make_batch(
    seed: int = 0,
    batch: int = 4,
    steps: int = 9,
    chans: int = 3,
    p_obs: float = 0.6,
    lengths: list[int] | None = None,
):
    """Random padded irregular batch following the IrregularBatch padding contract."""
    g = torch.Generator().manual_seed(seed)
    gaps = 0.1 + torch.rand(batch, steps, generator=g, dtype=DT) * 2.0
    times = gaps.cumsum(dim=1) - gaps[:, :1] + torch.rand(batch, 1, generator=g, dtype=DT)
    values = torch.randn(batch, steps, chans, generator=g, dtype=DT)
    mask = torch.rand(batch, steps, chans, generator=g) < p_obs
    if lengths is None:
        lengths = [steps] + [int(x) for x in torch.randint(1, steps + 1, (batch - 1,), generator=g)]
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    for b, n in enumerate(lengths):
        times[b, n:] = times[b, n - 1]
        mask[b, n:] = False
    values = torch.where(mask, values, torch.zeros((), dtype=DT))
    return times, values, mask, lengths_t


def split_points(times: torch.Tensor, lengths: torch.Tensor, per_interval: int = 5) -> torch.Tensor:
    """(B, M) query times strictly inside each row's real intervals (row's own knots)."""
    fracs = torch.linspace(0.05, 0.95, per_interval, dtype=DT)
    left = times[:, :-1].unsqueeze(-1)
    right = times[:, 1:].unsqueeze(-1)
    q = (left + fracs * (right - left)).flatten(1)
    # Clamp queries of padded intervals into the last real interval's end.
    last = times.gather(1, (lengths - 1).unsqueeze(1))
    return torch.minimum(q, last)


@pytest.mark.parametrize("method", PATH_METHODS)
@pytest.mark.parametrize("fill", ["ffill", "linear"])
def test_reproduces_data_at_knots(method: str, fill: str) -> None:
    times, values, mask, lengths = make_batch(seed=1)
    path = InterpolatedPath.from_data(times, values, mask, lengths, method=method, fill=fill)
    chans = values.shape[-1]
    assert path.num_channels == path_num_channels(chans) == 1 + 2 * chans
    x = path.evaluate(times)
    assert x.shape == (*times.shape, 1 + 2 * chans)
    real = torch.arange(times.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    # time channel is time itself at every real knot
    torch.testing.assert_close(x[..., 0][real], times[real], rtol=0, atol=1e-12)
    # observed values reproduced exactly
    torch.testing.assert_close(x[..., 1 : 1 + chans][mask], values[mask], rtol=0, atol=1e-10)
    # cumulative observation counts
    counts = mask.to(DT).cumsum(dim=1)
    torch.testing.assert_close(
        x[..., 1 + chans :][real.unsqueeze(-1).expand_as(mask)],
        counts[real.unsqueeze(-1).expand_as(mask)],
        rtol=0,
        atol=1e-10,
    )
    # per-sample evaluation with t of shape (B,) matches the (B, M) form
    for j in range(times.shape[1]):
        torch.testing.assert_close(path.evaluate(times[:, j]), x[:, j])


def test_fill_missing_matches_pandas() -> None:
    times, values, mask, lengths = make_batch(seed=2, batch=3, steps=12, chans=4, p_obs=0.4)
    ffilled = fill_missing(times, values, mask, "ffill")
    linear = fill_missing(times, values, mask, "linear")
    for b in range(times.shape[0]):
        frame = pd.DataFrame(
            torch.where(mask[b], values[b], torch.nan).numpy(), index=times[b].numpy()
        )
        expected_ffill = frame.ffill().fillna(0.0).to_numpy()
        np.testing.assert_allclose(ffilled[b].numpy(), expected_ffill, atol=1e-12)
        # linear in time between observations, held constant outside, 0 if never observed
        for c in range(values.shape[-1]):
            obs = mask[b, :, c].numpy()
            if not obs.any():
                np.testing.assert_array_equal(linear[b, :, c].numpy(), 0.0)
                continue
            expected = np.interp(
                times[b].numpy(), times[b].numpy()[obs], values[b, :, c].numpy()[obs]
            )
            np.testing.assert_allclose(linear[b, :, c].numpy(), expected, atol=1e-12)


def test_linear_path_matches_numpy_interp() -> None:
    times, values, mask, lengths = make_batch(seed=3)
    path = InterpolatedPath.from_data(times, values, mask, lengths, method="linear", fill="linear")
    q = split_points(times, lengths)
    x = path.evaluate(q)
    for b in range(times.shape[0]):
        n = int(lengths[b])
        for c in range(values.shape[-1]):
            obs = mask[b, :n, c].numpy()
            if not obs.any():
                continue
            expected = np.interp(
                q[b].numpy(), times[b, :n].numpy()[obs], values[b, :n, c].numpy()[obs]
            )
            np.testing.assert_allclose(x[b, :, 1 + c].numpy(), expected, atol=1e-12)


def test_natural_spline_matches_scipy_on_full_channel() -> None:
    times, values, mask, lengths = make_batch(
        seed=4, batch=3, steps=11, chans=2, p_obs=1.1, lengths=[11, 8, 4]
    )
    path = InterpolatedPath.from_data(
        times, values, mask, lengths, method="natural", include_counts=False
    )
    for b in range(times.shape[0]):
        n = int(lengths[b])
        spline = CubicSpline(times[b, :n].numpy(), values[b, :n].numpy(), bc_type="natural")
        q = torch.linspace(float(times[b, 0]), float(times[b, n - 1]), 101, dtype=DT)
        q_batch = q.expand(times.shape[0], -1).clone()
        np.testing.assert_allclose(
            path.evaluate(q_batch)[b, :, 1:].numpy(), spline(q.numpy()), atol=1e-10
        )
        np.testing.assert_allclose(
            path.derivative(q_batch)[b, :, 1:].numpy(), spline(q.numpy(), 1), atol=1e-9
        )


@pytest.mark.parametrize("method", ["hermite", "natural"])
def test_cubic_paths_are_c1(method: str) -> None:
    times, values, mask, lengths = make_batch(seed=5, steps=10)
    path = InterpolatedPath.from_data(times, values, mask, lengths, method=method)
    eps = 1e-7
    for b in range(times.shape[0]):
        n = int(lengths[b])
        for j in range(1, n - 1):  # interior knots
            t_row = times[:, j].clone()
            left = path.derivative(t_row - eps)[b]
            right = path.derivative(t_row + eps)[b]
            # C1: one-sided derivatives agree up to O(eps * second derivative)
            torch.testing.assert_close(left, right, rtol=0, atol=1e-4)
            torch.testing.assert_close(
                path.evaluate(t_row - eps)[b], path.evaluate(t_row + eps)[b], rtol=0, atol=1e-5
            )


def test_linear_path_has_kinks() -> None:
    """Sanity check that the C1 test above can fail: linear paths are not C1."""
    times, values, mask, lengths = make_batch(seed=5, steps=10, p_obs=1.1)
    path = InterpolatedPath.from_data(times, values, mask, lengths, method="linear")
    j = 3
    eps = 1e-7
    jump = (path.derivative(times[:, j] + eps) - path.derivative(times[:, j] - eps))[0, 1:4]
    assert jump.abs().max() > 1e-2


@pytest.mark.parametrize("method", PATH_METHODS)
def test_derivative_matches_finite_differences(method: str) -> None:
    times, values, mask, lengths = make_batch(seed=6)
    path = InterpolatedPath.from_data(times, values, mask, lengths, method=method)
    q = split_points(times, lengths, per_interval=7)
    h = 1e-6
    fd = (path.evaluate(q + h) - path.evaluate(q - h)) / (2 * h)
    torch.testing.assert_close(path.derivative(q), fd, rtol=1e-6, atol=1e-6)
    # the derivative at (B,) times equals the (B, M) form
    torch.testing.assert_close(path.derivative(q[:, 4]), path.derivative(q)[:, 4])


@pytest.mark.parametrize("method", PATH_METHODS)
def test_time_channel_is_exact(method: str) -> None:
    times, values, mask, lengths = make_batch(seed=7)
    path = InterpolatedPath.from_data(times, values, mask, lengths, method=method)
    q = split_points(times, lengths)
    torch.testing.assert_close(path.evaluate(q)[..., 0], q, rtol=0, atol=1e-10)
    torch.testing.assert_close(path.derivative(q)[..., 0], torch.ones_like(q), rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", PATH_METHODS)
def test_padding_and_masked_values_change_nothing(method: str) -> None:
    times, values, mask, lengths = make_batch(seed=8, steps=8, lengths=[8, 5, 3, 1])
    q = split_points(times, lengths)
    base = InterpolatedPath.from_data(times, values, mask, lengths, method=method)
    x_base, dx_base = base.evaluate(q), base.derivative(q)

    # Garbage in masked-out and padded value entries.
    noisy = torch.where(mask, values, torch.full_like(values, 1e3) * torch.randn_like(values))
    other = InterpolatedPath.from_data(times, noisy, mask, lengths, method=method)
    torch.testing.assert_close(other.evaluate(q), x_base, rtol=0, atol=0)
    torch.testing.assert_close(other.derivative(q), dx_base, rtol=0, atol=0)

    # More padding (longer L) with arbitrary padded times: same path on the real part.
    extra = 4
    times_pad = torch.cat(
        [times, times[:, -1:] + torch.rand(times.shape[0], extra, dtype=DT)], dim=1
    )
    values_pad = torch.cat(
        [noisy, torch.randn(times.shape[0], extra, values.shape[-1], dtype=DT)], dim=1
    )
    mask_pad = torch.cat(
        [mask, torch.ones(times.shape[0], extra, values.shape[-1], dtype=torch.bool)], dim=1
    )
    padded = InterpolatedPath.from_data(times_pad, values_pad, mask_pad, lengths, method=method)
    torch.testing.assert_close(padded.evaluate(q), x_base, rtol=0, atol=1e-12)
    torch.testing.assert_close(padded.derivative(q), dx_base, rtol=0, atol=1e-12)
    torch.testing.assert_close(padded.interval, base.interval)

    # Each row is independent of the others in the batch.
    for b in range(times.shape[0]):
        n = int(lengths[b])
        single = InterpolatedPath.from_data(
            times[b : b + 1, :n],
            values[b : b + 1, :n],
            mask[b : b + 1, :n],
            lengths[b : b + 1],
            method=method,
        )
        torch.testing.assert_close(
            single.evaluate(q[b : b + 1]), x_base[b : b + 1], rtol=0, atol=1e-12
        )


def test_single_point_series_is_constant() -> None:
    times, values, mask, lengths = make_batch(seed=9, lengths=[9, 1, 4, 1])
    path = InterpolatedPath.from_data(times, values, mask, lengths)
    q = times[:, :1] + torch.linspace(-1.0, 3.0, 5, dtype=DT)
    x = path.evaluate(q)
    assert torch.isfinite(x).all()
    for b in (1, 3):
        torch.testing.assert_close(x[b], x[b, :1].expand_as(x[b]))
        torch.testing.assert_close(path.derivative(q)[b], torch.zeros_like(x[b]))
    # L == 1 overall
    one = InterpolatedPath.from_data(
        times[:, :1], values[:, :1], mask[:, :1], torch.ones(4, dtype=torch.long)
    )
    assert one.evaluate(times[:, 0]).shape == (4, 7)


def test_hermite_is_causal_natural_is_not() -> None:
    times, values, mask, lengths = make_batch(seed=10, batch=1, steps=10, p_obs=1.1, lengths=[10])
    k = 5
    changed = values.clone()
    changed[:, k + 1 :] += 5.0
    q = torch.linspace(float(times[0, 0]), float(times[0, k]), 40, dtype=DT).unsqueeze(0)
    for method, causal in (("hermite", True), ("linear", True), ("natural", False)):
        a = InterpolatedPath.from_data(times, values, mask, lengths, method=method).evaluate(q)
        b = InterpolatedPath.from_data(times, changed, mask, lengths, method=method).evaluate(q)
        assert torch.equal(a, b) == causal, method


def test_ffill_is_causal_across_missing_knots() -> None:
    times, values, mask, lengths = make_batch(seed=11, batch=2, steps=10, p_obs=0.5)
    changed = values.clone()
    changed[:, 6:] += 3.0
    q = torch.stack(
        [torch.linspace(float(times[b, 0]), float(times[b, 5]), 30, dtype=DT) for b in range(2)]
    )
    a = InterpolatedPath.from_data(times, values, mask, lengths, fill="ffill").evaluate(q)
    b = InterpolatedPath.from_data(times, changed, mask, lengths, fill="ffill").evaluate(q)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_options_and_dtype_device() -> None:
    times, values, mask, lengths = make_batch(seed=12)
    co = path_coefficients(times, values, mask, lengths, include_time=False, include_counts=False)
    assert co.num_channels == values.shape[-1]
    co32 = co.to(torch.float32)
    assert co32.a.dtype == torch.float32 and co32.lengths.dtype == torch.long
    assert InterpolatedPath(co32).evaluate(times[:, 2].float()).dtype == torch.float32


def test_bad_input_errors_name_the_problem() -> None:
    times, values, mask, lengths = make_batch(seed=13, lengths=[9, 9, 9, 9])
    bad = times.clone()
    bad[2, 4] = bad[2, 3]
    with pytest.raises(ValueError, match=r"row 2 has t\[3\]"):
        path_coefficients(bad, values, mask, lengths)
    with pytest.raises(ValueError, match="lengths"):
        path_coefficients(times, values, mask, torch.tensor([9, 0, 9, 9]))
    with pytest.raises(ValueError, match="method"):
        path_coefficients(times, values, mask, lengths, method="quadratic")
    with pytest.raises(ValueError, match="mask"):
        path_coefficients(times, values, mask.float(), lengths)
    nan_times = times.clone()
    nan_times[1, 2] = float("nan")
    with pytest.raises(ValueError, match="row 1, position 2"):
        path_coefficients(nan_times, values, mask, lengths)
    path = InterpolatedPath.from_data(times, values, mask, lengths)
    with pytest.raises(ValueError, match="B=4"):
        path.evaluate(torch.zeros(3))


def test_coefficients_are_cacheable(tmp_path) -> None:
    """Coefficients are plain tensors: saved once, reloaded, they give the same path."""
    times, values, mask, lengths = make_batch(seed=14)
    co = path_coefficients(times, values, mask, lengths, method="natural")
    torch.save(co.__dict__, tmp_path / "coeffs.pt")
    reloaded = type(co)(**torch.load(tmp_path / "coeffs.pt"))
    q = split_points(times, lengths)
    torch.testing.assert_close(
        InterpolatedPath(reloaded).evaluate(q), InterpolatedPath(co).evaluate(q)
    )


def test_log_counts_are_log1p_of_the_cumulative_counts() -> None:
    times, values, mask, lengths = make_batch(seed=1)
    raw = InterpolatedPath.from_data(times, values, mask, lengths, method="linear", fill="ffill")
    logged = InterpolatedPath.from_data(
        times, values, mask, lengths, method="linear", fill="ffill", include_counts="log"
    )
    chans = values.shape[-1]
    x_raw, x_log = raw.evaluate(times), logged.evaluate(times)
    torch.testing.assert_close(x_log[..., : 1 + chans], x_raw[..., : 1 + chans])
    torch.testing.assert_close(x_log[..., 1 + chans :], torch.log1p(x_raw[..., 1 + chans :]))
