"""ODE-RNN (Rubanova, Chen & Duvenaud 2019) on per-series time grids.

:class:`ODERNNEncoder` is the recurrent core (also used as the latent ODE's recognition
network): the hidden state follows ``dh/dt = f(h)`` between each series' **own** consecutive
observation times and receives a masked GRU update ``h <- GRU([x, m], h)`` at each observation.
Step ``i`` solves every row at once on the per-sample grid ``(t_{i-1}, t_i)`` of shape ``(B, 2)``;
padded steps repeat the last time, so they cost nothing, and their GRU update is masked out.

:class:`ODERNN` is the forecaster: encode the context forwards in time, then evolve the hidden
state from the last observation (or, for times inside the context, from the last observation
strictly before the requested time) and decode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.models.base import IrregularModel
from tsode.models.blocks import (
    GRID_MODES,
    MaskedGRUCell,
    MLPDecoder,
    ODEFunc,
    check_query_times,
    gather_times,
    last_before,
    solve_from,
)
from tsode.solvers import SolverConfig


def default_solver() -> SolverConfig:
    """Default solver for the ODE-RNN family: dopri5 at moderate tolerances."""
    return SolverConfig(method="dopri5", rtol=1e-3, atol=1e-4)


class ODERNNEncoder(nn.Module):
    """ODE evolution between observations + masked GRU updates at observations.

    Args:
        num_channels: C.
        hidden_dim: H, size of the hidden state.
        ode_hidden_dim / ode_layers: width / number of hidden layers of the vector-field MLP.
        gru_input_dim: width of the GRU input network (0: values and mask go straight in).
        solver: solver configuration for the between-observation solves.
    """

    def __init__(
        self,
        num_channels: int,
        hidden_dim: int,
        ode_hidden_dim: int = 50,
        ode_layers: int = 3,
        gru_input_dim: int = 0,
        solver: SolverConfig | None = None,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.func = ODEFunc(hidden_dim, ode_hidden_dim, ode_layers)
        self.gru = MaskedGRUCell(num_channels, hidden_dim, input_hidden_dim=gru_input_dim)
        self.solver = solver if solver is not None else default_solver()

    def _evolve(self, h: Tensor, t_from: Tensor, t_to: Tensor) -> Tensor:
        """Per-sample solve of every row from ``t_from (B,)`` to ``t_to (B,)``; rows with equal
        times are returned unchanged."""
        moving = t_from != t_to
        if not bool(moving.any()):
            return h
        grid = torch.stack([t_from, t_to], dim=1)
        h_new = self.solver.solve(self.func, h, grid)[:, -1]
        return torch.where(moving.unsqueeze(-1), h_new, h)

    def forward(
        self,
        part: SeriesPart,
        backwards: bool = False,
        return_states: bool = False,
        grid: str = "per_sample",
    ) -> tuple[Tensor, Tensor | None]:
        """Run over the observations of ``part``.

        Args:
            part: context observations (times (B, L), values/mask (B, L, C), lengths (B,)).
            backwards: run from the last observation to the first (latent ODE recognition).
            return_states: also return the hidden state after the update at every time point.
            grid: ``"per_sample"`` (each row solved between its own consecutive times) or
                ``"union"`` (reference batching: all rows stepped through the union of the
                batch's times; same function, slower).

        Returns:
            ``h`` ``(B, H)`` -- the state after the last update in the direction of travel, located
            at the last (forwards) or first (backwards) real observation time of each row -- and
            ``states`` ``(B, L, H)`` indexed like ``part.times`` (or None). Rows without any
            observation return the initial state (zeros).
        """
        if grid not in GRID_MODES:
            raise ValueError(f"grid must be one of {GRID_MODES}, got {grid!r}")
        if grid == "union":
            return self._forward_union(part, backwards, return_states)
        times, values, mask = part.times, part.values, part.mask
        bsz, length = times.shape
        update = part.time_mask & mask.any(dim=-1)
        h = times.new_zeros(bsz, self.hidden_dim)
        states: list[Tensor | None] = [None] * length
        order = range(length - 1, -1, -1) if backwards else range(length)
        prev_t: Tensor | None = None
        for i in order:
            t_i = times[:, i]
            if prev_t is not None:
                h = self._evolve(h, prev_t, t_i)
            h = self.gru(h, values[:, i], mask[:, i], update[:, i])
            prev_t = t_i
            states[i] = h
        stacked = torch.stack(states, dim=1) if (return_states and length) else None  # type: ignore[arg-type]
        return h, stacked

    def _forward_union(
        self, part: SeriesPart, backwards: bool, return_states: bool
    ) -> tuple[Tensor, Tensor | None]:
        times, values, mask = part.times, part.values, part.mask
        bsz, length = times.shape
        real = part.time_mask
        update = real & mask.any(dim=-1)
        h = times.new_zeros(bsz, self.hidden_dim)
        states = times.new_zeros(bsz, length, self.hidden_dim) if return_states else None
        if length == 0 or not bool(real.any()):
            return h, states
        union = torch.unique(times[real])
        if backwards:
            union = union.flip(0)
        last_idx = (part.lengths - 1).clamp_min(0)
        t_first = times[:, 0]
        t_last = times.gather(1, last_idx.unsqueeze(1)).squeeze(1)
        # position of the next observation to consume, per row, in the direction of travel
        ptr = last_idx.clone() if backwards else torch.zeros(bsz, dtype=torch.long, device=times.device)
        has_obs = part.lengths > 0
        started = torch.zeros(bsz, dtype=torch.bool, device=times.device)
        rows = torch.arange(bsz, device=times.device)
        prev_u: Tensor | None = None
        for u in union:
            if prev_u is not None and bool(started.any()):
                inside = (u >= t_first) if backwards else (u <= t_last)
                active = started & inside
                if bool(active.any()):
                    h_new = self.solver.solve(self.func, h, torch.stack([prev_u, u]))[:, -1]
                    h = torch.where(active.unsqueeze(-1), h_new, h)
            while True:  # consume every observation of every row at time u (handles duplicates)
                idx = ptr.clamp(0, max(length - 1, 0))
                in_range = (ptr >= 0) & (ptr < part.lengths) & has_obs
                match = in_range & (times[rows, idx] == u)
                if not bool(match.any()):
                    break
                h = self.gru(h, values[rows, idx], mask[rows, idx], match & update[rows, idx])
                if states is not None:
                    states[rows[match], idx[match]] = h[match]
                started = started | match
                ptr = ptr + (match.long() * (-1 if backwards else 1))
            prev_u = u
        if states is not None and not backwards:
            # padded entries hold the final state, as in the per-sample mode
            pad = ~real
            states = torch.where(pad.unsqueeze(-1), h.unsqueeze(1).expand_as(states), states)
        return h, states


class ODERNN(IrregularModel):
    """ODE-RNN forecaster (Lightning module).

    Args:
        num_channels: C.
        hidden_dim: hidden state size (the "GRU units").
        ode_hidden_dim / ode_layers: vector-field MLP width / hidden layers (3x50 in the paper).
        gru_input_dim: width of the GRU input network (0 = none).
        decoder_hidden_dim / decoder_layers: output MLP (hidden -> C).
        solver: ODE solver configuration (method, tolerances, adjoint).
        grid: ``"per_sample"`` (default) or ``"union"`` (reference batching, for benchmarks).
        remaining args: see :class:`~tsode.models.base.IrregularModel`.

    Loss: masked MSE on the observed target entries (normalized units).
    """

    def __init__(
        self,
        num_channels: int,
        hidden_dim: int = 50,
        ode_hidden_dim: int = 50,
        ode_layers: int = 3,
        gru_input_dim: int = 0,
        decoder_hidden_dim: int = 50,
        decoder_layers: int = 1,
        solver: SolverConfig | None = None,
        grid: str = "per_sample",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        scheduler: str = "none",
        scheduler_gamma: float = 0.5,
        scheduler_step_size: int = 10,
        channel_means: list[float] | None = None,
        channel_stds: list[float] | None = None,
    ) -> None:
        super().__init__(
            num_channels=num_channels,
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_gamma=scheduler_gamma,
            scheduler_step_size=scheduler_step_size,
            channel_means=channel_means,
            channel_stds=channel_stds,
        )
        self.save_hyperparameters()
        if grid not in GRID_MODES:
            raise ValueError(f"grid must be one of {GRID_MODES}, got {grid!r}")
        self.grid = grid
        self.solver = solver if solver is not None else default_solver()
        self.encoder = ODERNNEncoder(
            num_channels, hidden_dim, ode_hidden_dim, ode_layers, gru_input_dim, self.solver
        )
        self.decoder = MLPDecoder(hidden_dim, num_channels, decoder_hidden_dim, decoder_layers)

    def forecast(self, batch: IrregularBatch, times: Tensor) -> dict[str, Tensor]:
        """Predict at ``times (B, M)``: ``{"mean": (B, M, C)}`` (normalized units).

        Times after the last context observation are reached by evolving the final hidden state;
        a time inside the context uses the state after the last observation strictly *before*
        it (so an observation at exactly that time is not seen). Times before a row's first
        observation decode the initial state.
        """
        ctx = batch.context
        check_query_times(times, ctx.batch_size)
        h_last, states = self.encoder(ctx, backwards=False, return_states=True, grid=self.grid)
        t_last = ctx.times[:, -1] if ctx.times.shape[1] else times.new_zeros(ctx.batch_size)
        if times.shape[1] == 0:
            return {"mean": times.new_zeros(*times.shape, self.num_channels)}
        if bool((times > t_last.unsqueeze(1)).all()) or states is None:
            h = solve_from(self.solver, self.encoder.func, h_last, t_last, times, self.grid)
        else:
            idx = last_before(ctx.times, ctx.lengths, times, strict=True)  # (B, M) in [-1, L-1]
            before_any = idx < 0
            idx0 = idx.clamp_min(0)
            h_start = gather_times(states, idx0)
            h_start = torch.where(before_any.unsqueeze(-1), torch.zeros_like(h_start), h_start)
            t_start = torch.where(before_any, times, ctx.times.gather(1, idx0))
            bsz, m = times.shape
            h = solve_from(
                self.solver,
                self.encoder.func,
                h_start.reshape(bsz * m, -1),
                t_start.reshape(-1),
                times.reshape(bsz * m, 1),
                "per_sample",
            ).reshape(bsz, m, -1)
        return {"mean": self.decoder(h)}
