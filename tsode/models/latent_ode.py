"""Latent ODE VAE (Rubanova, Chen & Duvenaud 2019) with an optional Poisson process over
observation times, solved on per-series time grids.

Generative model: ``z0 ~ N(0, I)``, ``dz/dt = f(z)``, ``x_c(t) ~ N(dec(z(t))_c, sigma_c^2)``;
with ``poisson=True`` the observation times of channel ``c`` follow an inhomogeneous Poisson
process with intensity ``lambda_c(t) = softplus(g(z(t))_c)``. Its integral
``Lambda_c(t) = int_{t0}^{t} lambda_c`` is carried as ``C`` extra ODE states next to ``z``, so
the observation-time log-likelihood of a series is
``sum_{observed (i, c)} log lambda_c(t_i) - sum_c Lambda_c(t_end)``.

Recognition (``anchor``): by default an ODE-RNN runs **forwards** over the context and gives
``q(z | context)`` at each series' *last* context time, from which ``z`` is solved backwards to
earlier points and forwards to the targets (a forecast's solve is as long as its horizon,
whatever the context length); ``anchor="first"`` is the reference model, an ODE-RNN run
**backwards** giving ``q(z0 | context)`` at the first context time ``t0``, with ``z`` solved
from ``t0``. Either way each series is solved on its own merged (sorted) context + target times.

Why one long module (a little over 500 lines): the ELBO, its Poisson term, the predictive
mixture and the anchor's two solve directions all read the same sampled trajectories; split
apart, each piece would need the whole sampling state passed to it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsode.config import DECAYED_OPTIM, OptimConfig, ParameterError
from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.models.base import StepResult, channel_weights, has_target
from tsode.models.blocks import (
    NFECounter,
    ODEFunc,
    check_query_times,
    forecast_decoder,
    mlp,
)
from tsode.models.forecast import Forecast
from tsode.models.odernn import ODERNNEncodedModel, default_solver
from tsode.solvers import SolverConfig

_LOG_2PI = math.log(2.0 * math.pi)
ANCHORS = ("first", "last")


def _repeat_part(part: SeriesPart, k: int) -> SeriesPart:
    """``part`` repeated ``k`` times along the batch (sample-major, like ``z.reshape(K*B, ...)``)."""
    return SeriesPart(
        part.times.repeat(k, 1), part.values.repeat(k, 1, 1), part.mask.repeat(k, 1, 1), part.lengths.repeat(k)
    )


class AugmentedLatentField(NFECounter):
    """Vector field on ``[z, Lambda]``: ``dz/dt = f(z)``, ``dLambda_c/dt = softplus(g(z))_c``.

    Counts its own evaluations (the inner ``f`` counts too, so NFE of the latent solve is read
    from ``latent_func``; this wrapper's counter is reset with the others and is not double
    counted because :meth:`LatentODE.nfe_modules` lists only the ODE functions).
    """

    def __init__(self, latent_func: ODEFunc, intensity_net: nn.Module) -> None:
        super().__init__()
        self.latent_func = latent_func
        self.intensity_net = intensity_net
        self.latent_dim = latent_func.dim

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.count()
        z = y[:, : self.latent_dim]
        return torch.cat([self.latent_func(t, z), F.softplus(self.intensity_net(z))], dim=-1)


def gaussian_loglik(
    x: Tensor, mean: Tensor, log_std: Tensor, mask: Tensor, weights: Tensor | None = None
) -> Tensor:
    """Sum over observed entries of ``log N(x; mean, exp(log_std)^2)`` (times ``weights (C,)``
    per channel when given).

    Shapes: ``x``/``mask`` ``(B, N, C)``, ``mean`` ``(..., B, N, C)``, ``log_std`` ``(C,)``;
    returns ``(..., B)``. Masked entries contribute exactly 0.
    """
    z = (x - mean) * torch.exp(-log_std)
    ll = -0.5 * (z.square() + _LOG_2PI) - log_std
    if weights is not None:
        ll = ll * weights
    return torch.where(mask, ll, torch.zeros_like(ll)).sum(dim=(-1, -2))


def poisson_loglik(log_intensity: Tensor, mask: Tensor, integral: Tensor) -> Tensor:
    """Inhomogeneous Poisson log-likelihood of observation times over a window.

    Args:
        log_intensity: ``(..., B, N, C)`` ``log lambda_c(t_i)`` at the points.
        mask: ``(B, N, C)`` events (observed entries).
        integral: ``(..., B, C)`` ``int lambda_c`` over the window.

    Returns:
        ``(..., B)``: ``sum_{observed} log lambda - sum_c integral``.
    """
    events = torch.where(mask, log_intensity, torch.zeros_like(log_intensity)).sum(dim=(-1, -2))
    return events - integral.sum(dim=-1)


def mixture_nll(means: Tensor, std: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over observed entries of ``-log (1/K) sum_k N(target; means_k.detach(), std_k^2)``.

    ``means``/``std`` ``(K, B, N, C)``, ``target``/``mask`` ``(B, N, C)``. The predictive
    distribution of a sampled forecast is this mixture, so the std that minimises it is the one
    whose sampled intervals are calibrated; the means are detached (this trains the std only).
    """
    z = (target.unsqueeze(0) - means.detach()) / std
    log_prob = -0.5 * (z.square() + _LOG_2PI) - torch.log(std)
    mix = torch.logsumexp(log_prob, dim=0) - math.log(means.shape[0])
    return -torch.where(mask, mix, torch.zeros_like(mix)).sum() / mask.sum().clamp_min(1)


class LatentODE(ODERNNEncodedModel):
    """Latent ODE VAE forecaster (Lightning module).

    Args:
        num_channels: C.
        latent_dim: size of ``z`` (20 in Rubanova et al.'s PhysioNet runs).
        rec_dim: ODE-RNN recognition hidden size (40).
        ode_hidden_dim / ode_layers: latent vector field MLP (3x50).
        rec_ode_hidden_dim / rec_ode_layers: recognition vector field MLP (3x50).
        gru_units: width of the recognition GRU input network (50; 0 = none).
        decoder_hidden_dim / decoder_layers: decoder MLP ``z -> C`` (0 layers = linear).
        num_samples: K posterior samples of ``z0`` per series during training.
        num_predict_samples: samples drawn by ``forecast`` for the predictive mean / quantiles.
        quantile_levels: the levels of ``forecast(...).quantiles()`` (its default; exact quantiles
            of the predictive mixture).
        obs_std: observation noise std (normalized units), initial value when learned.
        learn_obs_std: learn one noise std per channel.
        kl_warmup_steps: linear KL annealing from 0 to 1 over this many training steps (0: off).
        iwae: optimise the importance-weighted bound over the K samples instead of the ELBO.
        poisson: add the Poisson observation-time likelihood (intensity from ``z``).
        reconstruct_context: include the context observations in the likelihood. None
            (default): per batch -- not when it is a forecasting batch (every target at or after
            its series' last context time: the likelihood is the targets', as in the reference
            extrapolation runs), yes otherwise (interpolation, or no targets). Measured on the
            synthetic forecast task: with the context in the likelihood the forecast stayed at
            the channel mean (val MSE 0.99 after 8 epochs) while without it the model learned
            (0.85 after 7 epochs at lr 3e-3). True/False force it.
        anchor: where ``z`` is inferred: ``"last"`` (default) -- an ODE-RNN runs forwards over
            the context and ``q(z)`` sits at each series' last context time, the latent ODE is
            solved backwards to earlier points and forwards to later ones, so a forecast's
            solve is as long as its horizon, whatever the context length; ``"first"`` -- the
            reference model: the ODE-RNN runs backwards and ``z0`` sits at the first context
            time.
        persistence: add each channel's last context observation strictly before a point,
            times a learned gate (from ``z`` and the observation's age), to the decoded mean.
        uncertainty: ``"gaussian"`` (default) -- the predictive noise of a forecast comes from
            a std head on the detached ``z(t)`` (and, with ``persistence``, each channel's
            ``seen`` flag and ``log1p(age)``), trained by the log-likelihood of the target
            entries under the mixture of the K sampled trajectories (detached); so the noise
            can grow with the horizon and never reshapes the ELBO's model. ``"none"`` -- the
            predictive noise is the ELBO's observation std ``obs_std``.
        solver: solver for the latent ODE (and the recognition ODE unless ``encoder_solver``).
        encoder_solver: solver for the recognition ODE-RNN (e.g. fixed-step Euler, as in the
            reference implementation); None uses ``solver``.
        num_static: S static covariates per series; they set the recognition ODE-RNN's
            initial state through a :class:`~tsode.models.blocks.StaticEncoder` (0 = none).
        num_classes: K > 0 adds a series-level classification head on the posterior mean of
            ``z`` (at the anchor time), as in Rubanova et al.; 0 (default) forecasts only.
        classification_weight: weight of the cross-entropy in the joint loss (100, as in the
            reference code's ``-elbo + 100 * ce``).
        optim: default ``DECAYED_OPTIM``, Adam at 3e-3 decayed x0.95 per epoch (the
            reference code decays a larger rate per iteration). Measured on the synthetic
            forecast task (1000 series, 40 epochs): at a constant 1e-3 the forecast was still at
            the channel mean after 8 epochs; at 3e-3 it learned but validation MSE jumped between
            0.6 and 1.6 from epoch to epoch; decayed, it settled to 0.39.
        remaining args: see :class:`~tsode.models.base.IrregularModel`.

    Loss: negative bound divided by the number of observed entries in the batch's likelihood
    (a per-batch constant; the optimum is that of the bound). Logged: ``elbo`` (per series),
    ``recon_loglik`` (per observed entry), ``kl`` (per series), ``kl_weight`` and, with
    ``poisson``, ``obs_time_loglik`` (per series). ``loss_channel_weights`` weigh each channel's
    log-likelihood relative to their mean (only their ratios count, so their overall scale
    does not move the balance between the likelihood and the KL).

    With a classifier the loss is that bound term (over the context, and the target when the
    batch has one) plus ``classification_weight`` x the cross-entropy on the known labels
    (logged as ``ce``); the classifier and the bound share one posterior.
    """

    def __init__(
        self,
        num_channels: int,
        latent_dim: int = 20,
        rec_dim: int = 40,
        ode_hidden_dim: int = 50,
        ode_layers: int = 3,
        rec_ode_hidden_dim: int = 50,
        rec_ode_layers: int = 3,
        gru_units: int = 50,
        decoder_hidden_dim: int = 50,
        decoder_layers: int = 0,
        num_samples: int = 3,
        num_predict_samples: int = 32,
        quantile_levels: list[float] | None = None,
        obs_std: float = 0.1,
        learn_obs_std: bool = True,
        kl_warmup_steps: int = 0,
        iwae: bool = False,
        poisson: bool = False,
        reconstruct_context: bool | None = None,
        anchor: str = "last",
        persistence: bool | str = True,
        uncertainty: str = "gaussian",
        solver: SolverConfig | None = None,
        encoder_solver: SolverConfig | None = None,
        num_static: int = 0,
        num_classes: int = 0,
        classification_weight: float = 100.0,
        optim: OptimConfig | None = None,
        **base: Any,
    ) -> None:
        super().__init__(num_channels, optim, default_optim=DECAYED_OPTIM, **base)
        self.save_hyperparameters()
        if num_samples < 1 or num_predict_samples < 1:
            raise ParameterError(
                "num_samples" if num_samples < 1 else "num_predict_samples",
                "num_samples and num_predict_samples must be >= 1",
            )
        if obs_std <= 0:
            raise ParameterError("obs_std", f"obs_std must be > 0, got {obs_std}")
        if anchor not in ANCHORS:
            raise ParameterError("anchor", f"anchor must be one of {ANCHORS}, got {anchor!r}")
        levels = [0.05, 0.5, 0.95] if quantile_levels is None else list(quantile_levels)
        if any(not 0.0 <= q <= 1.0 for q in levels):
            raise ParameterError("quantile_levels", f"quantile_levels must lie in [0, 1], got {levels}")
        self.quantile_levels = levels
        self.latent_dim = latent_dim
        self.num_samples = num_samples
        self.num_predict_samples = num_predict_samples
        self.kl_warmup_steps = kl_warmup_steps
        self.iwae = iwae
        self.poisson = poisson
        self.reconstruct_context = reconstruct_context
        self.anchor = anchor
        self.solver = solver if solver is not None else default_solver()
        self.encoder_solver = encoder_solver if encoder_solver is not None else self.solver
        self.init_encoder(rec_dim, rec_ode_hidden_dim, rec_ode_layers, gru_units, self.encoder_solver, num_static)
        self.to_posterior = mlp(rec_dim, 2 * latent_dim, 50, 1, "tanh")
        self.latent_func = ODEFunc(latent_dim, ode_hidden_dim, ode_layers)
        self.decoder, self.persistence, self.std_head = forecast_decoder(
            latent_dim, num_channels, decoder_hidden_dim, decoder_layers, persistence, uncertainty
        )
        log_std = torch.full((num_channels,), math.log(obs_std))
        if learn_obs_std:
            self.log_obs_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_obs_std", log_std)
        if poisson:
            self.intensity_net = mlp(latent_dim, num_channels, 50, 1, "tanh")
            self.augmented_func: AugmentedLatentField | None = AugmentedLatentField(
                self.latent_func, self.intensity_net
            )
        else:
            self.augmented_func = None
        if classification_weight < 0:
            raise ParameterError("classification_weight", f"classification_weight must be >= 0, got {classification_weight}")
        self.classification_weight = float(classification_weight)
        self.init_classifier(num_classes, latent_dim)

    # ------------------------------------------------------------------ pieces
    def nfe_modules(self) -> list[NFECounter]:
        """The two ODE functions (the Poisson wrapper calls ``latent_func`` once per evaluation)."""
        return [self.encoder.func, self.latent_func]

    def reset_nfe(self) -> None:
        super().reset_nfe()
        if self.augmented_func is not None:
            self.augmented_func.reset_nfe()

    def posterior(self, batch: IrregularBatch) -> tuple[Tensor, Tensor, Tensor]:
        """``q(z | context)`` at the anchor time: mean ``(B, D)``, std ``(B, D)`` and the anchor
        time ``(B,)`` (each series' first or last context time, see ``anchor``)."""
        ctx = batch.context
        backwards = self.anchor == "first"
        h = self.encode_context(batch, backwards=backwards).h
        mu, pre_std = self.to_posterior(h).chunk(2, dim=-1)
        std = F.softplus(pre_std) + 1e-4
        if ctx.times.shape[1] == 0:
            return mu, std, h.new_zeros(h.shape[0])
        last = (ctx.lengths - 1).clamp_min(0).unsqueeze(1)
        t_anchor = ctx.times[:, 0] if backwards else ctx.times.gather(1, last).squeeze(1)
        return mu, std, t_anchor

    def solve_latent(self, z0: Tensor, t0: Tensor, times: Tensor) -> tuple[Tensor, Tensor | None]:
        """Solve from ``z0 (K, B, D)`` at ``t0 (B,)`` to ``times (B, M)``, each row monotone away
        from ``t0`` (non-decreasing after it, or non-increasing before it).

        Returns ``z (K, B, M, D)`` and, with ``poisson``, ``Lambda (K, B, M, C)`` (signed intensity
        integral from ``t0``: negative before it), else None.
        """
        k, bsz, dim = z0.shape
        m = times.shape[1]
        y0 = z0.reshape(k * bsz, dim)
        func: nn.Module = self.latent_func
        if self.augmented_func is not None:
            y0 = torch.cat([y0, y0.new_zeros(k * bsz, self.num_channels)], dim=-1)
            func = self.augmented_func
        ys = self.solve_states(self.solver, func, y0, t0.repeat(k), times.repeat(k, 1))
        ys = ys.reshape(k, bsz, m, -1)
        if self.augmented_func is None:
            return ys, None
        return ys[..., :dim], ys[..., dim:]

    def solve_at(self, z0: Tensor, t0: Tensor, times: Tensor) -> tuple[Tensor, Tensor | None]:
        """Latent states at ``times (B, N)`` in any order, on either side of ``t0 (B,)``: one
        forward solve over the sorted later points and one backward solve over the earlier ones.

        Returns ``z (K, B, N, D)`` and, with ``poisson``, ``window (K, B, C)``: the intensity
        integral over each row's span ``[min(t0, times), max(t0, times)]``.
        """
        k = z0.shape[0]
        anchor = t0.unsqueeze(1)
        after = times >= anchor
        z, lam_end = self._solve_sorted(z0, t0, torch.where(after, times, anchor), descending=False)
        window = None if lam_end is None else lam_end
        if not bool(after.all()):
            z_before, lam_start = self._solve_sorted(
                z0, t0, torch.where(after, anchor, times), descending=True
            )
            z = torch.where(after.view(1, *after.shape, 1), z, z_before)
            if window is not None and lam_start is not None:
                window = window - lam_start  # lam_start <= 0: the part before t0
        if window is not None:
            window = window.expand(k, *window.shape[1:])
        return z, window

    def _solve_sorted(
        self, z0: Tensor, t0: Tensor, times: Tensor, descending: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``solve_latent`` on ``times`` sorted away from ``t0``, returned in the given order,
        with the signed intensity integral at the far end ``(K, B, C)`` (or None)."""
        ordered, order = torch.sort(times, dim=1, descending=descending, stable=True)
        z, lam = self.solve_latent(z0, t0, ordered)
        inverse = torch.argsort(order, dim=1)
        k = z.shape[0]
        z = torch.gather(z, 2, inverse.view(1, *inverse.shape, 1).expand(k, -1, -1, z.shape[-1]))
        return z, (None if lam is None else lam[:, :, -1])

    def decoded_mean(self, z: Tensor, context: SeriesPart, times: Tensor) -> Tensor:
        """Observation means ``(K, B, N, C)`` from latent states ``z (K, B, N, D)`` at ``times
        (B, N)``: the decoder, plus with ``persistence`` each channel's decayed last context
        observation strictly before the time."""
        return self.decode(z, context, times)[0]

    def decode(self, z: Tensor, context: SeriesPart, times: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`decoded_mean` and, with a std head, the predictive noise std ``(K, B, N, C)``
        from the detached ``z`` (and the persistence features); else None."""
        x_hat = self.decoder(z)
        features = z
        if self.persistence is not None:
            k = z.shape[0]
            baseline, carried = self.persistence(
                _repeat_part(context, k), times.repeat(k, 1), z.reshape(-1, *z.shape[2:])
            )
            x_hat = x_hat + baseline.reshape(x_hat.shape)
            features = torch.cat([z, carried.reshape(*z.shape[:-1], -1)], dim=-1)
        std = None if self.std_head is None else self.std_head(features.detach())
        return x_hat, std

    def noise_std(self, std: Tensor | None, like: Tensor) -> Tensor:
        """The predictive noise std: the std head's ``std`` when there is one, else the ELBO's
        ``obs_std`` ``(C,)`` broadcast like ``like``."""
        return std if std is not None else self.log_obs_std.detach().exp().expand_as(like)

    def _check_times(self, times: Tensor, t0: Tensor, what: str) -> None:
        early = (times < t0.unsqueeze(1)).any(dim=1)
        if bool(early.any()):
            rows = early.nonzero().flatten().tolist()
            raise ValueError(
                f"{what}: batch rows {rows} ask for times before their first context time; the "
                "latent ODE starts at the first context observation"
            )

    def kl_weight(self) -> float:
        if self.kl_warmup_steps <= 0 or not self.training:
            return 1.0
        return min(1.0, (self.global_step + 1) / self.kl_warmup_steps)

    # ------------------------------------------------------------------ objective
    def sample_eps(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Standard normal noise for the reparameterisation (overridable in tests)."""
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def likelihood_terms(self, batch: IrregularBatch, z0: Tensor, t0: Tensor) -> dict[str, Tensor]:
        """Per-sample log-likelihood terms of the likelihood points given ``z0 (K, B, D)`` at ``t0``.

        Likelihood points: the context (if ``reconstruct_context``) and the target. Returns
        ``recon (K, B)`` (Gaussian, summed over observed entries), ``obs_time (K, B)`` (Poisson
        observation-time log-likelihood over the window spanned by ``t0`` and the series'
        likelihood points; only with ``poisson``), ``x_hat (K, B, N, C)`` decoded
        means in concatenation order (context first) and ``num_observed`` (scalar).
        """
        ctx, tgt = batch.context, batch.target
        parts = [ctx, tgt] if self.reconstructs(batch) else [tgt]
        # rows with an empty part get that part's (padding) times at t0: they are masked anyway
        times = torch.cat(
            [torch.where((p.lengths > 0).unsqueeze(1), p.times, t0.unsqueeze(1)) for p in parts], dim=1
        )
        values = torch.cat([p.values for p in parts], dim=1)
        mask = torch.cat([p.mask & p.time_mask.unsqueeze(-1) for p in parts], dim=1)
        if self.anchor == "first":
            self._check_times(times, t0, "compute_loss")
        # loss_weighting="channel": each channel's entries weigh N / (C_obs n_c) in the batch;
        # loss_channel_weights multiply each channel's term, *relative to their mean*: their
        # overall scale must not tip the ELBO's balance against the KL (the forecast-24h
        # protocol's min-max weights average ~5e-3, which let the KL collapse the posterior)
        weights = channel_weights(mask) if self.loss_weighting == "channel" else None
        if self.loss_scale is not None:
            relative = self.loss_scale / self.loss_scale.mean().clamp_min(1e-12)
            weights = relative if weights is None else weights * relative
        z, window = self.solve_at(z0, t0, times)  # z (K, B, N, D) in concatenation order
        x_hat, std = self.decode(z, batch.context, times)  # (K, B, N, C)
        out = {
            "recon": gaussian_loglik(values, x_hat, self.log_obs_std, mask, weights),
            "x_hat": x_hat,
            "num_observed": mask.sum(),
        }
        if std is not None:
            out["std"] = std
        if self.poisson:
            assert window is not None
            log_lam = torch.log(F.softplus(self.intensity_net(z)) + 1e-8)  # (K, B, N, C)
            out["obs_time"] = poisson_loglik(log_lam, mask, window)
        return out

    def reconstructs(self, batch: IrregularBatch) -> bool:
        """Whether the context observations enter the likelihood for ``batch`` (see
        ``reconstruct_context``)."""
        if self.reconstruct_context is not None:
            return bool(self.reconstruct_context)
        if not has_target(batch):
            return True
        ctx, tgt = batch.context, batch.target
        last = ctx.times.gather(1, (ctx.lengths - 1).clamp_min(0).unsqueeze(1))  # (B, 1)
        after = (tgt.times >= last) | ~tgt.time_mask | (ctx.lengths == 0).unsqueeze(1)
        return not bool(after.all())

    def series_summary(self, batch: IrregularBatch) -> Tensor:
        """The posterior mean of ``z`` ``(B, D)`` at the anchor time."""
        return self.posterior(batch)[0]

    def classification_step(self, batch: IrregularBatch) -> StepResult:
        """Joint objective: the bound term of :meth:`compute_loss` (negative ELBO per observed
        entry, over the context and any target) plus ``classification_weight`` x the
        cross-entropy of the head on the posterior mean."""
        posterior = self.posterior(batch)
        result = self.compute_loss(batch, posterior)
        logits = self.head_logits(batch, posterior[0])
        return self.add_classification(result, batch, logits, self.classification_weight)

    def compute_loss(
        self, batch: IrregularBatch, posterior: tuple[Tensor, Tensor, Tensor] | None = None
    ) -> StepResult:
        mu, std, t0 = self.posterior(batch) if posterior is None else posterior
        k = self.num_samples
        z0 = mu + std * self.sample_eps((k, *mu.shape), mu)  # (K, B, D)
        terms = self.likelihood_terms(batch, z0, t0)
        loglik = terms["recon"]
        logs: dict[str, Tensor] = {}
        if self.poisson:
            loglik = loglik + terms["obs_time"]
            logs["obs_time_loglik"] = terms["obs_time"].mean()

        prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
        post = torch.distributions.Normal(mu, std)
        beta = self.kl_weight()
        kl = torch.distributions.kl_divergence(post, prior).sum(-1)  # (B,)
        if self.iwae:
            log_ratio = prior.log_prob(z0).sum(-1) - post.log_prob(z0).sum(-1)  # (K, B)
            bound = torch.logsumexp(loglik + beta * log_ratio, dim=0) - math.log(k)
        else:
            bound = loglik.mean(0) - beta * kl
        n_obs = terms["num_observed"].clamp_min(1)
        loss = -bound.sum() / n_obs

        n_ctx = batch.context.times.shape[1] if self.reconstructs(batch) else 0
        if "std" in terms and has_target(batch):
            tgt = batch.target
            nll = mixture_nll(terms["x_hat"][:, :, n_ctx:], terms["std"][:, :, n_ctx:],
                              tgt.values, tgt.mask & tgt.time_mask.unsqueeze(-1))
            logs["std_nll"] = nll
            loss = loss + nll
        prediction = terms["x_hat"][:, :, n_ctx:].mean(0)  # (B, Lt, C) at target times
        predictive = None
        if self.classifier is not None and not has_target(batch):  # task="classification"
            prediction = None
        elif not self.training:  # evaluation: score the predictive distribution users get
            predictive = self.forecast(batch, batch.target.times)
            prediction = predictive.mean
        logs.update(
            elbo=(loglik.mean(0) - kl).mean(),
            recon_loglik=terms["recon"].mean(0).sum() / n_obs,
            kl=kl.mean(),
            kl_weight=torch.tensor(beta),
        )
        return StepResult(loss, prediction, logs, predictive)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def sample_trajectories(
        self, batch: IrregularBatch, times: Tensor, num_samples: int | None = None
    ) -> dict[str, Tensor]:
        """Decoded trajectories for ``num_samples`` draws of ``z0 ~ q``: ``samples (K, B, M, C)``
        (decoded means), ``noise_std (K, B, M, C)`` (the predictive noise around each) and, with
        ``poisson``, ``intensity (K, B, M, C)`` (observations per hour)."""
        check_query_times(times, batch.batch_size)
        mu, std, t0 = self.posterior(batch)
        if self.anchor == "first":
            self._check_times(times, t0, "forecast")
        k = num_samples or self.num_predict_samples
        z0 = mu + std * self.sample_eps((k, *mu.shape), mu)
        z, _ = self.solve_at(z0, t0, times)
        means, std = self.decode(z, batch.context, times)
        out = {"samples": means, "noise_std": self.noise_std(std, means)}
        if self.poisson:
            out["intensity"] = F.softplus(self.intensity_net(z))
        return out

    def forecast(self, batch: IrregularBatch, times: Tensor) -> Forecast:
        """Predictive distribution at ``times (B, M)`` (``>=`` first context time), normalized units.

        A :class:`~tsode.models.forecast.Forecast` with ``mean (B, M, C)`` (mean of the sampled
        trajectories' decoded means), ``samples (K, B, M, C)`` (draws from the predictive
        distribution: each trajectory's decoded mean plus Gaussian noise -- from the std head,
        or ``obs_std`` without one -- so quantiles are predictive intervals for new
        observations), the same distribution as a Gaussian mixture (``mixture_means`` ``(K, B,
        M, C)``: the trajectories' decoded means, without the noise; ``mixture_stds``: the
        noise std), ``quantile_levels`` (this model's, the default of ``quantiles()``: exact
        quantiles of the mixture) and ``extras``: ``obs_std (C,)`` and, with ``poisson``,
        ``intensity (B, M, C)`` (mean over samples).
        """
        out = self.sample_trajectories(batch, times)
        means = out["samples"]
        samples = means + out["noise_std"] * self.sample_eps(means.shape, means)
        extras = {"obs_std": self.log_obs_std.detach().exp()}
        if "intensity" in out:
            extras["intensity"] = out["intensity"].mean(0)
        return Forecast(
            mean=means.mean(0),
            samples=samples,
            mixture_means=means,
            mixture_stds=out["noise_std"],
            quantile_levels=tuple(self.quantile_levels),
            extras=extras,
        )
