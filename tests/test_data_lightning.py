"""DataModules inside a Lightning Trainer: fit/validate/predict, epochs, DDP sampler injection,
checkpointed data state."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from tsode.data import (
    IrregularBatch,
    LoaderConfig,
    SyntheticICUDataModule,
    TableDataModule,
    TaskConfig,
)
from tsode.data.sampler import LengthBucketSampler


class LastValueModel(L.LightningModule):
    """Predicts each channel's last observed context value (plus a learned bias)."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))
        self.seen_ids: list[list] = []

    def _predict(self, batch: IrregularBatch) -> torch.Tensor:
        ctx = batch.context
        weights = ctx.mask.float()
        # last observed value per channel: cumulative max over observed positions
        pos = torch.arange(ctx.times.shape[1]).view(1, -1, 1).expand_as(weights)
        last = torch.where(ctx.mask, pos, -1).amax(1)  # (B, C)
        value = ctx.values.gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1)
        value = torch.where(last >= 0, value, torch.zeros_like(value))
        return (value + self.bias).unsqueeze(1).expand_as(batch.target.values)

    def training_step(self, batch: IrregularBatch, _):
        self.seen_ids.append(list(batch.series_ids))
        pred = self._predict(batch)
        m = batch.target.mask
        return ((pred - batch.target.values)[m] ** 2).mean()

    def validation_step(self, batch: IrregularBatch, _):
        pred = self._predict(batch)
        m = batch.target.mask
        self.log("val/mse", ((pred - batch.target.values)[m] ** 2).mean())

    def predict_step(self, batch: IrregularBatch, _):
        return {"mean": self._predict(batch), "ids": batch.series_ids}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def test_fit_validate_predict_and_epoch_reshuffle(tmp_path) -> None:
    dm = SyntheticICUDataModule(num_series=60, loader=LoaderConfig(batch_size=8), seed=1)
    model = LastValueModel(dm.num_channels)
    trainer = _trainer(max_epochs=2, default_root_dir=tmp_path, enable_checkpointing=True)
    trainer.fit(model, datamodule=dm)
    n_train = len(dm.datasets["train"])
    per_epoch = -(-n_train // 8)
    assert len(model.seen_ids) == 2 * per_epoch
    first = [i for b in model.seen_ids[:per_epoch] for i in b]
    second = [i for b in model.seen_ids[per_epoch:] for i in b]
    assert sorted(first) == sorted(second) == sorted(dm.datasets["train"].series_ids)
    assert first != second  # set_epoch reshuffles the buckets
    preds = trainer.predict(model, datamodule=dm)
    ids = [i for p in preds for i in p["ids"]]
    assert sorted(ids) == sorted(dm.datasets["test"].series_ids)
    # the fitted data state is stored in the checkpoint and restores the same normalizer
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    state = ckpt[type(dm).__qualname__]
    other = SyntheticICUDataModule(num_series=60, loader=LoaderConfig(batch_size=8), seed=1, noise_std=0.5)
    other.load_state_dict(state)
    other.setup()
    assert other.normalizer == dm.normalizer


def test_loaded_state_replaces_refitting() -> None:
    df = pd.DataFrame(
        {
            "series_id": np.repeat(np.arange(10), 4),
            "time": np.tile(np.arange(4.0), 10),
            "x": np.arange(40.0),
        }
    )
    dm = TableDataModule(df, task=TaskConfig(cutoff=1.5))
    dm.setup()
    shifted = TableDataModule(df.assign(x=df.x + 1000.0), task=TaskConfig(cutoff=1.5))
    shifted.load_state_dict(dm.state_dict())
    assert shifted.normalizer == dm.normalizer
    batch = next(iter(shifted.val_dataloader()))
    assert (batch.context.values[batch.context.mask] > 10).all()  # normalized with old stats


def test_ddp_sampler_injection_partitions_buckets() -> None:
    dm = SyntheticICUDataModule(num_series=80, loader=LoaderConfig(batch_size=8), seed=2)
    dm.setup()
    ds = dm.datasets["train"]
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    seen = []
    for rank in range(2):
        dist = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        ranked = _update_dataloader(loader, dist)
        batches = list(ranked)
        assert all(isinstance(b, IrregularBatch) for b in batches)
        assert len(batches) == len(ranked.batch_sampler) == -(-len(dist) // 8)
        seen += [i for b in batches for i in b.series_ids]
    assert set(seen) == set(ds.series_ids)  # each rank buckets its own share
    assert len(seen) == 2 * len(dist)


@pytest.mark.parametrize("bucketing", [True, False])
@pytest.mark.parametrize("num_series", [80, 81])
def test_ddp_two_ranks_disjoint_complete_and_seeded(bucketing: bool, num_series: int) -> None:
    """Two simulated DDP ranks, each given Lightning's injected DistributedSampler with a
    *different* seed (as when ranks seed differently): the split between ranks comes from the
    data module's seed, so the shares are disjoint, cover every series and reshuffle per
    epoch. Training shares are padded like DistributedSampler's (equal batch counts);
    validation shares are not (every series scored once, batch counts differ by at most one)."""
    dm = SyntheticICUDataModule(num_series=num_series, loader=LoaderConfig(batch_size=8, bucketing=bucketing), seed=2)
    dm.setup()
    for split, shuffle in (("train", True), ("val", False)):
        ds = dm.datasets[split]
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
        orders = []
        for epoch in range(2):
            shares, counts = [], []
            for rank in range(2):
                dist = DistributedSampler(
                    ds, num_replicas=2, rank=rank, shuffle=shuffle, seed=100 * rank + 7
                )
                ranked = _update_dataloader(loader, dist)
                _set_sampler_epoch(ranked, epoch)
                batches = list(ranked)
                counts.append(len(batches))
                assert len(batches) == len(ranked.batch_sampler)
                shares.append([i for b in batches for i in b.series_ids])
            n = len(ds)
            both = shares[0] + shares[1]
            assert set(both) == set(ds.series_ids)  # complete coverage
            if shuffle:  # training: DDP needs the same number of steps on every rank
                assert counts[0] == counts[1]
                padded = -(-n // 2) * 2
                assert len(both) == padded  # disjoint apart from the padding repeats
                assert len(set(shares[0]) & set(shares[1])) <= padded - n
            else:  # evaluation: each series exactly once
                assert sorted(both) == sorted(ds.series_ids)
                assert abs(counts[0] - counts[1]) <= 1
            orders.append(shares)
        if shuffle:
            assert orders[0] != orders[1]  # set_epoch reshuffles
        else:
            assert orders[0] == orders[1]


@pytest.mark.parametrize(
    ("n", "shuffle", "pad_ranks", "sizes"),
    [
        (5, False, None, [3, 2]),  # evaluation: every item once, unequal shares
        (5, True, None, [3, 3]),  # training: padded to equal shares
        (5, False, True, [3, 3]),  # padding asked for explicitly
        (1, False, None, [1, 1]),  # fewer items than ranks: padded, no rank left without a batch
    ],
)
def test_ddp_rank_shares_padded_for_training_only(
    n: int, shuffle: bool, pad_ranks: bool | None, sizes: list[int]
) -> None:
    shares = []
    for rank in range(2):
        dist = DistributedSampler(list(range(n)), num_replicas=2, rank=rank, shuffle=False)
        sampler = LengthBucketSampler(
            np.arange(n) + 1, 2, shuffle=shuffle, seed=0, sampler=dist, pad_ranks=pad_ranks
        )
        batches = list(sampler)
        assert len(batches) == len(sampler) == -(-sizes[rank] // 2)
        assert sampler.rank_size() == sizes[rank]
        shares.append(sorted(i for b in batches for i in b))
    assert [len(s) for s in shares] == sizes
    assert set(shares[0]) | set(shares[1]) == set(range(n))
    if sum(sizes) == n:
        assert not set(shares[0]) & set(shares[1])


def test_unbucketed_shuffle_is_seeded_not_global_rng() -> None:
    def order(seed: int) -> list:
        dm = SyntheticICUDataModule(num_series=40, loader=LoaderConfig(batch_size=4, bucketing=False), seed=seed)
        torch.manual_seed(np.random.randint(1 << 30))  # the global RNG must not matter
        return [i for b in dm.train_dataloader() for i in b.series_ids]

    assert order(3) == order(3)
    assert order(3) != order(4)
