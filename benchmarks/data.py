"""Benchmark the tsode data layer.

Measured:

* PhysioNet 2012 set-a parse time: cold (parse the 4000 records from the tarball, no cache)
  and cached (load the Parquet cache written by a previous parse); median over repeats.
* Collate throughput: batches per second at batch size 64 over one epoch of the training
  split (forecast task, first 24 h observed), with and without length bucketing.
* Padding fraction: padded time points / all time points in the padded context and target
  tensors over one training epoch, with and without length bucketing.
* The same collate/padding figures on the embedded SyntheticICU dataset (always available,
  2000 series), and the time of ``SyntheticICUDataModule().setup()`` at its default 300 series.

PhysioNet data is located like the tests do (``$TSODE_PHYSIONET_DIR`` or
``../shared/data/physionet2012`` beside the repository); that part is skipped when absent.
Caches go to a temporary directory that is removed afterwards.

Usage: ``python benchmarks/data.py [--repeats 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tsode.data import (
    IrregularDataModule,
    LoaderConfig,
    PhysioNet2012DataModule,
    SyntheticICUDataModule,
)
from tsode.data.physionet import load_physionet2012


def physionet_root() -> Path:
    env = os.environ.get("TSODE_PHYSIONET_DIR")
    return (
        Path(env)
        if env
        else Path(__file__).resolve().parents[1].parent / "shared/data/physionet2012"
    )


def time_call(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def epoch_figures(dm: IrregularDataModule, repeats: int) -> dict[str, float]:
    """Batches/s and padding fraction over one training epoch."""
    loader = dm.train_dataloader()
    padded = total = 0
    for batch in loader:
        for part in (batch.context, batch.target):
            b, length = part.times.shape
            total += b * length
            padded += b * length - int(part.lengths.sum())
    num_batches = len(loader)

    def run() -> None:
        for _ in dm.train_dataloader():
            pass

    median, _ = time_call(run, repeats)
    return {
        "batches": num_batches,
        "batches_per_s": num_batches / median,
        "padding_fraction": padded / total,
    }


def bench_module(make, repeats: int) -> dict[str, dict[str, float]]:
    out = {}
    for bucketing in (True, False):
        dm = make(bucketing)
        dm.setup()
        out["bucketing" if bucketing else "no_bucketing"] = epoch_figures(dm, repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, object] = {}
    root = physionet_root()
    with tempfile.TemporaryDirectory() as cache:
        if (root / "set-a.tar.gz").exists() or (root / "set-a").exists():
            cold, cold_all = time_call(
                lambda: load_physionet2012(root, use_cache=False, progress=False), args.repeats
            )
            load_physionet2012(root, cache_dir=cache, progress=False)  # write the cache
            cached, cached_all = time_call(
                lambda: load_physionet2012(root, cache_dir=cache, progress=False),
                max(args.repeats, 5),
            )
            table = load_physionet2012(root, cache_dir=cache, progress=False)
            assert table.info["cache"] == "hit"
            results["physionet_set_a"] = {
                "records": table.num_series,
                "observations": int(table.mask.sum()),
                "parse_cold_s": cold,
                "parse_cold_all_s": cold_all,
                "load_cached_s": cached,
                "load_cached_all_s": cached_all,
                **bench_module(
                    lambda b: PhysioNet2012DataModule(
                        root=str(root),
                        cache_dir=cache,
                        loader=LoaderConfig(batch_size=64, bucketing=b),
                        progress=False,
                    ),
                    args.repeats,
                ),
            }
        else:
            results["physionet_set_a"] = f"skipped: no data under {root}"
    setup_s, setup_all = time_call(
        lambda: SyntheticICUDataModule(num_series=300).setup(), args.repeats
    )
    results["synthetic_icu_setup_300_series_s"] = setup_s
    results["synthetic_icu_setup_300_series_all_s"] = setup_all
    results["synthetic_icu"] = bench_module(
        lambda b: SyntheticICUDataModule(
            num_series=2000, loader=LoaderConfig(batch_size=64, bucketing=b)
        ),
        args.repeats,
    )
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
