"""Latent ODE: ELBO / IWAE terms, KL annealing, Poisson observation-time likelihood."""

from __future__ import annotations

import math

import pytest
import torch
from test_models_properties import build

from tsode.models.latent_ode import LatentODE, gaussian_loglik, poisson_loglik


def test_poisson_loglik_equals_closed_form_for_constant_intensity(forecast_batch):
    """Context in the likelihood: events of context and target, window from the first context
    time; forecasting batch by default: target events only, window from the last context time."""
    rates = torch.tensor([0.5, 2.0, 1.3])
    ctx, tgt = forecast_batch.context, forecast_batch.target
    for reconstruct in (True, None):
        model = build("latent_ode", reconstruct_context=reconstruct)  # poisson=True
        last = model.intensity_net[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.log(torch.expm1(rates)))  # softplus(bias) = rates
        mu, std, t0 = model.posterior(forecast_batch)
        z0 = (mu + std * torch.randn(2, *mu.shape)).detach()
        terms = model.likelihood_terms(forecast_batch, z0, t0)

        expected = []
        for b in range(forecast_batch.batch_size):
            n_c, n_t = int(ctx.lengths[b]), int(tgt.lengths[b])
            counts = tgt.mask[b, :n_t].sum(0)  # events per channel
            t_end = max(ctx.times[b, n_c - 1], tgt.times[b, n_t - 1])
            if reconstruct:
                counts = counts + ctx.mask[b, :n_c].sum(0)
                window = float(t_end - ctx.times[b, 0])
            else:
                window = float(t_end - ctx.times[b, n_c - 1])
            expected.append(float((counts * rates.log()).sum() - rates.sum() * window))
        expected_t = torch.tensor(expected).expand(2, -1)
        torch.testing.assert_close(terms["obs_time"], expected_t, rtol=1e-4, atol=1e-4)


def test_poisson_loglik_function():
    log_lam = torch.log(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))  # (B=1, N=2, C=2)
    mask = torch.tensor([[[True, False], [True, True]]])
    integral = torch.tensor([[0.5, 1.5]])
    out = poisson_loglik(log_lam, mask, integral)
    torch.testing.assert_close(out, torch.tensor([math.log(1.0) + math.log(3.0) + math.log(4.0) - 2.0]))


def test_gaussian_loglik_matches_torch_distribution():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=gen)
    mean = torch.randn(4, 2, 5, 3, generator=gen)
    log_std = torch.tensor([-1.0, 0.0, 0.5])
    mask = torch.rand(2, 5, 3, generator=gen) < 0.5
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(x)
    expected = (ref * mask).sum(dim=(-1, -2))
    torch.testing.assert_close(gaussian_loglik(x, mean, log_std, mask), expected)


@pytest.mark.parametrize("iwae", [False, True])
@pytest.mark.parametrize("poisson", [False, True])
def test_elbo_terms_finite(forecast_batch, iwae, poisson):
    model = build("latent_ode", iwae=iwae, poisson=poisson)
    model.train()
    result = model.compute_loss(forecast_batch)
    assert torch.isfinite(result.loss)
    for key, value in result.logs.items():
        assert torch.isfinite(value), key
    assert result.logs["kl"] >= 0
    assert ("obs_time_loglik" in result.logs) == poisson
    assert result.prediction.shape == forecast_batch.target.values.shape


def test_iwae_bound_is_at_least_the_sampled_elbo(forecast_batch):
    """With the same K samples, log-mean-exp of the weights >= mean of the log weights."""
    model = build("latent_ode", iwae=True, num_samples=5)
    model.eval()
    with torch.no_grad():
        iwae_loss = model.compute_loss(forecast_batch).loss
        mu, std, t0 = model.posterior(forecast_batch)
        z0 = mu + std * model.sample_eps((5, *mu.shape), mu)
        terms = model.likelihood_terms(forecast_batch, z0, t0)
        prior = torch.distributions.Normal(0.0, 1.0)
        post = torch.distributions.Normal(mu, std)
        log_w = terms["recon"] + terms["obs_time"] + prior.log_prob(z0).sum(-1) - post.log_prob(z0).sum(-1)
        sampled_elbo_loss = -log_w.mean(0).sum() / terms["num_observed"]
    assert iwae_loss <= sampled_elbo_loss + 1e-6
    assert iwae_loss < sampled_elbo_loss  # strict for non-degenerate weights


def test_kl_annealing_weight():
    model = LatentODE(num_channels=2, latent_dim=2, rec_dim=3, kl_warmup_steps=10)
    model.train()
    assert model.kl_weight() == pytest.approx(0.1)  # global_step 0 -> first step
    model.eval()
    assert model.kl_weight() == 1.0
    assert LatentODE(num_channels=2, latent_dim=2, rec_dim=3).train().kl_weight() == 1.0


def test_learned_obs_std_is_a_parameter_and_fixed_is_not():
    learned = LatentODE(num_channels=2, latent_dim=2, rec_dim=3, learn_obs_std=True, obs_std=0.2)
    fixed = LatentODE(num_channels=2, latent_dim=2, rec_dim=3, learn_obs_std=False, obs_std=0.2)
    assert "log_obs_std" in dict(learned.named_parameters())
    assert "log_obs_std" not in dict(fixed.named_parameters())
    torch.testing.assert_close(fixed.log_obs_std.exp(), torch.full((2,), 0.2))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="obs_std"):
        LatentODE(num_channels=2, obs_std=0.0)
    with pytest.raises(ValueError, match="quantile_levels"):
        LatentODE(num_channels=2, quantile_levels=[0.5, 1.5])


def test_encoder_solver_is_used_by_the_recognition_network():
    from tsode.solvers import SolverConfig

    euler = SolverConfig(method="euler", step_size=0.25)
    model = LatentODE(num_channels=2, latent_dim=2, rec_dim=3, encoder_solver=euler)
    assert model.encoder.solver is euler
    assert model.solver is not euler
    assert LatentODE(num_channels=2, latent_dim=2, rec_dim=3).encoder.solver is not None


def test_forecast_samples_are_predictive_draws_with_observation_noise(forecast_batch):
    """Quantiles must be predictive intervals for new observations: each sample is a
    trajectory's decoded mean plus N(0, obs_std^2) noise, independent of the trajectory."""
    torch.manual_seed(0)
    model = LatentODE(num_channels=3, latent_dim=2, rec_dim=3, obs_std=0.5,
                      num_predict_samples=4000, uncertainty="none")
    model.eval()
    times = forecast_batch.target.times
    with torch.no_grad():
        out = model.forecast(forecast_batch, times)
    noise = out.samples - out.mixture_means
    torch.testing.assert_close(noise.mean(), torch.tensor(0.0), atol=0.01, rtol=0)
    torch.testing.assert_close(noise.std(dim=0).mean(), torch.tensor(0.5), atol=0.01, rtol=0)
    torch.testing.assert_close(out.mean, out.mixture_means.mean(0))
    quantiles = out.quantiles()  # 0.05, 0.5, 0.95 by default
    width = quantiles[-1] - quantiles[0]
    assert bool((width > 2 * 1.64 * 0.5 * 0.9).all())  # at least the noise's own interval


def test_std_head_sets_the_predictive_noise_and_trains_only_itself(forecast_batch):
    """With the default Gaussian std head, each sample's noise has the head's std (init 1.0),
    and the head's mixture NLL sends no gradient into the ELBO's model."""
    from tsode.models.latent_ode import mixture_nll

    torch.manual_seed(0)
    model = LatentODE(num_channels=3, latent_dim=2, rec_dim=3, num_predict_samples=4000)
    assert model.std_head is not None
    model.eval()
    with torch.no_grad():
        out = model.forecast(forecast_batch, forecast_batch.target.times)
    noise = out.samples - out.mixture_means
    torch.testing.assert_close(noise.std(dim=0).mean(), torch.tensor(1.0), atol=0.02, rtol=0)

    model.train()
    mu, std, t0 = model.posterior(forecast_batch)
    z, _ = model.solve_at(mu.unsqueeze(0).repeat(2, 1, 1), t0, forecast_batch.target.times)
    means, noise_std = model.decode(z, forecast_batch.context, forecast_batch.target.times)
    tgt = forecast_batch.target
    mixture_nll(means, noise_std, tgt.values, tgt.mask).backward()
    head = {id(p) for p in model.std_head.parameters()}
    for name, p in model.named_parameters():
        if id(p) in head:
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
        else:
            assert p.grad is None or bool((p.grad == 0).all()), name


def test_mixture_nll_is_minimised_by_the_errors_scale():
    """One component: the NLL's minimiser over a constant std is the RMS of the errors."""
    from tsode.models.latent_ode import mixture_nll

    torch.manual_seed(0)
    target = torch.randn(1, 4000, 1) * 0.7
    means = torch.zeros(1, 1, 4000, 1)
    mask = torch.ones_like(target, dtype=torch.bool)
    stds = torch.linspace(0.3, 1.2, 91)
    losses = torch.stack([mixture_nll(means, torch.full_like(means, s), target, mask) for s in stds])
    best = float(stds[losses.argmin()])
    assert abs(best - float(target.square().mean().sqrt())) < 0.011


def test_context_enters_the_likelihood_only_when_the_batch_is_not_a_forecast(forecast_batch):
    """reconstruct_context=None: a forecasting batch (targets after each series' last context
    time) is scored on its targets only; a target inside a context span (interpolation) brings
    the context in; True/False force it."""
    from conftest import make_batch

    model = LatentODE(num_channels=3, latent_dim=2, rec_dim=3)
    assert model.reconstructs(forecast_batch) is False
    inside = make_batch([[0.0, 1.0, 2.0], [0.5, 1.5]], [[0.5], [2.0]], num_channels=3)
    assert model.reconstructs(inside) is True
    assert LatentODE(num_channels=3, latent_dim=2, rec_dim=3,
                     reconstruct_context=True).reconstructs(forecast_batch) is True
    assert LatentODE(num_channels=3, latent_dim=2, rec_dim=3,
                     reconstruct_context=False).reconstructs(inside) is False
    # the likelihood counts exactly the target entries of a forecasting batch
    terms = model.likelihood_terms(forecast_batch, torch.zeros(1, 4, 2), forecast_batch.context.times[:, -1])
    expected = int((forecast_batch.target.mask & forecast_batch.target.time_mask.unsqueeze(-1)).sum())
    assert int(terms["num_observed"]) == expected


def test_mixture_quantiles_invert_the_mixture_cdf():
    """Exact quantiles of an equal-weight Gaussian mixture: one component gives the Gaussian's
    quantiles; two components give points where the mixture CDF equals the level."""
    from tsode.models.predictive import mixture_quantiles

    levels = torch.tensor([0.05, 0.1, 0.5, 0.9, 0.95], dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    mean, std = torch.tensor([[1.5, -2.0]], dtype=torch.float64), torch.tensor([[0.5, 3.0]], dtype=torch.float64)
    q = mixture_quantiles(mean, std, levels)
    torch.testing.assert_close(q, mean + std * normal.icdf(levels).unsqueeze(1), rtol=0, atol=1e-6)
    means = torch.tensor([[0.0], [4.0]], dtype=torch.float64)
    stds = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    q = mixture_quantiles(means, stds, levels)  # (5, 1)
    cdf = normal.cdf((q.unsqueeze(1) - means.unsqueeze(0)) / stds.unsqueeze(0)).mean(1)
    torch.testing.assert_close(cdf, levels.unsqueeze(1).expand_as(cdf), rtol=0, atol=1e-7)


def test_latent_ode_intervals_come_from_the_mixture_not_sample_quantiles(forecast_batch):
    """The 5-95 % interval of 32 draws is narrower than the distribution's; forecast's
    quantiles are the mixture's (the same for any number of draws of the noise)."""
    from tsode.models.predictive import mixture_quantiles

    torch.manual_seed(0)
    model = LatentODE(num_channels=3, latent_dim=2, rec_dim=3, num_predict_samples=32)
    model.eval()
    with torch.no_grad():
        out = model.forecast(forecast_batch, forecast_batch.target.times)
    levels = torch.tensor(model.quantile_levels)
    expected = mixture_quantiles(out.mixture_means, out.mixture_stds, levels)
    torch.testing.assert_close(out.quantiles(), expected)
    torch.testing.assert_close(out.quantiles(model.quantile_levels), expected)


def test_mixture_coverage_from_the_cdf_equals_coverage_from_exact_quantiles():
    """ProbabilisticMetrics scores a mixture forecast by its CDF at the targets; that is the
    same count as checking the targets against the mixture's exact central intervals."""
    from tsode.models.forecast import Forecast
    from tsode.models.predictive import ProbabilisticMetrics, mixture_quantiles

    torch.manual_seed(0)
    means = torch.randn(8, 2, 50, 3, dtype=torch.float64)
    stds = torch.rand(8, 2, 50, 3, dtype=torch.float64) + 0.2
    target = torch.randn(2, 50, 3, dtype=torch.float64) * 1.3
    mask = torch.rand(2, 50, 3) < 0.7
    metric = ProbabilisticMetrics()
    metric.update(Forecast(mean=means.mean(0), mixture_means=means, mixture_stds=stds,
                           samples=means), target, mask)
    got = metric.compute()
    for p in (0.8, 0.9):
        q = mixture_quantiles(means, stds, torch.tensor([0.5 - p / 2, 0.5 + p / 2], dtype=torch.float64))
        inside = (target >= q[0]) & (target <= q[1])
        expected = float(inside[mask].double().mean())
        assert abs(float(got[f"coverage{round(100 * p)}"]) - expected) < 1e-6


def test_channel_weights_count_relative_to_their_mean(forecast_batch):
    """Only the ratios of ``loss_channel_weights`` matter: scaling them all by 1e-3 (the size
    of the forecast-24h protocol's min-max weights) leaves the loss, hence the balance between
    likelihood and KL, unchanged; changing their ratio changes it."""
    c = forecast_batch.context.num_channels
    losses = []
    for weights in ([1.0] * c, [1e-3] * c, [1e-3 * (i + 1) for i in range(c)]):
        torch.manual_seed(0)
        model = LatentODE(num_channels=c, latent_dim=2, rec_dim=3, loss_channel_weights=weights)
        model.train()
        torch.manual_seed(1)
        losses.append(float(model.compute_loss(forecast_batch).loss.detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert losses[2] != pytest.approx(losses[0], rel=1e-3)


def test_checkpoints_saved_with_the_former_grid_argument_still_load():
    from tsode.config import ParameterError
    from tsode.models.odernn import ODERNN

    assert LatentODE(num_channels=2, latent_dim=2, rec_dim=3, grid="per_sample").anchor == "last"
    assert ODERNN(num_channels=2, hidden_dim=3, grid="per_sample").hparams.get("grid") is None
    with pytest.raises(ParameterError, match="benchmarks/union_grid.py"):
        LatentODE(num_channels=2, grid="union")
