"""The reference implementation's "union" batching of the ODE-RNN and the latent ODE, for
``benchmarks/models.py`` only.

Rubanova et al.'s code steps every series of a batch through the **union** of the batch's
time points (one shared 1-D time grid); tsode's models solve each series on its own times
only. The classes here compute the same function as the tsode models with the union grid, so
the benchmark can time both batchings of one model (``union`` rows, ``vs own union``):

* :func:`solve_union` -- :func:`tsode.models.blocks.solve_from` on the union over the batch
  of the elapsed times ``times - t0`` (the vector field must be autonomous: every row is
  shifted to start at 0);
* :class:`UnionODERNNEncoder` -- the ODE-RNN encoder stepping all rows through the union of
  the context times;
* :class:`UnionODERNN` / :class:`UnionLatentODE` -- the models with both swapped in (the
  latent ODE at ``anchor="first"``, the reference model: the union grid needs it). They take
  the models' arguments and load their state dicts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tsode.data.batch import SeriesPart
from tsode.models.blocks import gather_times
from tsode.models.latent_ode import LatentODE
from tsode.models.odernn import ODERNN, EncoderOutput, ODERNNEncodedModel, ODERNNEncoder
from tsode.solvers import SolverConfig


def solve_union(
    solver: SolverConfig, func: nn.Module, y0: Tensor, t0: Tensor, times: Tensor
) -> Tensor:
    """States ``(B, M, D)`` at ``times (B, M)`` from ``y0 (B, D)`` at ``t0 (B,)``: every row
    evaluated on the union over the batch of the elapsed times ``times - t0`` (``func`` must be
    autonomous)."""
    if times.shape[1] == 0:
        return y0.new_zeros(y0.shape[0], 0, y0.shape[1])
    rel = times - t0.unsqueeze(1)
    union = torch.unique(torch.cat([rel.new_zeros(1), rel.flatten()]))  # sorted, starts at 0
    ys = solver.solve(func, y0, union)  # (B, U, D)
    index = torch.searchsorted(union, rel.contiguous())
    return gather_times(ys, index)


class UnionODERNNEncoder(ODERNNEncoder):
    """:class:`ODERNNEncoder` stepping every row through the union of the batch's times."""

    def encode(self, part: SeriesPart, backwards: bool = False, h0: Tensor | None = None) -> EncoderOutput:
        """:meth:`ODERNNEncoder.encode` with every row stepped through the union of the batch's
        real observation times (rows outside their own span stay put)."""
        times, values, mask = part.times, part.values, part.mask
        bsz, length = times.shape
        real = part.time_mask
        update = real & mask.any(dim=-1)
        h = times.new_zeros(bsz, self.hidden_dim) if h0 is None else h0
        states = times.new_zeros(bsz, length, self.hidden_dim)
        priors = times.new_zeros(bsz, length, self.hidden_dim)
        if length == 0 or not bool(real.any()):
            return EncoderOutput(h, states, priors)
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
        step_hint: Tensor | None = None
        for u in union:
            if prev_u is not None and bool(started.any()):
                inside = (u >= t_first) if backwards else (u <= t_last)
                active = started & inside
                if bool(active.any()):
                    sol = self.solver.solve(
                        self.func, h, torch.stack([prev_u, u]), return_solution=True, first_step=step_hint
                    )
                    if sol.stats.next_step is not None:  # same step chaining as per-sample mode
                        step_hint = sol.stats.next_step.detach()
                    h = torch.where(active.unsqueeze(-1), sol.ys[:, -1], h)
            while True:  # consume every observation of every row at time u (handles duplicates)
                idx = ptr.clamp(0, max(length - 1, 0))
                in_range = (ptr >= 0) & (ptr < part.lengths) & has_obs
                match = in_range & (times[rows, idx] == u)
                if not bool(match.any()):
                    break
                priors = priors.index_put((rows[match], idx[match]), h[match])
                h = self.gru(h, values[rows, idx], mask[rows, idx], match & update[rows, idx])
                states = states.index_put((rows[match], idx[match]), h[match])
                started = started | match
                ptr = ptr + (match.long() * (-1 if backwards else 1))
            prev_u = u
        if not backwards:  # padded entries hold the final state, as in the per-sample mode
            pad = (~real).unsqueeze(-1)
            states = torch.where(pad, h.unsqueeze(1).expand_as(states), states)
            priors = torch.where(pad, h.unsqueeze(1).expand_as(priors), priors)
        return EncoderOutput(h, states, priors)


def _use_union_grid(model: ODERNNEncodedModel) -> None:
    """Swap the union-grid encoder and solve into a built model (same parameters)."""
    model.encoder.__class__ = UnionODERNNEncoder  # adds no state: only ``encode`` differs
    model.solve_states = solve_union  # type: ignore[method-assign]


class UnionODERNN(ODERNN):
    """:class:`~tsode.models.odernn.ODERNN` on the union grid (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _use_union_grid(self)


class UnionLatentODE(LatentODE):
    """:class:`~tsode.models.latent_ode.LatentODE` on the union grid (same arguments;
    ``anchor="first"`` only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.anchor != "first":
            raise ValueError("the union grid (reference batching) needs anchor='first'")
        _use_union_grid(self)


#: the union-grid class of each benchmarked model name
UNION_MODELS: dict[str, type[ODERNNEncodedModel]] = {"odernn": UnionODERNN, "latent_ode": UnionLatentODE}
