"""Building blocks shared by the tsode models.

* :class:`NFECounter` -- mixin giving a module an ``nfe`` counter (number of function
  evaluations). :class:`tsode.models.base.IrregularModel` finds every ``NFECounter`` among its
  submodules, resets the counters before each step and logs forward / backward NFE.
* :class:`ODEFunc` -- autonomous MLP vector field ``dy/dt = f(y)`` with small initialization,
  called as ``func(t, y)`` with ``t`` of shape ``(B,)`` and ``y`` of shape ``(B, D)``.
* :class:`MaskedGRUCell` -- GRU update whose input is ``[values, mask]`` (missing channels are
  explicit) and that leaves rows untouched where no update should happen (padding).
* :func:`mlp` and :class:`MLPDecoder` -- small feed-forward nets (encoders / decoders / heads).
* :func:`distinct_times` -- the distinct times of per-series grids (:func:`gather_times` and
  :func:`last_before` live in :mod:`tsode.models.timeindex` and are re-exported here).
* :func:`last_observation` and :class:`Persistence` -- each channel's last observed value and
  its age at query times, and the learned gate on it that every forecaster adds to its
  decoder output (so "carry the last value forward" is one step away, not something the
  decoder must rebuild from its state).
* :class:`ChannelReadout` -- the per-channel query readout (``persistence="channel"``): each
  channel decoded from the model's features with its own last value, seen flag, age and a
  channel embedding, as ``gate_c * x_last_c + r_c``.
* :class:`StaticEncoder` / :func:`initial_state` -- static covariates into an initial state.
* :func:`forecast_heads` / :func:`forecast_decoder` / :func:`forecast_readout` -- the decoder,
  the persistence term and the Gaussian std head every forecaster builds and applies the same
  way.
* :class:`ClassifierHead` -- the series-level classification head every encoder shares
  (series summary -> class logits, see :meth:`tsode.models.base.IrregularModel.classify`).

Why one module over 500 lines: these are the small parts every model composes; one file per
part would scatter helpers of 10-40 lines that are always read together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tsode.config import ParameterError
from tsode.data.batch import SeriesPart
from tsode.models.forecast import Forecast
from tsode.models.history import DEFAULT_HISTORY_SCALES, channel_history, history_feature_count
from tsode.models.timeindex import gather_times, last_before

if TYPE_CHECKING:  # the solver layer is only needed when a solve actually happens
    from tsode.solvers import SolverConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


def mlp(
    in_dim: int,
    out_dim: int,
    hidden_dim: int,
    num_layers: int,
    activation: str = "tanh",
) -> nn.Sequential:
    """Feed-forward net with ``num_layers`` hidden layers of width ``hidden_dim``.

    ``num_layers=0`` gives a single linear map ``in_dim -> out_dim``.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_dim), _ACTIVATIONS[activation]()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def small_init_(net: nn.Module, std: float = 0.1, last_layer_scale: float = 0.1) -> None:
    """Initialise every Linear with N(0, std^2) weights and zero bias; the last Linear is
    additionally scaled by ``last_layer_scale`` so an ODE starts close to the identity flow."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for layer in linears:
        nn.init.normal_(layer.weight, mean=0.0, std=std)
        nn.init.zeros_(layer.bias)
    if linears:
        with torch.no_grad():
            linears[-1].weight.mul_(last_layer_scale)


class NFECounter(nn.Module):
    """Mixin for vector fields: counts function evaluations in ``self.nfe``.

    Subclasses call ``self.count()`` once per evaluation (typically first thing in ``forward``).
    Counts include evaluations made during the backward pass of an adjoint solve.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nfe = 0

    def count(self) -> None:
        self.nfe += 1

    def reset_nfe(self) -> None:
        self.nfe = 0


class ODEFunc(NFECounter):
    """Autonomous MLP vector field ``f(t, y) = net(y)`` (``t`` is accepted and ignored).

    Args:
        dim: state dimension D.
        hidden_dim: width of the hidden layers.
        num_layers: number of hidden layers (``3`` gives the "3x50" nets of Rubanova et al.).
        activation: hidden activation name (``tanh`` keeps the field smooth and bounded).
        final_tanh: squash the output with ``tanh`` (a bounded field). Off in every tsode
            model (the Neural CDE's vector field, ``tsode.models.ncde.CDEFunc``, applies
            its own final ``tanh``); kept for custom models.
        init_std: std of the small initialization (the last layer is scaled down a further 10x).

    Shapes: ``t (B,)``, ``y (B, D)`` -> ``(B, D)``.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 50,
        num_layers: int = 3,
        activation: str = "tanh",
        final_tanh: bool = False,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.net = mlp(dim, dim, hidden_dim, num_layers, activation)
        self.final_tanh = final_tanh
        small_init_(self.net, std=init_std)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.count()
        out = self.net(y)
        return torch.tanh(out) if self.final_tanh else out


class MaskedGRUCell(nn.Module):
    """GRU update ``h <- GRU([values, mask], h)`` applied only where ``update`` is True.

    Args:
        num_channels: C, the number of value channels.
        hidden_dim: H.
        extra_dim: size of any extra input appended after ``[values, mask]`` (e.g. elapsed time).
        input_hidden_dim: if > 0, the input first goes through ``Linear -> tanh`` of this width
            (the "GRU units" of Rubanova et al.'s update network); 0 feeds it to the GRU directly.

    Shapes: ``h (B, H)``, ``values (B, C)`` (0 where unobserved), ``mask (B, C)`` bool,
    ``update (B,)`` bool, ``extra (B, extra_dim)`` or None -> ``(B, H)``.
    Rows with ``update`` False (padding, or no channel observed) keep ``h`` exactly, and their
    ``values`` cannot influence the result.
    """

    def __init__(
        self, num_channels: int, hidden_dim: int, extra_dim: int = 0, input_hidden_dim: int = 0
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.hidden_dim = hidden_dim
        self.extra_dim = extra_dim
        in_dim = 2 * num_channels + extra_dim
        if input_hidden_dim > 0:
            self.input_net: nn.Module = nn.Sequential(nn.Linear(in_dim, input_hidden_dim), nn.Tanh())
            in_dim = input_hidden_dim
        else:
            self.input_net = nn.Identity()
        self.cell = nn.GRUCell(in_dim, hidden_dim)

    def forward(
        self,
        h: Tensor,
        values: Tensor,
        mask: Tensor,
        update: Tensor | None = None,
        extra: Tensor | None = None,
    ) -> Tensor:
        m = mask.to(values.dtype)
        parts = [values * m, m]
        if self.extra_dim:
            if extra is None:
                raise ValueError(f"MaskedGRUCell expects an extra input of size {self.extra_dim}")
            parts.append(extra)
        h_new = self.cell(self.input_net(torch.cat(parts, dim=-1)), h)
        if update is None:
            update = mask.any(dim=-1)
        return torch.where(update.unsqueeze(-1), h_new, h)


class MLPDecoder(nn.Module):
    """Decoder ``(..., in_dim) -> (..., out_dim)``: an MLP (``num_layers=0`` = linear)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 50,
        num_layers: int = 1,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.net = mlp(in_dim, out_dim, hidden_dim, num_layers, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def distinct_times(times: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row distinct values of non-decreasing times.

    Args:
        times: ``(B, N)`` non-decreasing per row.

    Returns:
        ``grid (B, U)`` -- each row's distinct times in order, the tail (beyond the row's own
        number of distinct times) repeating its last time, ``U`` the largest count over rows --
        and ``index (B, N)`` long with ``grid.gather(1, index) == times``.
    """
    bsz, n = times.shape
    if n <= 1:
        return times, torch.zeros_like(times, dtype=torch.long)
    new = torch.ones_like(times, dtype=torch.bool)
    new[:, 1:] = times[:, 1:] != times[:, :-1]
    index = new.long().cumsum(dim=1) - 1
    width = int(index[:, -1].max()) + 1
    positions = torch.arange(n, device=times.device).expand(bsz, n)
    first = torch.full((bsz, width), n - 1, dtype=torch.long, device=times.device)
    first = first.scatter_reduce(1, index, positions, reduce="amin")  # tail stays at n - 1
    return times.gather(1, first), index


def check_query_times(times: Tensor, batch_size: int, name: str = "times") -> None:
    """Validate requested prediction times: shape ``(B, M)``, finite, non-decreasing per row."""
    if times.dim() != 2 or times.shape[0] != batch_size:
        raise ValueError(f"{name} must have shape (batch={batch_size}, M), got {tuple(times.shape)}")
    if not torch.isfinite(times).all():
        rows = (~torch.isfinite(times)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"{name} contains non-finite values in batch rows {rows}")
    if times.shape[1] > 1:
        bad = (times[:, 1:] < times[:, :-1]).any(dim=1)
        if bad.any():
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(f"{name} must be non-decreasing in every row; rows {rows} are not")


def solve_from(
    solver: SolverConfig,
    func: nn.Module,
    y0: Tensor,
    t0: Tensor,
    times: Tensor,
) -> Tensor:
    """Solve an ODE from ``y0`` at per-row start times to per-row output times: one solve on
    the per-row grids ``[t0, times]``, so each row pays only for its own span.

    Args:
        solver: the model's ``SolverConfig``.
        func: vector field ``func(t, y)``.
        y0: ``(B, D)`` states at ``t0``.
        t0: ``(B,)`` start times.
        times: ``(B, M)`` output times, each row non-decreasing and ``>= t0``.

    Returns:
        ``(B, M, D)`` states at ``times``.
    """
    if times.shape[1] == 0:
        return y0.new_zeros(y0.shape[0], 0, y0.shape[1])
    t = torch.cat([t0.unsqueeze(1), times], dim=1)
    grid_t, index = distinct_times(t)
    if grid_t.shape[1] == t.shape[1]:
        return solver.solve(func, y0, t)[:, 1:]
    # repeated times (e.g. a target observed at a context time) share one output point:
    # the same values, but fewer output intervals (each costs >= 1 backward adjoint step)
    return gather_times(solver.solve(func, y0, grid_t), index[:, 1:])


def last_observation(part: SeriesPart, times: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each channel's last observation strictly before each query time.

    Args:
        part: observations (times ``(B, L)``, values/mask ``(B, L, C)``, lengths ``(B,)``).
        times: ``(B, M)`` query times (hours).

    Returns:
        ``values (B, M, C)`` (0 where never observed before the query), ``age (B, M, C)`` hours
        since that observation (0 where never observed) and ``seen (B, M, C)`` bool.
    """
    bsz, length, channels = part.values.shape
    if length == 0:
        zeros = times.new_zeros(*times.shape, channels)
        return zeros, zeros, zeros.bool()
    steps = torch.arange(length, device=part.values.device).view(1, length, 1)
    observed = part.mask & part.time_mask.unsqueeze(-1)
    last_idx = torch.where(observed, steps, torch.full_like(steps, -1)).cummax(dim=1).values  # (B, L, C)
    at = last_before(part.times, part.lengths, times, strict=True)  # (B, M) in [-1, L-1]
    idx = gather_times(last_idx, at.clamp_min(0))  # (B, M, C) index of the channel's last obs
    seen = (idx >= 0) & (at >= 0).unsqueeze(-1)
    idx0 = idx.clamp_min(0)
    values = torch.gather(part.values, 1, idx0)
    obs_times = torch.gather(part.times.unsqueeze(-1).expand(-1, -1, channels), 1, idx0)
    age = (times.unsqueeze(-1) - obs_times).clamp_min(0)
    zeros = torch.zeros_like(values)
    return torch.where(seen, values, zeros), torch.where(seen, age, zeros), seen


#: initial gate bias: sigmoid(-4) = 0.018, so a new model starts as its own dynamics model and
#: opens the gate only for channels whose last value keeps predicting (measured on the synthetic
#: data: a half-open gate (bias 0) with a shrunk decoder kept ODE-RNN at the channel mean,
#: test MSE 0.988 against 0.398 without persistence)
CLOSED_GATE_BIAS = -4.0


class Persistence(nn.Module):
    """A learned gate on each channel's last observation: ``gate * x_last``.

    ``gate = sigmoid(Linear([features, seen, log1p(age)]))`` per channel, from the model's own
    state at the query time and how long ago the channel was seen, so a model can keep slowly
    changing channels (labs) at their last value and let fast ones (vitals) go to what its
    decoder predicts. In normalized units the training mean is 0: a closed gate is GRU-D's
    decay to the mean. Channels never observed contribute 0. Forecasters add this term to
    their decoder output; the gate starts nearly closed (:data:`CLOSED_GATE_BIAS`).
    """

    #: per-channel features passed on to the std head: seen, log1p(age)
    carried_per_channel = 2

    def __init__(self, num_channels: int, feature_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(feature_dim + 2 * num_channels, num_channels)
        nn.init.normal_(self.gate.weight, std=0.01)
        nn.init.constant_(self.gate.bias, CLOSED_GATE_BIAS)

    def forward(self, part: SeriesPart, times: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(baseline (B, M, C), carried (B, M, 2C))`` at ``times (B, M)`` given the model's
        features ``(B, M, F)`` there; ``carried`` is ``[seen, log1p(age)]`` per channel."""
        values, age, seen = last_observation(part, times)
        carried = torch.cat([seen.to(values.dtype), torch.log1p(age)], dim=-1)
        gate = torch.sigmoid(self.gate(torch.cat([features, carried], dim=-1)))
        return gate * values, carried


#: what ``persistence=`` accepts in every forecaster (``True`` = ``"gate"``, ``False`` = ``"none"``)
PERSISTENCE_MODES = ("gate", "channel", "history", "none")


def persistence_mode(persistence: bool | str) -> str:
    """Normalise a model's ``persistence`` argument to one of :data:`PERSISTENCE_MODES`."""
    if persistence is True:
        return "gate"
    if persistence is False:
        return "none"
    if persistence not in PERSISTENCE_MODES:
        raise ParameterError("persistence", f"persistence must be True, False or one of {PERSISTENCE_MODES}, got {persistence!r}")
    return persistence


class ChannelReadout(nn.Module):
    """A per-channel query readout: each channel is decoded from the model's state *and its
    own* last observation, ``term_c = gate_c * x_last_c + r_c``.

    For channel ``c`` at a query time, one hidden layer ``u_c = tanh(W f + w_x x_c + w_s s_c +
    w_a log1p(a_c) + e_c)`` (``f`` the model's features, ``x_c``/``s_c``/``a_c`` the channel's
    last value / seen flag / age in hours, ``e_c`` a learned channel embedding) gives the gate
    ``sigmoid(<g_c, u_c> + b_c)`` and the residual ``<v_c, u_c>``. Unlike :class:`Persistence`,
    whose gate is linear in the state, each channel's correction can depend non-linearly on its
    own last value and age (mean reversion that grows with the value's distance and age), as
    the strongest irregular forecasters decode each (time, variable) query. The gate starts
    nearly closed and the residual at zero, so a new model starts as its own decoder.
    Memory is ``O(B * M * C * hidden_dim)`` per forecast.
    """

    def __init__(
        self, num_channels: int, feature_dim: int, hidden_dim: int = 32, history_scales: tuple[float, ...] = ()
    ) -> None:
        super().__init__()
        self.history_scales = tuple(float(s) for s in history_scales)
        n_history = history_feature_count(self.history_scales) if self.history_scales else 0
        #: per-channel features passed on to the std head: seen, log1p(age) and the history
        self.carried_per_channel = 2 + n_history
        self.features = nn.Linear(feature_dim, hidden_dim)
        self.carried = nn.Linear(3 + n_history, hidden_dim, bias=False)
        self.embedding = nn.Parameter(0.1 * torch.randn(num_channels, hidden_dim))
        self.gate_weight = nn.Parameter(0.01 * torch.randn(num_channels, hidden_dim))
        self.gate_bias = nn.Parameter(torch.full((num_channels,), CLOSED_GATE_BIAS))
        self.out_weight = nn.Parameter(torch.zeros(num_channels, hidden_dim))
        self.out_bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, part: SeriesPart, times: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(term (B, M, C), carried (B, M, 2C))``, as :meth:`Persistence.forward`."""
        values, age, seen = last_observation(part, times)
        log_age = torch.log1p(age)
        per_channel = torch.stack([values, seen.to(values.dtype), log_age], dim=-1)  # (B, M, C, 3)
        if self.history_scales:
            history = channel_history(part, times, self.history_scales)  # (B, M, C, S + 2)
            per_channel = torch.cat([per_channel, history], dim=-1)
        hidden = torch.tanh(
            self.features(features).unsqueeze(-2) + self.carried(per_channel) + self.embedding
        )  # (B, M, C, D)
        gate = torch.sigmoid((hidden * self.gate_weight).sum(-1) + self.gate_bias)
        residual = (hidden * self.out_weight).sum(-1) + self.out_bias
        # channel-major blocks: [seen (C), log1p(age) (C), history feature 1 (C), ...]
        carried = per_channel[..., 1:].transpose(-1, -2).flatten(-2)  # (B, M, C * carried_per_channel)
        return gate * values + residual, carried


class StaticEncoder(nn.Module):
    """Static covariates to an initial hidden state: ``h0 = tanh(Linear(static))``, ``(B, S) ->
    (B, H)`` (as the Neural CDE paper maps static features to z0). The covariates arrive
    normalized with missing values at 0 (the training mean)."""

    def __init__(self, num_static: int, hidden_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_static, hidden_dim)
        nn.init.normal_(self.linear.weight, std=0.1)
        nn.init.zeros_(self.linear.bias)

    def forward(self, static: Tensor) -> Tensor:
        return torch.tanh(self.linear(static))


def static_encoder(num_static: int, hidden_dim: int) -> StaticEncoder | None:
    """A :class:`StaticEncoder` when there are static covariates, else None."""
    if num_static < 0:
        raise ParameterError("num_static", f"num_static must be >= 0, got {num_static}")
    return StaticEncoder(num_static, hidden_dim) if num_static > 0 else None


def initial_state(
    encoder: StaticEncoder | None, static: Tensor | None, batch_size: int, hidden_dim: int, like: Tensor
) -> Tensor:
    """``(B, H)`` initial state: from the static covariates ``(B, S)`` when the model has a
    static encoder and the batch carries them, else zeros (dtype/device of ``like``)."""
    if encoder is None or static is None:
        return like.new_zeros(batch_size, hidden_dim)
    if static.shape != (batch_size, encoder.linear.in_features):
        raise ValueError(
            f"static covariates have shape {tuple(static.shape)}, the model expects "
            f"({batch_size}, {encoder.linear.in_features})"
        )
    return encoder(static.to(device=like.device, dtype=like.dtype))


UNCERTAINTY_MODES = ("gaussian", "none")


def forecast_heads(
    decoder: nn.Module, feature_dim: int, num_channels: int, persistence: bool | str, uncertainty: str
) -> tuple[Persistence | ChannelReadout | None, nn.Module | None]:
    """The optional heads of a forecaster's readout: a last-observation term
    (``persistence="gate"``/``True``: :class:`Persistence`; ``"channel"``:
    :class:`ChannelReadout`; both start nearly closed, so the model starts as its own dynamics
    model) and a Gaussian std head
    over ``[features, seen, log1p(age)]`` (``feature_dim + 2C`` inputs with persistence)."""
    from tsode.models.predictive import GaussianHead

    if uncertainty not in UNCERTAINTY_MODES:
        raise ParameterError("uncertainty", f"uncertainty must be one of {UNCERTAINTY_MODES}, got {uncertainty!r}")
    mode = persistence_mode(persistence)
    carried: Persistence | ChannelReadout | None = None
    if mode == "gate":
        carried = Persistence(num_channels, feature_dim)
    elif mode == "channel":
        carried = ChannelReadout(num_channels, feature_dim)
    elif mode == "history":
        carried = ChannelReadout(num_channels, feature_dim, history_scales=DEFAULT_HISTORY_SCALES)
    std_head = None
    if uncertainty == "gaussian":
        per_channel = 0 if carried is None else carried.carried_per_channel
        std_head = GaussianHead(feature_dim + per_channel * num_channels, num_channels)
    return carried, std_head


def forecast_decoder(
    feature_dim: int,
    num_channels: int,
    hidden_dim: int,
    num_layers: int,
    persistence: bool | str,
    uncertainty: str,
) -> tuple[MLPDecoder, Persistence | ChannelReadout | None, nn.Module | None]:
    """A forecaster's readout: the :class:`MLPDecoder` ``feature_dim -> num_channels`` and its
    :func:`forecast_heads` (``decoder, persistence, std_head``), built in that order."""
    decoder = MLPDecoder(feature_dim, num_channels, hidden_dim, num_layers)
    return (decoder, *forecast_heads(decoder, feature_dim, num_channels, persistence, uncertainty))


def forecast_readout(
    decoded: Tensor,
    features: Tensor,
    context: SeriesPart,
    times: Tensor,
    persistence: Persistence | ChannelReadout | None,
    std_head: nn.Module | None,
) -> Forecast:
    """The :class:`~tsode.models.forecast.Forecast` from a decoder's output ``decoded (B, M,
    C)`` and its input ``features (B, M, F)`` at ``times (B, M)``: ``mean`` (plus the
    persistence term) and, with a std head, ``std`` (from the features and each channel's
    ``seen`` flag and ``log1p(age)``); normalized units."""
    mean = decoded
    if persistence is not None:
        baseline, carried = persistence(context, times, features)
        mean = mean + baseline
        features = torch.cat([features, carried], dim=-1)
    # detached: the std's NLL never reshapes the model's states
    std = None if std_head is None else std_head(features.detach())
    return Forecast(mean=mean, std=std)


class ClassifierHead(nn.Module):
    """Series summary ``(B, F)`` to class logits ``(B, K)``: ``Linear -> ReLU -> Linear``.

    Always ``K >= 2`` logits (binary labels: 2, class 1's probability is ``softmax[:, 1]``),
    trained with cross-entropy.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 64) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (binary: 2), got {num_classes}")
        self.num_classes = num_classes
        self.net = mlp(in_dim, num_classes, hidden_dim, 1, "relu")

    def forward(self, summary: Tensor) -> Tensor:
        return self.net(summary)
