"""Tests for the Neural CDE forecaster (tsode.models.ncde)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import make_batch, select_rows

from tsode.data import LoaderConfig
from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.models import MODELS
from tsode.models.ncde import CDEFunc, NeuralCDE
from tsode.solvers import SolverConfig

SMALL = dict(
    hidden_dim=6, vf_width=8, vf_layers=1, vf_activation="tanh", decoder_width=8, decoder_layers=1
)
ADAPTIVE = SolverConfig(method="dopri5", rtol=1e-7, atol=1e-8)
FIXED = SolverConfig(method="rk4", step_size=0.25)


def build(num_channels: int = 3, solver: SolverConfig = ADAPTIVE, **extra) -> NeuralCDE:
    torch.manual_seed(0)
    model = NeuralCDE(num_channels=num_channels, solver=solver, **dict(SMALL, **extra))
    # Make the vector field non-trivial (the default init is deliberately small).
    with torch.no_grad():
        for p in model.cde_func.parameters():
            p.mul_(5.0)
    return model


def loss_and_pred(model: NeuralCDE, batch: IrregularBatch) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        loss = model.compute_loss(batch).loss
        pred = model.forecast(batch, batch.target.times).mean
    return loss, pred


def scramble_hidden(part: SeriesPart, gen: torch.Generator) -> SeriesPart:
    """Replace every masked-out or padded value with large noise (padded times are kept)."""
    hidden = ~(part.mask & part.time_mask.unsqueeze(-1))
    noise = 100.0 * torch.randn(part.values.shape, generator=gen, dtype=part.values.dtype)
    return replace(part, values=torch.where(hidden, noise, part.values))


def pad(part: SeriesPart, extra: int) -> SeriesPart:
    b, _, c = part.values.shape
    return SeriesPart(
        times=torch.cat([part.times, part.times[:, -1:].expand(b, extra)], dim=1),
        values=torch.cat(
            [part.values, torch.full((b, extra, c), 7.0, dtype=part.values.dtype)], dim=1
        ),
        mask=torch.cat([part.mask, torch.zeros(b, extra, c, dtype=torch.bool)], dim=1),
        lengths=part.lengths,
    )


def test_registered_as_ncde() -> None:
    assert MODELS["ncde"] is NeuralCDE


@pytest.mark.parametrize("interpolation", ["hermite", "linear", "natural"])
def test_forecast_shapes_and_times_inside_and_after(interpolation: str, forecast_batch) -> None:
    model = build(interpolation=interpolation)
    model.eval()
    times = torch.tensor([[0.3, 1.0, 2.2, 4.0]] * 3 + [[0.0, 0.1, 3.0, 5.0]])
    with torch.no_grad():
        out = model.forecast(forecast_batch, times)
        target = model.predict_step(forecast_batch, 0)
    assert out.mean.shape == (4, 4, 3)
    assert torch.isfinite(out.mean).all()
    assert target["forecast"].mean.shape == forecast_batch.target.values.shape
    assert target["series_ids"] == forecast_batch.series_ids


@pytest.mark.parametrize("solver", [ADAPTIVE, FIXED], ids=["dopri5", "rk4"])
@pytest.mark.parametrize("interpolation", ["hermite", "natural"])
def test_masked_and_padded_values_are_invisible(solver, interpolation, forecast_batch) -> None:
    model = build(solver=solver, interpolation=interpolation)
    loss, pred = loss_and_pred(model, forecast_batch)
    gen = torch.Generator().manual_seed(5)
    scrambled = replace(
        forecast_batch,
        context=scramble_hidden(forecast_batch.context, gen),
        target=scramble_hidden(forecast_batch.target, gen),
    )
    loss2, pred2 = loss_and_pred(model, scrambled)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=0)
    torch.testing.assert_close(pred2, pred, rtol=0, atol=0)
    # The test can fail: observed values do matter.
    ctx = forecast_batch.context
    shifted = replace(forecast_batch, context=replace(ctx, values=ctx.values + ctx.mask * 1.0))
    _, pred3 = loss_and_pred(model, shifted)
    assert not torch.allclose(pred3, pred, atol=1e-4)


@pytest.mark.parametrize("solver", [ADAPTIVE, FIXED], ids=["dopri5", "rk4"])
def test_padding_width_is_invisible(solver, forecast_batch) -> None:
    model = build(solver=solver)
    loss, pred = loss_and_pred(model, forecast_batch)
    padded = replace(
        forecast_batch, context=pad(forecast_batch.context, 3), target=pad(forecast_batch.target, 2)
    )
    loss2, pred2 = loss_and_pred(model, padded)
    torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred2[:, : pred.shape[1]], pred, rtol=1e-5, atol=1e-6)


def test_batch_order_invariance(forecast_batch) -> None:
    model = build()
    perm = [2, 0, 3, 1]
    loss, pred = loss_and_pred(model, forecast_batch)
    loss2, pred2 = loss_and_pred(model, select_rows(forecast_batch, perm))
    torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred2, pred[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver", [ADAPTIVE, FIXED], ids=["dopri5", "rk4"])
def test_gradients_reach_every_parameter(solver, forecast_batch) -> None:
    model = build(solver=solver)
    model.train()
    model.compute_loss(forecast_batch).loss.backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert not missing, f"no gradient for {missing}"


def _grads(
    batch: IrregularBatch, solver: SolverConfig, **extra
) -> tuple[dict[str, torch.Tensor], int, int]:
    model = build(num_channels=batch.context.num_channels, solver=solver, **extra).double()
    model.train()
    model.reset_nfe()
    loss = model.compute_loss(batch).loss
    forward_nfe = model.total_nfe()
    loss.backward()
    backward_nfe = model.total_nfe() - forward_nfe
    return {n: p.grad.clone() for n, p in model.named_parameters()}, forward_nfe, backward_nfe


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_adjoint_matches_backprop(method: str, forecast_batch64) -> None:
    options = dict(rtol=1e-10, atol=1e-12) if method == "dopri5" else dict(step_size=0.01)
    backprop, fwd, bwd = _grads(forecast_batch64, SolverConfig(method=method, **options))
    assert fwd > 0 and bwd == 0
    adjoint, fwd_a, bwd_a = _grads(
        forecast_batch64, SolverConfig(method=method, adjoint=True, **options)
    )
    assert fwd_a > 0 and bwd_a > 0, "the adjoint must evaluate the vector fields backwards"
    assert backprop.keys() == adjoint.keys()
    # rk4 adjoint solves the adjoint ODE with its own discretisation: agreement to O(h^4).
    rtol, atol = (1e-6, 1e-9) if method == "dopri5" else (1e-4, 1e-7)
    for key in backprop:
        torch.testing.assert_close(adjoint[key], backprop[key], rtol=rtol, atol=atol, msg=key)


@pytest.mark.parametrize("interpolation", ["hermite", "linear"])
def test_predictions_inside_context_are_causal(interpolation: str) -> None:
    """A prediction at a knot t_k depends on the context up to t_k only (Hermite/linear paths;
    between two knots the path already heads for the next observation)."""
    batch = make_batch([[0.0, 0.4, 1.0, 1.5, 2.3, 3.0]] * 2, [[3.5]] * 2, num_channels=2, seed=3)
    model = build(num_channels=2, interpolation=interpolation)
    model.eval()
    query = torch.tensor([[0.2, 0.7, 1.0, 1.0], [0.0, 0.4, 0.9, 1.0]])
    ctx = batch.context
    later = (ctx.times > 1.0).unsqueeze(-1) & ctx.mask
    changed = replace(
        batch, context=replace(ctx, values=torch.where(later, ctx.values + 3.0, ctx.values))
    )
    with torch.no_grad():
        base = model.forecast(batch, query).mean
        after = model.forecast(changed, query).mean
        future = model.forecast(batch, torch.tensor([[3.5]] * 2)).mean
        future_changed = model.forecast(changed, torch.tensor([[3.5]] * 2)).mean
    torch.testing.assert_close(after, base, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(future_changed, future, atol=1e-4)
    # The natural cubic spline looks ahead, so the same change is visible before t = 1.0.
    natural = build(num_channels=2, interpolation="natural")
    natural.eval()
    with torch.no_grad():
        a = natural.forecast(batch, query).mean
        b = natural.forecast(changed, query).mean
    assert not torch.allclose(a, b, atol=1e-4)


def test_state_is_continuous_at_the_end_of_the_context(forecast_batch) -> None:
    """Queries just before / at / just after T meet: CDE state hands over to the ODE decoder.
    (Without the persistence term, which by design jumps when the observation at T becomes
    "strictly before" the query.)"""
    model = build(solver=SolverConfig(method="dopri5", rtol=1e-9, atol=1e-10), persistence=False).double()
    model.eval()
    batch = replace(
        forecast_batch,
        context=SeriesPart(
            forecast_batch.context.times.double(),
            forecast_batch.context.values.double(),
            forecast_batch.context.mask,
            forecast_batch.context.lengths,
        ),
    )
    end = batch.context.times.gather(1, (batch.context.lengths - 1).unsqueeze(1))
    eps = 1e-6
    query = torch.cat([end - eps, end, end + eps], dim=1)
    with torch.no_grad():
        out = model.forecast(batch, query).mean
    torch.testing.assert_close(out[:, 0], out[:, 1], rtol=0, atol=1e-4)
    torch.testing.assert_close(out[:, 2], out[:, 1], rtol=0, atol=1e-4)


def test_in_context_queries_match_the_encoder_states(forecast_batch) -> None:
    """Querying at the knots reads out the CDE solution at the knots."""
    model = build()
    model.eval()
    ctx = forecast_batch.context
    with torch.no_grad():
        path = model.make_path(ctx)
        states = model.encode(path, path.grid_points)
        baseline, _ = model.persistence(ctx, ctx.times, states)
        expected = model.readout(states) + baseline
        got = model.forecast(forecast_batch, ctx.times).mean
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_cde_vector_field_is_f_of_h_times_path_derivative(forecast_batch) -> None:
    model = build()
    path = model.make_path(forecast_batch.context)
    func: CDEFunc = model.cde_func
    t = path.interval.mean(dim=1)
    h = torch.randn(4, 6)
    expected = torch.einsum("bhd,bd->bh", func.matrix(h), path.derivative(t))
    torch.testing.assert_close(func.bind(path)(t, h), expected)
    assert func.matrix(h).abs().max() <= 1.0  # tanh-bounded
    assert func.nfe == 1


def test_bad_inputs_are_rejected(forecast_batch) -> None:
    with pytest.raises(ValueError, match="interpolation"):
        NeuralCDE(num_channels=3, interpolation="quadratic")
    with pytest.raises(ValueError, match="fill"):
        NeuralCDE(num_channels=3, fill="bfill")
    model = build(num_channels=2)
    with pytest.raises(ValueError, match="num_channels=2"):
        model.forecast(forecast_batch, forecast_batch.target.times)
    model = build()
    with pytest.raises(ValueError, match="non-decreasing"):
        model.forecast(forecast_batch, torch.tensor([[2.0, 1.0]] * 4))
    with pytest.raises(ValueError, match="shape"):
        model.forecast(forecast_batch, torch.ones(3, 2))


def test_checkpoint_round_trip(tmp_path, forecast_batch) -> None:
    import lightning as L

    model = build(solver=FIXED, interpolation="natural", lr=3e-3)
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=1,
    )
    trainer.strategy.connect(model)
    path = tmp_path / "ncde.ckpt"
    trainer.save_checkpoint(path)
    # hparams hold a SolverConfig dataclass, so this is not a weights-only checkpoint.
    loaded = NeuralCDE.load_from_checkpoint(path, weights_only=False)
    assert loaded.solver == FIXED and loaded.interpolation == "natural"
    _, pred = loss_and_pred(model, forecast_batch)
    _, pred2 = loss_and_pred(loaded, forecast_batch)
    torch.testing.assert_close(pred2, pred)


def test_lightning_fit_logs_loss_and_adjoint_nfe(tmp_path) -> None:
    import lightning as L

    from tsode.data import SyntheticICUDataModule

    data = SyntheticICUDataModule(num_series=12, min_obs=5, max_obs=10, loader=LoaderConfig(batch_size=4), seed=0)
    model = NeuralCDE(
        num_channels=5,
        hidden_dim=8,
        vf_width=8,
        decoder_width=8,
        solver=SolverConfig(method="rk4", step_size=1.0, adjoint=True),
    )
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/mse"])
    assert model.last_nfe_forward > 0 and model.last_nfe_backward > 0


# ---------------------------------------------------------------- lean, packed CDE solves
def test_fused_field_contraction_gradients() -> None:
    """The fused last layer + tanh + contraction with X' has the gradients of the plain ops."""
    from tsode.models.ncde import _FieldTimesPath

    gen = torch.Generator().manual_seed(0)
    a, w, b, v = (
        torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
        for shape in [(4, 5), (3 * 6, 5), (3 * 6,), (4, 6)]
    )
    plain = torch.bmm(torch.tanh(a @ w.t() + b).view(4, 3, 6), v.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(_FieldTimesPath.apply(a, w, b, v, 3), plain)
    assert torch.autograd.gradcheck(lambda *x: _FieldTimesPath.apply(*x, 3), (a, w, b, v))


def test_field_keeps_no_hidden_by_channels_tensor_for_backward(forecast_batch) -> None:
    """Backprop through the CDE solve keeps (B, width + D)-sized tensors per evaluation, never
    the (B, H * D) matrix f(h) (the bulk of the training memory on PhysioNet)."""
    model = build(solver=FIXED)
    batch_size = forecast_batch.context.batch_size
    hd = model.hidden_dim * model.path_channels
    shapes: list[tuple[int, ...]] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        model.compute_loss(forecast_batch).loss.backward()
    assert model.cde_func.nfe > 0 and shapes
    matrix_shapes = ((batch_size, hd), (batch_size, model.hidden_dim, model.path_channels))
    field_sized = [s for s in shapes if s in matrix_shapes]
    assert not field_sized


def test_packed_step_grid() -> None:
    from tsode.models.ncde import packed_step_grid

    grid = torch.tensor([[0.0, 0.0, 0.5, 2.5, 2.5], [1.0, 1.2, 1.2, 1.4, 1.4]])
    packed, position = packed_step_grid(grid, 1.0)
    # Row 0: 0 -> 0.5 (1 step), 0.5 -> 2.5 (2 steps of 1.0); row 1: two steps, then its end.
    torch.testing.assert_close(packed, torch.tensor([[0.0, 0.5, 1.5, 2.5], [1.0, 1.2, 1.4, 1.4]]))
    assert torch.equal(packed.gather(1, position), grid)
    packed, position = packed_step_grid(grid, None)  # distinct times only
    torch.testing.assert_close(packed, torch.tensor([[0.0, 0.5, 2.5], [1.0, 1.2, 1.4]]))
    assert torch.equal(packed.gather(1, position), grid)


@pytest.mark.parametrize("step_size", [None, 0.3])
def test_packed_fixed_step_encoder_is_the_plain_solve(step_size, forecast_batch) -> None:
    """Packing each row's steps to the left changes the cost, not the result: the encoder equals
    one solver call on the raw knot + query grid (same equal sub-steps per interval)."""
    solver = SolverConfig(method="rk4", step_size=step_size)
    model = build(solver=solver).double()
    ctx = forecast_batch.context
    path = model.make_path(replace(ctx, times=ctx.times.double(), values=ctx.values.double()))
    knots = path.grid_points
    gen = torch.Generator().manual_seed(1)
    fraction = torch.rand(knots.shape[0], 5, dtype=torch.float64, generator=gen)
    queries = knots[:, :1] + fraction * (path.interval[:, 1:] - knots[:, :1])
    grid, _ = torch.sort(torch.cat([knots, queries], dim=1), dim=1)
    got = model.encode(path, grid)
    h0 = model.initial(path.evaluate(path.interval[:, 0]))
    expected = solver.solve(model.cde_func.bind(path), h0, grid)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_adaptive_solve_takes_left_path_derivative_at_its_end_knot() -> None:
    """With linear paths the slope jumps at a knot; a solve over [t_k, t_{k+1}] must use the
    slope of that interval at t_{k+1} (not the next one), so nothing after t_{k+1} is read."""
    batch = make_batch([[0.0, 1.0, 2.0]], [[3.0]], num_channels=1, seed=0)
    model = build(num_channels=1, interpolation="linear")
    path = model.make_path(batch.context)
    t = torch.tensor([1.0])
    left = path.derivative(t, path.locate(torch.tensor([0.5])))
    right = path.derivative(t)
    assert not torch.allclose(left, right)
    torch.testing.assert_close(left, path.derivative(torch.tensor([0.5])))
    with pytest.raises(ValueError, match="interval"):
        path.derivative(torch.ones(1, 2), torch.zeros(1, dtype=torch.long))


def test_packed_fixed_step_decoder_is_the_plain_solve() -> None:
    solver = SolverConfig(method="rk4", step_size=0.3)
    model = build(solver=solver).double()
    grid = torch.tensor([[1.0, 1.0, 1.7, 3.0, 3.0], [0.5, 0.6, 0.7, 0.8, 2.0]], dtype=torch.float64)
    h = torch.randn(2, model.hidden_dim, dtype=torch.float64)
    expected = solver.solve(model.decoder_func, h, grid)
    torch.testing.assert_close(model.decode(h, grid), expected, rtol=1e-12, atol=1e-12)


def test_adaptive_adjoint_matches_backprop_on_linear_paths(forecast_batch64) -> None:
    """Restarted adaptive solves on a path whose slope jumps at every knot: each solve's adjoint
    backward pass (run after all forward solves) evaluates the field bound to that solve."""
    solver = SolverConfig(method="dopri5", rtol=1e-10, atol=1e-12)
    backprop, _, _ = _grads(forecast_batch64, solver, interpolation="linear")
    adjoint, _, bwd = _grads(forecast_batch64, replace(solver, adjoint=True), interpolation="linear")
    assert bwd > 0
    for key in backprop:
        torch.testing.assert_close(adjoint[key], backprop[key], rtol=1e-6, atol=1e-9, msg=key)


def test_input_clip_bounds_the_path_values_and_leaves_small_values(forecast_batch) -> None:
    ctx = forecast_batch.context
    spiked = SeriesPart(ctx.times, ctx.values.clone(), ctx.mask, ctx.lengths)
    spiked.values[0, 0, :] = 50.0  # a recording error of 50 standard deviations
    clipped = build(input_clip=5.0, include_time=False, include_counts=False)
    plain = build(include_time=False, include_counts=False)
    x_clipped = clipped.make_path(spiked).evaluate(ctx.times)
    x_plain = plain.make_path(spiked).evaluate(ctx.times)
    assert x_plain.abs().max() >= 50.0
    assert x_clipped.abs().max() <= 5.0
    # values well inside the clip pass almost unchanged (5 tanh(x / 5) = x - x^3 / 75 + ...)
    small = SeriesPart(ctx.times, 0.1 * ctx.values, ctx.mask, ctx.lengths)
    torch.testing.assert_close(
        clipped.make_path(small).evaluate(ctx.times), plain.make_path(small).evaluate(ctx.times),
        rtol=0, atol=2e-3,
    )
    with pytest.raises(ValueError, match="input_clip"):
        build(input_clip=0.0)
    with pytest.raises(ValueError, match="include_counts"):
        build(include_counts="sqrt")


@pytest.mark.parametrize("interpolation", ["linear", "hermite"])
def test_fixed_steps_ending_on_a_knot_use_the_interval_they_came_from(interpolation: str) -> None:
    """The knots are jump times of the solve: rk4 with steps ending on each knot integrates a
    linear path's piecewise-constant derivative as a tight adaptive solve does (read from the
    next interval, the last stage of every step would be off by the slope change)."""
    batch = make_batch(
        [[0.0, 0.7, 1.9, 2.2, 4.0], [0.3, 1.0, 1.5]],
        [[1.0, 4.5, 5.0], [0.5, 1.2, 2.0]],
        dtype=torch.float64,
    )
    preds = {}
    for name, solver in (
        ("rk4", SolverConfig(method="rk4", step_size=0.05)),
        ("tight", SolverConfig(method="dopri5", rtol=1e-10, atol=1e-12)),
    ):
        model = build(solver=solver, interpolation=interpolation).double()
        preds[name] = loss_and_pred(model, batch)[1]
    torch.testing.assert_close(preds["rk4"], preds["tight"], rtol=0, atol=1e-4)
