"""Forecast: the typed result of every model's ``forecast``; its quantiles for each predictive
form, its scores, and the one naming rule of quantile columns."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tsode.forecasts import named_quantiles, quantile_level, quantile_name
from tsode.models.forecast import Forecast
from tsode.models.predictive import gaussian_crps, mixture_cdf, sample_crps

LEVELS = [0.05, 0.1, 0.5, 0.9, 0.95]


def _mean(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(2, 5, 3, dtype=torch.float64)


def test_gaussian_quantiles_are_the_normals_icdf() -> None:
    mean = _mean()
    std = torch.rand_like(mean) + 0.1
    got = Forecast(mean=mean, std=std).quantiles(LEVELS)
    normal = torch.distributions.Normal(mean, std)
    expected = torch.stack([normal.icdf(torch.full_like(mean, q)) for q in LEVELS])
    assert got.shape == (len(LEVELS), 2, 5, 3)
    torch.testing.assert_close(got, expected)


def test_sample_quantiles_are_torch_quantile() -> None:
    mean = _mean()
    samples = mean + torch.randn(64, *mean.shape, dtype=torch.float64)
    got = Forecast(mean=samples.mean(0), samples=samples).quantiles(LEVELS)
    torch.testing.assert_close(got, torch.quantile(samples, torch.tensor(LEVELS, dtype=torch.float64), dim=0))


def test_mixture_quantiles_invert_the_mixture_cdf() -> None:
    torch.manual_seed(1)
    means = torch.randn(4, 2, 5, 3, dtype=torch.float64) * 2.0
    stds = torch.rand(4, 2, 5, 3, dtype=torch.float64) + 0.2
    forecast = Forecast(mean=means.mean(0), mixture_means=means, mixture_stds=stds,
                        samples=means + stds * torch.randn_like(means))
    got = forecast.quantiles(LEVELS)  # from the mixture, not the samples
    assert got.shape == (len(LEVELS), 2, 5, 3)
    for level, q in zip(LEVELS, got):
        torch.testing.assert_close(mixture_cdf(means, stds, q), torch.full_like(q, level), rtol=0, atol=1e-7)


def test_default_levels_and_fixed_quantiles() -> None:
    mean = _mean()
    values = torch.stack([mean - 1.0, mean, mean + 1.0])
    forecast = Forecast(mean=mean, quantile_values=values, quantile_levels=(0.1, 0.5, 0.9))
    assert forecast.is_probabilistic
    torch.testing.assert_close(forecast.quantiles(), values)  # the levels it has, by default
    torch.testing.assert_close(forecast.quantiles([0.9, 0.1]), values[[2, 0]])
    assert forecast.has_quantiles([0.1, 0.9]) and not forecast.has_quantiles([0.05])
    with pytest.raises(ValueError, match=r"reports quantiles \[0.1, 0.5, 0.9\], not \[0.05\]"):
        forecast.quantiles([0.05, 0.5])
    with pytest.raises(ValueError, match="give the levels"):
        Forecast(mean=mean, std=torch.ones_like(mean)).quantiles()
    with pytest.raises(ValueError, match="need Q quantile_levels"):
        Forecast(mean=mean, quantile_values=values, quantile_levels=(0.1, 0.9))
    with pytest.raises(ValueError, match="together"):
        Forecast(mean=mean, mixture_means=values)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Forecast(mean=mean, quantile_levels=(0.5, 1.5))


def test_a_deterministic_forecast_has_no_quantiles() -> None:
    forecast = Forecast(mean=_mean())
    assert not forecast.is_probabilistic
    assert not forecast.has_quantiles([0.5])
    with pytest.raises(ValueError, match="the model is deterministic"):
        forecast.quantiles([0.1, 0.9])
    with pytest.raises(ValueError, match="LOCF is deterministic"):
        named_quantiles(forecast, [0.1], "LOCF")
    assert named_quantiles(forecast, [], "LOCF") == {}


def test_named_quantiles_use_the_one_column_name() -> None:
    mean = _mean()
    forecast = Forecast(mean=mean, std=torch.ones_like(mean))
    named = named_quantiles(forecast, [0.05, 0.95])
    assert list(named) == ["q0.05", "q0.95"]
    torch.testing.assert_close(torch.stack(list(named.values())), forecast.quantiles([0.05, 0.95]))


def test_quantile_level_reads_what_quantile_name_writes() -> None:
    from tsode.plotting import quantile_columns

    for level in (0.05, 0.1, 0.5, 0.975, 1e-5, 0.0, 1.0):
        assert quantile_level(quantile_name(level)) == pytest.approx(level)
    for other in ("mean", "q", "qx", "q1.5", "q-0.1", "quantile", "q0.5a", "observed"):
        assert quantile_level(other) is None
    frame = pd.DataFrame(columns=["series_id", "mean", "q0.9", quantile_name(1e-5), "q0.5"])
    assert quantile_columns(frame) == {1e-5: "q1e-05", 0.5: "q0.5", 0.9: "q0.9"}


def test_scores_of_each_form() -> None:
    mean = _mean()
    target = mean + torch.randn_like(mean)
    mask = torch.rand(mean.shape) < 0.8
    std = torch.rand_like(mean) + 0.5
    gaussian = Forecast(mean=mean, std=std).scores(target, mask)
    assert set(gaussian) == {"coverage80", "coverage90", "crps"}
    y = torch.where(mask, target, mean)
    torch.testing.assert_close(gaussian["crps"], gaussian_crps(mean, std, y))
    q = Forecast(mean=mean, std=std).quantiles([0.05, 0.95])
    torch.testing.assert_close(gaussian["coverage90"], ((y >= q[0]) & (y <= q[1])).double())
    samples = mean + torch.randn(16, *mean.shape, dtype=torch.float64)
    sampled = Forecast(mean=mean, samples=samples).scores(target, mask)
    torch.testing.assert_close(sampled["crps"], sample_crps(samples, y))
    fixed = Forecast(mean=mean, quantile_values=torch.stack([mean - 1, mean - 0.5, mean + 0.5, mean + 1]),
                     quantile_levels=(0.05, 0.1, 0.9, 0.95)).scores(target, mask)
    assert set(fixed) == {"coverage80", "coverage90"}  # quantiles only: no CRPS
    assert all(s.dtype == torch.float64 and s.shape == mean.shape for s in fixed.values())


def test_detach_to_and_map_reach_every_tensor() -> None:
    mean = _mean().float().requires_grad_()
    forecast = Forecast(mean=mean * 2, std=mean.abs() + 1, samples=mean.expand(3, -1, -1, -1) * 1,
                        quantile_levels=(0.5,), extras={"intensity": mean.exp()})
    detached = forecast.detach()
    assert not any(t.requires_grad for t in (detached.mean, detached.std, detached.samples,
                                              detached.extras["intensity"]))
    assert forecast.mean.requires_grad  # the original is untouched
    doubled = detached.to(torch.float64)
    assert doubled.mean.dtype == doubled.std.dtype == doubled.extras["intensity"].dtype == torch.float64
    assert doubled.mixture_means is None and doubled.quantile_levels == (0.5,)
    shifted = detached.map(lambda t: t + 1)
    torch.testing.assert_close(shifted.samples, detached.samples + 1)
    with pytest.raises(AttributeError):
        forecast.mean = mean  # frozen
