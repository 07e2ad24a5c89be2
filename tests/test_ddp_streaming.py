"""A real two-process DDP fit on CPU (gloo) on :class:`StreamingTableDataModule`: the
series each rank reads from the cache.

Lightning injects a ``DistributedSampler`` (num_replicas=2, rank=0/1) into the module's
``LengthBucketSampler``, which splits one seeded permutation of the training split between
the ranks. Over each epoch, the series a rank's batches read from the cache (the cache's own
read log, so only what was read counts) are exactly that rank's share; the two shares are
disjoint except for the padding repeats of ``DistributedSampler`` (the split padded to a
multiple of 2 by repeating its first items, so both ranks make the same number of optimizer
steps), and together they cover the training split; the shares change between epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_ddp_real import run_tsode_python

SCRIPT = '''
import json
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np

from tsode.data import StreamingTableDataModule
from tsode.models import MODELS

warnings.simplefilter("ignore")
out = Path(sys.argv[1])
dm = StreamingTableDataModule(
    out / "data", cache_dir=out / "cache", num_buckets=3,
    task={"kind": "forecast", "cutoff": 24.0}, loader={"batch_size": 8}, seed=0,
)
epochs = []


class Probe(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        dm.cache.read_log = []  # only what this epoch's batches read
        self.ids = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids.extend(batch.series_ids)

    def on_train_epoch_end(self, trainer, pl_module):
        sampler = trainer.train_dataloader.batch_sampler
        read = np.concatenate(dm.cache.read_log).tolist()
        epochs.append({
            "read": [dm.cache.series_ids[i] for i in read],
            "batch_ids": list(self.ids),
            "share": [dm.cache.series_ids[i]
                      for i in dm.datasets["train"].series[sampler.rank_items()].tolist()],
            "sampler": type(sampler.sampler).__name__,
            "num_replicas": sampler.sampler.num_replicas, "rank": sampler.sampler.rank,
            "steps": len(sampler),
        })


trainer = pl.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, limit_val_batches=0,
    num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, callbacks=[Probe()],
)
dm.setup()
model = MODELS["gru_dt"](num_channels=dm.num_channels, hidden_dim=4, decoder_hidden_dim=4)
trainer.fit(model, datamodule=dm)
(out / f"rank-{trainer.global_rank}.json").write_text(json.dumps(
    {"epochs": epochs, "split": list(dm.datasets["train"].series_ids)}))
'''


def frame(num_series: int = 75, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(num_series):
        for t in np.sort(rng.uniform(0, 48, int(rng.integers(6, 30)))).round(2):
            for c in rng.choice(["hr", "sbp", "temp"], int(rng.integers(1, 3)), False):
                rows.append((f"s{s:03d}", t, c, rng.normal(80, 15)))
    return pd.DataFrame(rows, columns=["series_id", "time", "channel", "value"])


@pytest.mark.slow
def test_two_ddp_ranks_read_disjoint_series_covering_the_training_split(tmp_path: Path):
    df = frame()
    data = tmp_path / "data"
    for k, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        (data / f"part={k}").mkdir(parents=True)
        df.iloc[part].to_parquet(data / f"part={k}" / "data.parquet")
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    out = run_tsode_python([str(script), str(tmp_path)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stderr, out.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    split = set(ranks[0]["split"])
    assert set(ranks[1]["split"]) == split and len(split) > 20
    repeats = (-len(split)) % 2  # DistributedSampler pads the split to a multiple of 2
    shares_by_epoch = []
    for epoch in (0, 1):
        records = [r["epochs"][epoch] for r in ranks]
        for rank, rec in enumerate(records):
            # what Lightning injected, taken over by LengthBucketSampler
            assert rec["sampler"] == "DistributedSampler"
            assert (rec["num_replicas"], rec["rank"]) == (2, rank)
            # a rank reads exactly its own share, each series once, and trains on it
            assert sorted(rec["read"]) == sorted(rec["share"]) == sorted(rec["batch_ids"])
            assert len(set(rec["share"])) == len(rec["share"])
        assert records[0]["steps"] == records[1]["steps"]  # same number of optimizer steps
        own = [set(rec["share"]) for rec in records]
        assert len(own[0] & own[1]) == repeats  # disjoint but for the padding repeat(s)
        assert own[0] | own[1] == split  # together: the whole training split
        assert len(own[0]) + len(own[1]) == len(split) + repeats
        shares_by_epoch.append(own[0])
    assert shares_by_epoch[0] != shares_by_epoch[1]  # a new permutation each epoch
