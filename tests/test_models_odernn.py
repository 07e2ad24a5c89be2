"""ODE-RNN encoder semantics: per-series evolution, masked updates, direction, causality."""

from __future__ import annotations

from dataclasses import replace

import torch
from conftest import make_batch, make_part
from test_models_properties import build

from tsode.data.batch import SeriesPart
from tsode.models.odernn import ODERNNEncoder
from tsode.solvers import SolverConfig, odeint

SOLVER = SolverConfig(method="dopri5", rtol=1e-8, atol=1e-9)


def part(times, values, mask) -> SeriesPart:
    t = torch.tensor(times, dtype=torch.float64)
    return SeriesPart(
        times=t,
        values=torch.tensor(values, dtype=torch.float64),
        mask=torch.tensor(mask),
        lengths=torch.tensor([len(r) for r in times]),
    )


def encoder() -> ODERNNEncoder:
    torch.manual_seed(0)
    enc = ODERNNEncoder(num_channels=2, hidden_dim=4, ode_hidden_dim=8, ode_layers=2, solver=SOLVER)
    return enc.double()


def flow(enc, h, t0, t1):
    return odeint(enc.func, h, torch.tensor([[t0, t1]] * h.shape[0], dtype=h.dtype), rtol=1e-10, atol=1e-10)[:, -1]


def test_forward_encoding_by_hand():
    enc = encoder()
    p = part([[0.5, 1.5, 2.0]], [[[1.0, 0.0], [0.0, -1.0], [2.0, 3.0]]],
             [[[True, False], [False, False], [True, True]]])  # middle point: nothing observed
    h, states = enc(p, return_states=True)
    h0 = torch.zeros(1, 4, dtype=torch.float64)
    x = p.values[:, 0]
    m = p.mask[:, 0]
    h1 = enc.gru(h0, x, m)
    h2 = flow(enc, h1, 0.5, 1.5)  # no update at 1.5 (all channels missing)
    h3 = enc.gru(flow(enc, h2, 1.5, 2.0), p.values[:, 2], p.mask[:, 2])
    torch.testing.assert_close(states[:, 1], h2, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(h, h3, rtol=1e-6, atol=1e-8)


def test_backward_encoding_by_hand():
    enc = encoder()
    p = part([[0.5, 1.5, 1.5]], [[[1.0, 0.0], [0.0, -1.0], [0.0, 0.0]]],
             [[[True, False], [False, True], [False, False]]])  # last column is padding
    p = replace(p, lengths=torch.tensor([2]))
    h, _ = enc(p, backwards=True)
    h0 = torch.zeros(1, 4, dtype=torch.float64)
    h1 = enc.gru(h0, p.values[:, 1], p.mask[:, 1])
    expected = enc.gru(flow(enc, h1, 1.5, 0.5), p.values[:, 0], p.mask[:, 0])
    torch.testing.assert_close(h, expected, rtol=1e-6, atol=1e-8)


def test_rows_evolve_on_their_own_grids():
    """A row's encoding does not depend on which other rows share the batch."""
    enc = encoder()
    a = part([[0.0, 3.0, 7.0]], [[[1.0, 2.0], [0.5, 0.0], [0.0, 1.0]]],
             [[[True, True], [True, False], [False, True]]])
    b = part([[0.2, 0.4, 0.4]], [[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]],
             [[[True, False], [True, True], [False, False]]])
    b = replace(b, lengths=torch.tensor([2]))
    both = SeriesPart(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in ("times", "values", "mask", "lengths")))
    h_a, _ = enc(a)
    h_b, _ = enc(b)
    h_both, _ = enc(both)
    torch.testing.assert_close(h_both, torch.cat([h_a, h_b]), rtol=1e-6, atol=1e-8)


def test_no_solver_calls_when_nothing_moves():
    enc = encoder()
    p = part([[1.0, 1.0]], [[[1.0, 0.0], [0.0, 0.0]]], [[[True, False], [False, False]]])
    p = replace(p, lengths=torch.tensor([1]))
    enc.func.reset_nfe()
    enc(p)
    assert enc.func.nfe == 0


def test_forecast_inside_context_does_not_see_the_value_it_predicts():
    batch = make_batch([[0.0, 1.0, 2.0, 3.0]], [[4.0]], num_channels=3, seed=2)
    model = build("odernn")
    model.eval()
    times = torch.tensor([[1.0, 2.0, 2.5]])
    with torch.no_grad():
        pred = model.forecast(batch, times).mean
        ctx = batch.context
        values = ctx.values.clone()
        values[0, 2] += 5.0 * ctx.mask[0, 2]  # change the observation at t = 2.0
        changed = replace(batch, context=replace(ctx, values=values))
        pred2 = model.forecast(changed, times).mean
    torch.testing.assert_close(pred2[:, :2], pred[:, :2])  # t=1.0, 2.0 only see earlier points
    assert not torch.allclose(pred2[:, 2], pred[:, 2])  # t=2.5 sees it


def test_queries_at_context_times_use_the_state_before_that_update(forecast_batch):
    """Fast path (prior states from the encoder loop) == evolving from the previous observation."""
    model = build("odernn")
    model.eval()
    ctx = forecast_batch.context
    with torch.no_grad():
        fast = model.states_at(forecast_batch, ctx.times)
        enc = model.encoder.encode(ctx)
        expected = torch.empty_like(fast)
        for b in range(ctx.batch_size):
            for j in range(ctx.times.shape[1]):
                t = ctx.times[b, j]
                earlier = (ctx.times[b, : int(ctx.lengths[b])] < t).nonzero().flatten()
                if len(earlier) == 0:
                    h = torch.zeros(1, enc.h.shape[1])
                else:
                    i = int(earlier[-1])
                    h = odeint(model.encoder.func, enc.states[b, i : i + 1], torch.stack([ctx.times[b, i], t]),
                               rtol=1e-6, atol=1e-7)[:, -1]
                expected[b, j] = h[0]
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-5)
    # and the forecast decodes exactly those states
    torch.testing.assert_close(model.forecast(forecast_batch, ctx.times).mean,
                               model.readout(ctx, ctx.times, fast).mean)


def test_rows_that_do_not_move_are_not_solved_and_cost_no_adjoint_steps():
    """An interval's solve gets only the rows that move: a short (or padded) row changes
    neither the other rows' states nor the adjoint's backward NFE (a zero-length row in the
    solve used to force the adjoint's batch-shared first backward step down to 1e-6)."""
    solver = SolverConfig(method="dopri5", rtol=1e-3, atol=1e-4, adjoint=True)
    long_row = [0.0, 0.4, 1.1, 1.5, 2.6, 3.0]

    def run(times):
        torch.manual_seed(0)
        enc = ODERNNEncoder(num_channels=2, hidden_dim=4, ode_hidden_dim=8, ode_layers=2,
                            solver=solver).double()
        p = make_part(times, 2, torch.Generator().manual_seed(0), dtype=torch.float64)
        rows_seen = []
        forward = enc.func.forward
        enc.func.forward = lambda t, y: (rows_seen.append(y.shape[0]), forward(t, y))[1]
        h, _ = enc(p)
        nfe = enc.func.nfe
        h[0].sum().backward()
        grads = [q.grad.clone() for q in enc.func.parameters()]
        return h.detach(), grads, enc.func.nfe - nfe, rows_seen

    h1, g1, bwd1, _ = run([long_row])
    h2, g2, bwd2, seen2 = run([long_row, [0.2]])
    assert set(seen2) == {1}, "only the moving row is handed to the solver"
    torch.testing.assert_close(h2[:1], h1, rtol=1e-12, atol=1e-14)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert bwd2 == bwd1 > 0
