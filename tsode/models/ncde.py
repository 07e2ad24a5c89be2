"""Neural controlled differential equation forecaster (Kidger et al. 2020).

The context of each series becomes a continuous path ``X(t)`` (:mod:`tsode.models.interpolation`:
time, filled values and cumulative observation counts per channel). The hidden state starts
from a linear map of the first observation and follows the CDE

    h(t0) = W X(t0) + b,        dh(t) = f(h(t)) dX(t) = f(h(t)) X'(t) dt,

over each series' own interval ``[t0, T]`` (``T`` its last context time); ``f`` is an MLP
``H -> H x D`` with a final ``tanh``. The solve goes through :mod:`tsode.solvers` on a
per-sample grid made of each series' observation times, so solver steps end exactly on the
knots of the path (where the cubic paths are only C1). Past ``T`` an autonomous ODE decoder
``dz/dt = g(z)``, ``z(T) = h(T)``, carries the state to the requested times, and a linear
readout gives the prediction. Queries inside the context (``t <= T``) read out the CDE state
``h(t)`` itself. With ``"hermite"`` or ``"linear"`` paths, ``h`` at a knot ``t_k`` depends on the
data up to ``t_k`` only (between two knots the path already heads for the next observation);
the ``"natural"`` spline looks at the whole context.

Shapes: ``B`` series, ``L`` context points, ``C`` channels, ``D`` path channels, ``H`` hidden.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from tsode.config import OptimConfig
from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.models.base import IrregularModel
from tsode.models.blocks import (
    NFECounter,
    ODEFunc,
    check_query_times,
    forecast_heads,
    forecast_readout,
    gather_times,
    initial_state,
    mlp,
    small_init_,
    static_encoder,
)
from tsode.models.forecast import Forecast
from tsode.models.interpolation import (
    FILL_METHODS,
    PATH_METHODS,
    InterpolatedPath,
    path_coefficients,
    path_num_channels,
)
from tsode.solvers import ADAPTIVE_METHODS, SolverConfig
from tsode.solvers.controller import steps_per_interval


class _FieldTimesPath(torch.autograd.Function):
    """``tanh(a W^T + b).view(B, H, D) @ v``: the CDE field's last layer, contracted with ``v``.

    ``a (B, W)`` is the input of the last linear layer, ``weight (H * D, W)``, ``bias (H * D,)``,
    ``v (B, D)`` the path derivative; returns ``(B, H)``. Plain autograd would keep the
    ``(B, H * D)`` matrix ``f(h)`` of every evaluation alive until the backward pass (for
    backprop through a solve with hundreds of steps, >90 % of the training memory). This keeps
    only ``a`` and ``v`` (``(B, W + D)`` numbers) and recomputes the last layer in the backward
    pass, one extra ``(B, W) x (W, H * D)`` product per evaluation. First-order gradients only.
    """

    @staticmethod
    def forward(ctx, a: Tensor, weight: Tensor, bias: Tensor, v: Tensor, hidden_dim: int) -> Tensor:
        ctx.save_for_backward(a, weight, bias, v)
        ctx.hidden_dim = hidden_dim
        matrix = torch.addmm(bias, a, weight.t()).tanh_().view(a.shape[0], hidden_dim, -1)
        return torch.bmm(matrix, v.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        a, weight, bias, v = ctx.saved_tensors
        need_a, need_weight, need_bias, need_v, _ = ctx.needs_input_grad
        matrix = torch.addmm(bias, a, weight.t()).tanh_().view(a.shape[0], ctx.hidden_dim, -1)
        grad_v = None
        if need_v:
            grad_v = torch.bmm(grad.unsqueeze(1), matrix).squeeze(1)  # (B, D)
        # d out_h / d z_hd = (1 - tanh(z_hd)^2) v_d, computed in place in the recomputed matrix.
        grad_z = matrix.mul_(matrix).neg_().add_(1.0)
        grad_z.mul_(grad.unsqueeze(-1)).mul_(v.unsqueeze(1))
        grad_z = grad_z.view(a.shape[0], -1)  # (B, H * D)
        grad_a = grad_z.mm(weight) if need_a else None
        grad_weight = grad_z.t().mm(a) if need_weight else None
        grad_bias = grad_z.sum(0) if need_bias else None
        return grad_a, grad_weight, grad_bias, grad_v, None


class CDEFunc(NFECounter):
    """CDE vector field ``t, h -> f(h) X'(t)``: ``t (B,)``, ``h (B, H)`` -> ``(B, H)``.

    ``f`` is an MLP ``H -> H * D`` with a final ``tanh`` (bounded), reshaped to ``(B, H, D)`` and
    applied to the path derivative ``X'(t) (B, D)`` (per hour) of a given path; solvers take
    :meth:`bind`, the field with its path fixed.

    The evaluation fuses the last layer, the ``tanh`` and the contraction with ``X'(t)``
    (:class:`_FieldTimesPath`), so the ``(B, H, D)`` matrix is never kept for the backward pass.
    """

    def __init__(
        self,
        hidden_dim: int,
        path_channels: int,
        width: int = 64,
        num_layers: int = 2,
        activation: str = "tanh",
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.path_channels = path_channels
        self.net = mlp(hidden_dim, hidden_dim * path_channels, width, num_layers, activation)
        # Small initial field: h starts near h(t0) instead of drifting by ~|X| over the series.
        small_init_(self.net, std=init_std)

    def matrix(self, h: Tensor) -> Tensor:
        """f(h): ``(B, H)`` -> ``(B, H, D)``."""
        return torch.tanh(self.net(h)).view(h.shape[0], self.hidden_dim, self.path_channels)

    def forward(
        self, t: Tensor, h: Tensor, path: InterpolatedPath, interval: Tensor | None = None
    ) -> Tensor:
        """``f(h) X'(t)`` for the given path; ``interval (B,)``: the path interval per row
        whose polynomial gives ``X'`` (see :meth:`InterpolatedPath.derivative`)."""
        self.count()
        dxdt = path.derivative(t, interval).to(h.dtype)  # (B, D)
        hidden = self.net[:-1](h)  # input of the last layer, (B, width)
        last = self.net[-1]
        return _FieldTimesPath.apply(hidden, last.weight, last.bias, dxdt, self.hidden_dim)

    def bind(self, path: InterpolatedPath, interval: Tensor | None = None) -> _BoundCDEFunc:
        """The field for one solve: ``path`` (and ``interval``) fixed, so an adjoint backward
        pass run later evaluates exactly the field of the forward solve."""
        return _BoundCDEFunc(self, path, interval)


class _BoundCDEFunc(nn.Module):
    """``t, h -> func(t, h, path, interval)``; its parameters are ``func``'s."""

    def __init__(
        self, func: CDEFunc, path: InterpolatedPath, interval: Tensor | None
    ) -> None:
        super().__init__()
        self.func = func
        self.path = path
        self.interval = interval

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        return self.func(t, h, self.path, self.interval)


def packed_step_grid(grid: Tensor, step_size: float | None) -> tuple[Tensor, Tensor]:
    """Per-row step grid with each row's steps packed to the left.

    ``grid (B, N)`` is non-decreasing per row. Every interval ``[g_j, g_{j+1}]`` of a row is split
    into ``ceil(len / step_size)`` equal steps (one step without ``step_size``; none for a
    zero-length interval), and a row's steps follow each other without gaps: returns
    ``packed (B, S)`` (``S - 1`` = the most steps of any row; a row's tail repeats its last time)
    and ``position (B, N)``, the column of ``packed`` holding ``g_j`` (exactly), so that
    ``packed.gather(1, position) == grid``.
    """
    delta = grid[:, 1:] - grid[:, :-1]  # (B, N - 1)
    count = steps_per_interval(delta, step_size)
    position = torch.cat([torch.zeros_like(count[:, :1]), count.cumsum(dim=1)], dim=1)  # (B, N)
    width = int(position[:, -1].max()) + 1
    columns = torch.arange(width, device=grid.device).expand(grid.shape[0], width)
    # Last grid point at or before each column (ties: the last, which starts the next step).
    owner = torch.searchsorted(position, columns.contiguous(), right=True) - 1  # (B, S)
    step = torch.cat([delta / count.clamp(min=1), torch.zeros_like(delta[:, :1])], dim=1)
    offset = (columns - position.gather(1, owner)).to(grid.dtype)
    packed = grid.gather(1, owner) + offset * step.gather(1, owner)
    return packed, position


def default_solver() -> SolverConfig:
    """RK4 with one step per interval between grid times, at most 1 h long.

    The knots are grid times, so every step ends on one; on PhysioNet-size batches this is
    several times faster per training step than dopri5 (rtol 1e-3) stepping to every knot.
    """
    return SolverConfig(method="rk4", step_size=1.0)


class NeuralCDE(IrregularModel):
    """Neural CDE encoder + ODE decoder forecaster (registered as ``"ncde"``).

    Args:
        num_channels: C, value channels of the data.
        hidden_dim: H, size of the CDE hidden state (also the decoder state).
        vf_width: width of the hidden layers of the CDE vector field ``f``.
        vf_layers: number of hidden layers of ``f``.
        vf_activation: hidden activation of ``f`` (the output always goes through ``tanh``);
            smooth choices (tanh, softplus) keep adaptive steps few and adjoint gradients exact.
        decoder_width: width of the ODE decoder's vector field ``g``.
        decoder_layers: hidden layers of ``g`` (0 = linear dynamics).
        interpolation: path type, ``"hermite"`` (cubic Hermite with backward differences,
            causal, default), ``"linear"`` or ``"natural"`` (natural cubic spline).
        fill: missing-value fill before interpolation: ``"ffill"`` (causal) or ``"linear"``.
        include_time: time itself as a path channel.
        include_counts: cumulative per-channel observation counts as path channels
            (observational intensity; makes missingness informative); ``"log"``: their
            ``log1p``, so a long, densely observed context does not drive the state by hundreds
            of unit steps.
        input_clip: soft-clip the (normalized) values entering the path to ``(-c, c)`` with
            ``c * tanh(x / c)`` (None: unchanged). The CDE is linear in ``dX``, so one
            recording error of 40 standard deviations moves the state 40 times as far as a
            typical change; a GRU update saturates instead. Targets are never clipped.
        persistence: add each channel's last observation (strictly before the query time),
            times a learned gate (from the state and the observation's age), to the readout.
        uncertainty: ``"gaussian"`` (a std head: forecasts carry ``std``) or ``"none"``.
        num_static: S static covariates per series; a :class:`~tsode.models.blocks.StaticEncoder`
            of them is added to the initial state ``h(t0)`` (0 = none).
        num_classes: K > 0 adds a series-level classification head (on the CDE state at the last context time); 0 (default)
            forecasts only. See :meth:`~tsode.models.base.IrregularModel.classify`.
        solver: method / tolerances / adjoint for both the CDE and the decoder ODE
            (default: :func:`default_solver`, RK4 with steps of at most 1 h ending on every
            knot).
        optim: optimizer and schedule (:class:`~tsode.config.OptimConfig`; fields left None: Adam at a
            constant 1e-3, ``CONSTANT_OPTIM``).
        remaining args: normalizer and loss arguments of :class:`~tsode.models.base.IrregularModel`.
    """

    def __init__(
        self,
        num_channels: int,
        hidden_dim: int = 32,
        vf_width: int = 64,
        vf_layers: int = 2,
        vf_activation: str = "tanh",
        decoder_width: int = 64,
        decoder_layers: int = 2,
        interpolation: str = "hermite",
        fill: str = "ffill",
        include_time: bool = True,
        include_counts: bool | str = True,
        input_clip: float | None = None,
        persistence: bool | str = True,
        uncertainty: str = "gaussian",
        num_static: int = 0,
        num_classes: int = 0,
        solver: SolverConfig | None = None,
        optim: OptimConfig | None = None,
        **base: Any,
    ) -> None:
        super().__init__(num_channels, optim, **base)
        if interpolation not in PATH_METHODS:
            raise ValueError(f"interpolation must be one of {PATH_METHODS}, got {interpolation!r}")
        if fill not in FILL_METHODS:
            raise ValueError(f"fill must be one of {FILL_METHODS}, got {fill!r}")
        if input_clip is not None and not input_clip > 0:
            raise ValueError(f"input_clip must be > 0 or None, got {input_clip!r}")
        if include_counts not in (True, False, "log"):
            raise ValueError(f"include_counts must be True, False or 'log', got {include_counts!r}")
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        self.save_hyperparameters()
        self.hidden_dim = hidden_dim
        self.interpolation = interpolation
        self.fill = fill
        self.include_time = include_time
        self.include_counts = include_counts
        self.input_clip = input_clip
        self.solver = solver if solver is not None else default_solver()
        self.path_channels = path_num_channels(num_channels, include_time, include_counts)
        self.initial = nn.Linear(self.path_channels, hidden_dim)
        self.static_encoder = static_encoder(num_static, hidden_dim)
        self.cde_func = CDEFunc(hidden_dim, self.path_channels, vf_width, vf_layers, vf_activation)
        self.decoder_func = ODEFunc(hidden_dim, hidden_dim=decoder_width, num_layers=decoder_layers)
        self.readout = nn.Linear(hidden_dim, num_channels)
        self.persistence, self.std_head = forecast_heads(
            self.readout, hidden_dim, num_channels, persistence, uncertainty
        )
        self.init_classifier(num_classes, hidden_dim)

    def series_summary(self, batch: IrregularBatch) -> Tensor:
        """The CDE state ``h(T)`` ``(B, H)`` at each series' last context time."""
        path = self.make_path(batch.context)
        return self.encode(path, path.grid_points, batch.static)[:, -1]

    # ------------------------------------------------------------------ building blocks
    def make_path(self, context: SeriesPart) -> InterpolatedPath:
        """The interpolated context path ``X`` (coefficients in the model's dtype)."""
        if context.num_channels != self.num_channels:
            raise ValueError(
                f"NeuralCDE was built for num_channels={self.num_channels}, "
                f"the batch has {context.num_channels} channels"
            )
        dtype = self.initial.weight.dtype
        values = context.values.to(dtype)
        if self.input_clip is not None:
            values = self.input_clip * torch.tanh(values / self.input_clip)
        coefficients = path_coefficients(
            context.times.to(dtype),
            values,
            context.mask,
            context.lengths,
            method=self.interpolation,  # type: ignore[arg-type]
            fill=self.fill,  # type: ignore[arg-type]
            include_time=self.include_time,
            include_counts=self.include_counts,
        )
        return InterpolatedPath(coefficients)

    def encode(self, path: InterpolatedPath, grid: Tensor, static: Tensor | None = None) -> Tensor:
        """Solve the CDE on a per-sample grid ``(B, N)`` starting at each row's first knot, from
        ``h(t0) = initial(X(t0))`` plus the static encoding of ``static (B, S)`` if given.

        Returns the hidden states ``(B, N, H)`` at the grid times, in one solve: the solver
        advances each row on its own (a row's steps cost only the steps it needs). The path's
        knots are the solve's jump times: every method steps to each knot exactly (where the
        path's higher derivatives jump) instead of across it, and a step ending on a knot
        evaluates the path's derivative on the interval it came from (no evaluation reads past
        the knot; the next step starts on the knot's own interval). Adaptive methods serve grid
        times between knots by dense output. Fixed-step methods solve on the packed step grid
        (:func:`packed_step_grid`: every step an output time, each row's steps packed to the
        left): the forward solve advances each row on its own either way, but the adjoint's
        backward pass runs output interval by output interval with a batch-shared step, so on
        the unpacked grid it would take, per interval, the steps of the row with the longest
        one (measured: 912 instead of 360 backward evaluations on 12 random series).
        """
        start = path.interval[:, 0]
        h0 = self.initial(path.evaluate(start))
        if self.static_encoder is not None and static is not None:
            h0 = h0 + initial_state(self.static_encoder, static, h0.shape[0], self.hidden_dim, h0)
        func, knots = self.cde_func.bind(path), path.grid_points
        if self.solver.method in ADAPTIVE_METHODS:
            return self.solver.solve(func, h0, grid, jump_times=knots)
        packed, position = packed_step_grid(grid, self.solver.step_size)
        one_step = dataclasses.replace(self.solver, step_size=None)
        return gather_times(one_step.solve(func, h0, packed, jump_times=knots), position)

    def decode(self, h_end: Tensor, grid: Tensor) -> Tensor:
        """Carry ``h_end (B, H)`` with the ODE decoder over ``grid (B, N)`` -> ``(B, N, H)``.

        Fixed-step methods solve on the packed grid (:func:`packed_step_grid`), as the encoder;
        adaptive ones serve the grid by dense output in one solve.
        """
        if self.solver.method in ADAPTIVE_METHODS:
            return self.solver.solve(self.decoder_func, h_end, grid)
        packed, position = packed_step_grid(grid, self.solver.step_size)
        one_step = dataclasses.replace(self.solver, step_size=None)
        return gather_times(one_step.solve(self.decoder_func, h_end, packed), position)

    # ------------------------------------------------------------------ model interface
    def forecast(self, batch: IrregularBatch, times: Tensor) -> Forecast:
        """Predict at ``times (B, M)`` (hours, non-decreasing per row) -> ``mean (B, M, C)`` and,
        with ``uncertainty="gaussian"``, ``std (B, M, C)``.

        Times after a series' last context time are reached by the ODE decoder; times within the
        context read out the CDE state there; times before the first observation get ``h(t0)``.
        """
        context = batch.context
        check_query_times(times, context.batch_size)
        path = self.make_path(context)
        knots = path.grid_points  # (B, L), padded tail repeats T
        interval = path.interval
        start, end = interval[:, :1], interval[:, 1:]
        query = times.to(knots.dtype)

        # CDE over the context knots plus the in-context queries, one sorted grid per row.
        inside = torch.minimum(torch.maximum(query, start), end)
        merged = torch.cat([knots, inside], dim=1)
        grid, order = torch.sort(merged, dim=1, stable=True)
        position = torch.empty_like(order)
        position.scatter_(
            1, order, torch.arange(merged.shape[1], device=order.device).expand_as(order)
        )
        hidden = self.encode(path, grid, batch.static)  # (B, L + M, H)
        h_end = hidden[:, -1]
        h_inside = gather_times(hidden, position[:, knots.shape[1] :])

        # ODE decoder from T to the queries after the context.
        after = torch.maximum(query, end)
        decoded = self.decode(h_end, torch.cat([end, after], dim=1))[:, 1:]

        state = torch.where((query <= end).unsqueeze(-1), h_inside, decoded)
        return forecast_readout(
            self.readout(state), state, context, times, self.persistence, self.std_head
        )
