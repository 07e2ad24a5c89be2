"""Shared base: masked metrics, optimizer / scheduler configuration, NFE logging in a Trainer."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import make_batch

from tsode.models.base import IrregularModel, MaskedChannelError, masked_mse
from tsode.models.blocks import MaskedGRUCell, ODEFunc, distinct_times, last_before, solve_from
from tsode.models.odernn import ODERNN
from tsode.solvers import SolverConfig


def test_masked_channel_error_matches_manual_computation():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 4, 3, generator=gen)
    mask = torch.rand(2, 4, 3, generator=gen) < 0.6
    stds = [1.0, 2.0, 10.0]
    mse = MaskedChannelError(3, "mse", stds)
    mae = MaskedChannelError(3, "mae", stds)
    for half in (slice(0, 1), slice(1, 2)):  # accumulated over two updates
        mse.update(pred[half], target[half], mask[half])
        mae.update(pred[half], target[half], mask[half])
    diff = (pred - target) * torch.tensor(stds)
    torch.testing.assert_close(mse.compute(), diff[mask].square().mean())
    torch.testing.assert_close(mae.compute(), diff[mask].abs().mean())
    for c in range(3):
        torch.testing.assert_close(mse.per_channel()[c], diff[..., c][mask[..., c]].square().mean())


def test_masked_mse_ignores_nan_in_masked_entries():
    pred = torch.zeros(1, 2, 1)
    target = torch.tensor([[[1.0], [float("nan")]]])
    mask = torch.tensor([[[True], [False]]])
    assert masked_mse(pred, target, mask).item() == 1.0


def test_ode_func_small_init_and_counter():
    torch.manual_seed(0)
    f = ODEFunc(5, 50, 3)
    y = torch.randn(7, 5)
    out = f(torch.zeros(7), y)
    assert out.shape == (7, 5) and out.abs().max() < 0.1
    assert f.nfe == 1
    f.reset_nfe()
    assert f.nfe == 0


def test_masked_gru_cell_leaves_rows_without_update_untouched():
    torch.manual_seed(0)
    cell = MaskedGRUCell(3, 4, input_hidden_dim=5)
    h = torch.randn(2, 4)
    values = torch.randn(2, 3)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    out = cell(h, values, mask)
    assert torch.equal(out[1], h[1])
    assert not torch.equal(out[0], h[0])
    values2 = values.clone()
    values2[0, 1:] = 99.0  # masked-out channels of row 0
    torch.testing.assert_close(cell(h, values2, mask), out)


def test_last_before_strict_and_clamped_to_real_points():
    times = torch.tensor([[0.0, 1.0, 2.0, 2.0]])
    lengths = torch.tensor([3])
    query = torch.tensor([[-1.0, 0.0, 1.0, 1.5, 9.0]])
    assert last_before(times, lengths, query).tolist() == [[-1, -1, 0, 1, 2]]
    assert last_before(times, lengths, query, strict=False).tolist() == [[-1, 0, 1, 1, 2]]


def test_distinct_times_compacts_repeated_times_per_row():
    times = torch.tensor([[0.0, 0.0, 1.0, 1.0, 2.0], [0.5] * 5, [0.0, 1.0, 2.0, 2.0, 2.0]])
    grid, index = distinct_times(times)
    assert grid.tolist() == [[0.0, 1.0, 2.0], [0.5, 0.5, 0.5], [0.0, 1.0, 2.0]]
    assert torch.equal(grid.gather(1, index), times)
    single = torch.tensor([[3.0], [1.0]])
    grid, index = distinct_times(single)
    assert torch.equal(grid, single) and index.tolist() == [[0], [0]]


def test_solve_from_merges_repeated_times_same_values_fewer_adjoint_steps():
    """Repeated output times (a target at a context time) are solved once: same states and
    gradients as the solve on the full grid, fewer backward intervals for the adjoint."""
    torch.manual_seed(0)
    f = ODEFunc(3, 8, 2, init_std=0.5).double()
    y0 = torch.randn(2, 3, dtype=torch.float64)
    t0 = torch.tensor([0.0, 0.5], dtype=torch.float64)
    times = torch.tensor([[0.3, 0.3, 0.9, 0.9, 1.4, 1.4], [0.5, 0.8, 0.8, 1.1, 1.1, 1.1]],
                         dtype=torch.float64)
    weights = torch.randn(2, 6, 3, dtype=torch.float64)

    def run(merge: bool):
        solver = SolverConfig(method="dopri5", rtol=1e-9, atol=1e-10, adjoint=True)
        f.zero_grad()
        f.reset_nfe()
        if merge:
            ys = solve_from(solver, f, y0, t0, times)
        else:
            ys = solver.solve(f, y0, torch.cat([t0.unsqueeze(1), times], dim=1))[:, 1:]
        forward = f.nfe
        (ys * weights).sum().backward()
        return ys.detach(), [p.grad.clone() for p in f.parameters()], f.nfe - forward

    ys_m, grads_m, bwd_m = run(True)
    ys_f, grads_f, bwd_f = run(False)
    torch.testing.assert_close(ys_m, ys_f, rtol=1e-9, atol=1e-11)
    for a, b in zip(grads_m, grads_f):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert bwd_m < bwd_f


def test_constructor_validation():
    with pytest.raises(ValueError, match="scheduler"):
        ODERNN(num_channels=2, scheduler="bogus")
    with pytest.raises(ValueError, match="channel_stds"):
        ODERNN(num_channels=2, channel_stds=[1.0])
    with pytest.raises(NotImplementedError, match="forecast"):
        IrregularModel(num_channels=1).forecast(None, torch.zeros(1, 1))


@pytest.mark.parametrize("scheduler", ["none", "exponential", "step", "cosine", "plateau"])
def test_optimizer_and_scheduler(scheduler):
    model = ODERNN(num_channels=2, hidden_dim=4, lr=0.01, weight_decay=0.1, optimizer="adamw",
                   scheduler=scheduler)
    cfg = model.configure_optimizers()
    opt = cfg if scheduler == "none" else cfg["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.1
    if scheduler != "none":
        assert "scheduler" in cfg["lr_scheduler"]


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, batch, n):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.batch


@pytest.mark.parametrize("adjoint", [False, True])
def test_trainer_logs_metrics_and_nfe(adjoint, tmp_path):
    batch = make_batch([[0.0, 0.5, 1.0], [0.2, 0.9]], [[1.5, 2.0], [1.1]], num_channels=2, seed=0)
    loader = torch.utils.data.DataLoader(_Repeat(batch, 2), batch_size=None)
    model = ODERNN(num_channels=2, hidden_dim=4, ode_hidden_dim=8, ode_layers=1,
                   solver=SolverConfig(method="dopri5", rtol=1e-4, atol=1e-5, adjoint=adjoint),
                   channel_stds=[2.0, 3.0], channel_means=[0.0, 1.0])
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, loader, loader)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/nfe_forward", "train/nfe_backward", "val/mse", "val/mae", "val/mse_channel",
                "val/mse_orig", "val/mae_orig"):
        assert key in metrics, key
    assert metrics["train/nfe_forward"] > 0
    assert (metrics["train/nfe_backward"] > 0) == adjoint
    assert metrics["val/mse_orig"] > metrics["val/mse"]  # stds > 1
    test = trainer.test(model, loader, verbose=False)[0]
    assert "test/mse_orig/c0" in test and "test/mae_orig/c1" in test


def test_channel_weighted_mse_is_the_mean_of_per_channel_mses():
    """loss_weighting="channel": a rarely observed channel counts as much as a frequent one;
    channels with no entry are left out of the mean."""
    torch.manual_seed(0)
    pred, target = torch.randn(2, 50, 3), torch.randn(2, 50, 3)
    mask = torch.zeros(2, 50, 3, dtype=torch.bool)
    mask[:, :, 0] = True  # 100 entries
    mask[0, :3, 1] = True  # 3 entries
    # channel 2 never observed
    per_channel = [((pred - target)[..., c][mask[..., c]]).square().mean() for c in (0, 1)]
    expected = torch.stack(per_channel).mean()
    torch.testing.assert_close(masked_mse(pred, target, mask, "channel"), expected)
    pooled = ((pred - target)[mask]).square().mean()
    torch.testing.assert_close(masked_mse(pred, target, mask), pooled)
    assert not torch.isclose(expected, pooled)


def test_loss_weighting_is_validated():
    with pytest.raises(ValueError, match="loss_weighting"):
        ODERNN(num_channels=2, loss_weighting="variable")


def test_channel_reduction_metric_averages_per_channel_errors():
    """MaskedChannelError(reduction="channel") is the per-variable metric: the mean over the
    observed channels of each channel's own MSE (logged as ``<stage>/mse_channel``)."""
    metric = MaskedChannelError(3, "mse", reduction="channel")
    pred = torch.zeros(1, 4, 3)
    target = torch.tensor([[[1.0, 2.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    mask = torch.zeros(1, 4, 3, dtype=torch.bool)
    mask[..., 0] = True
    mask[0, 0, 1] = True
    metric.update(pred, target, mask)
    torch.testing.assert_close(metric.compute(), torch.tensor((1.0 + 4.0) / 2))
    pooled = MaskedChannelError(3, "mse")
    pooled.update(pred, target, mask)
    torch.testing.assert_close(pooled.compute(), torch.tensor(8.0 / 5))


def test_loss_channel_weights_scale_each_channels_loss_and_metric():
    """loss_channel_weights w multiply each channel's squared errors, in the loss and in
    <stage>/mse_channel: with w = (std/range)^2 both are the per-variable MSE in min-max units."""
    torch.manual_seed(0)
    pred, target = torch.randn(2, 30, 2), torch.randn(2, 30, 2)
    mask = torch.rand(2, 30, 2) < 0.6
    w = torch.tensor([0.25, 4.0])
    per_channel = [((pred - target)[..., c][mask[..., c]]).square().mean() * w[c] for c in (0, 1)]
    torch.testing.assert_close(masked_mse(pred, target, mask, "channel", w), torch.stack(per_channel).mean())
    model = ODERNN(num_channels=2, loss_channel_weights=[0.25, 4.0])
    metric = model.metrics["val_mse_channel"]
    metric.update(pred, target, mask)
    torch.testing.assert_close(metric.compute(), torch.stack(per_channel).mean())
    with pytest.raises(ValueError, match="loss_channel_weights"):
        ODERNN(num_channels=2, loss_channel_weights=[1.0, -1.0])
