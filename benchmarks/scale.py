"""Scale benchmark of the streaming data path (not a timed test; prints a JSON report).

Generates a synthetic long table (``--series`` series, about ``--rows`` observation rows,
``--channels`` channels, integer stay ids, float hours) as a partitioned Parquet dataset of
about ``--rows-per-file`` rows per file in a temporary directory (deleted at the end unless
``--keep``), then measures, each step in a fresh subprocess so that its peak RSS is its own:

* ``index``: the cold index pass (:func:`tsode.data.streaming.build_cache`): seconds, rows/s,
  CPU seconds and rows per CPU second (the same whatever else runs on the machine), peak RSS;
* ``stream``: the first ``StreamingTableDataModule.setup`` on the new cache (the normalizer
  from the moments, and one pass over every split, a chunk of series at a time, for the
  usable series and their context / target lengths, then stored in the cache), then training
  batches of ``--batch-size`` series: batches/s (and per CPU second), series/s, padding
  fraction, peak RSS;
* ``restart``: a second start on the same files: the cache lookup alone, then
  ``StreamingTableDataModule.setup`` (index, normalizer and lengths from the cache);
* ``memory``: ``TableDataModule`` (today's in-memory path) on the first ``--memory-files``
  files read into one DataFrame: setup seconds, rows/s, peak RSS, batches/s; the report gives
  the streaming / in-memory ratios of ingestion rows/s and batches/s.

* ``train``: training throughput of a small model (GRU-Δt, hidden 32) on the streamed cache
  with Lightning's ``Trainer`` on CPU, ``--train-steps`` optimizer steps of ``--batch-size``
  series per process, with 1 process and then 2 DDP processes (``strategy="ddp"``; each
  setting is its own ``python`` process, which Lightning re-runs once per extra rank), one
  thread per process: series/s over all ranks (after a warm-up step), series per CPU second
  of a rank, and per rank the padding fraction, CPU seconds and peak RSS. Each rank also
  lists the series its training sampler yields over a whole epoch (through the sampler
  Lightning injected) and the series its batches actually read from the cache (its read
  log): the report checks that the ranks' epoch shares are disjoint except for the padding
  repeats (as ``DistributedSampler``: the split padded to a multiple of the number of
  ranks), that together they cover the training split, and that every series a rank read is
  in its own share.

Usage (the issue's size is the default; a quick run)::

    python benchmarks/scale.py --series 20000 --rows 5000000

Only some phases (the data are generated and indexed first in any case)::

    python benchmarks/scale.py --series 20000 --rows 5000000 --phases train
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASK = {"kind": "forecast", "cutoff_fraction": 0.5}


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def generate(root: Path, series: int, rows: int, channels: int, rows_per_file: int,
             seed: int = 0) -> dict:
    """Write the synthetic dataset; returns its size. Memory: one file's rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    per_series = rows / series
    # rows of every series: about per_series on average, skewed like ICU stays
    lengths = np.maximum(1, rng.gamma(2.0, per_series / 2.0, series).round().astype(np.int64))
    names = np.array([f"ch{c:02d}" for c in range(channels)])
    files, total, start = 0, 0, 0
    root.mkdir(parents=True)
    while start < series:
        stop = start + 1
        acc = lengths[start]
        while stop < series and acc + lengths[stop] <= rows_per_file:
            acc += lengths[stop]
            stop += 1
        n = lengths[start:stop]
        ids = np.repeat(np.arange(start, stop, dtype=np.int64) + 100_000, n)
        # times: sorted per series, up to ~n / 4 hours (four rows an hour)
        step = rng.exponential(0.25, len(ids))
        ends = np.cumsum(n)
        times = np.cumsum(step)
        base = np.repeat(np.r_[0.0, times[ends[:-1] - 1]], n)
        times = np.round(times - base, 4)
        chan = rng.integers(0, channels, len(ids))
        values = rng.normal(50.0 + 10.0 * chan, 5.0)
        order = rng.permutation(len(ids))  # rows of a file in no particular order
        table = pa.table({
            "series_id": ids[order], "time": times[order],
            "channel": pa.array(names[chan[order]]), "value": values[order],
        })
        part = root / f"part={files:04d}"
        part.mkdir()
        pq.write_table(table, part / "data.parquet", row_group_size=250_000)
        files += 1
        total += len(ids)
        start = stop
    return {"series": int(series), "rows": int(total), "files": files, "channels": channels}


def _module(args, data):
    from tsode.data.stream_module import StreamingTableDataModule

    return StreamingTableDataModule(
        data, cache_dir=args.cache, task=TASK, loader={"batch_size": args.batch_size},
    )


def phase(args) -> dict:
    """One measured step (runs in its own subprocess)."""
    import warnings

    warnings.simplefilter("ignore")
    from tsode.data.streaming import build_cache
    from tsode.data.tables import TableSpec

    out: dict = {}
    if args.phase == "index":
        t, cpu = time.perf_counter(), time.process_time()
        cache, report = build_cache(args.data, TableSpec(), args.cache)
        cpu = time.process_time() - cpu
        out.update(seconds=time.perf_counter() - t, rows=report.rows,
                   rows_per_s=report.rows / (time.perf_counter() - t),
                   # CPU seconds of this process: what the pass costs whatever else runs
                   cpu_seconds=cpu, cpu_rows_per_s=report.rows / cpu,
                   pass1_seconds=report.pass1_seconds, pass2_seconds=report.pass2_seconds,
                   buckets=cache.meta["num_buckets"], series=cache.num_series)
    elif args.phase == "restart":
        t = time.perf_counter()
        _, report = build_cache(args.data, TableSpec(), args.cache)
        out["cache_lookup_seconds"] = time.perf_counter() - t
        out["reused"] = report.reused
        t = time.perf_counter()
        module = _module(args, args.data)
        module.setup()
        out["module_setup_seconds"] = time.perf_counter() - t
    elif args.phase in ("stream", "memory"):
        t = time.perf_counter()
        if args.phase == "stream":
            module = _module(args, args.data)
        else:
            import pandas as pd

            from tsode.data.table_module import TableDataModule

            files = sorted(Path(args.data).rglob("*.parquet"))[: args.memory_files]
            frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
            out["rows"] = len(frame)
            module = TableDataModule(frame, task=TASK, loader={"batch_size": args.batch_size})
        module.setup()
        out["setup_seconds"] = time.perf_counter() - t
        if "rows" in out:
            out["rows_per_s"] = out["rows"] / out["setup_seconds"]
        loader = module.train_dataloader()
        t, cpu = time.perf_counter(), time.process_time()
        batches = series = 0
        real = padded = 0
        for batch in loader:
            batches += 1
            series += len(batch.series_ids)
            for part in (batch.context, batch.target):
                real += int(part.lengths.sum())
                padded += part.times.numel()
            if batches >= args.max_batches:
                break
        seconds = time.perf_counter() - t
        cpu = time.process_time() - cpu
        out.update(batches=batches, batches_per_s=batches / seconds,
                   batches_per_cpu_s=batches / cpu,
                   series_per_s=series / seconds, padding_fraction=1 - real / max(padded, 1))
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def train_rank(args) -> None:
    """The ``train`` phase on one rank (this process; Lightning starts the other ranks by
    running this same command again): writes ``train-d<devices>-r<rank>.json`` to ``--out``."""
    import warnings

    warnings.simplefilter("ignore")
    import lightning.pytorch as pl
    import torch

    from tsode.models import MODELS

    torch.set_num_threads(1)
    cpu0 = time.process_time()
    module = _module(args, args.data)
    module.setup()  # Lightning's own setup call is then a no-op
    model = MODELS["gru_dt"](num_channels=module.num_channels, hidden_dim=32,
                             decoder_hidden_dim=32)
    record: dict = {"epoch_share": [], "read": [], "real": 0, "padded": 0, "series": 0,
                    "steps": 0}

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            # the batches the injected sampler gives this rank over the whole epoch
            loader = trainer.train_dataloader
            dataset = loader.dataset
            items = [i[0] if isinstance(i, tuple | list) else i
                     for batch in loader.batch_sampler for i in batch]
            record["epoch_share"] = [int(dataset.cache.series_ids[dataset.series[i]])
                                     for i in items]
            record["split"] = [int(x) for x in dataset.series_ids]
            record["sampler"] = type(loader.batch_sampler.sampler).__name__
            dataset.cache.read_log = []  # the series the batches read from the cache

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if record["steps"] == 1:  # after one warm-up step
                record["t0"], record["cpu_t0"] = time.perf_counter(), time.process_time()
                record["series_t0"] = record["series"]
            record["steps"] += 1
            record["series"] += len(batch.series_ids)
            for part in (batch.context, batch.target):
                record["real"] += int(part.lengths.sum())
                record["padded"] += part.times.numel()

        def on_train_end(self, trainer, pl_module):
            record["t1"], record["cpu_t1"] = time.perf_counter(), time.process_time()
            cache = trainer.train_dataloader.dataset.cache
            record["read"] = [int(cache.series_ids[i]) for part in cache.read_log for i in part]

    ddp = args.devices > 1
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp" if ddp else "auto",
        max_steps=args.train_steps, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Probe()],
    )
    trainer.fit(model, datamodule=module)
    rank = trainer.global_rank
    seconds = record["t1"] - record["t0"]
    out = {
        "rank": rank, "world_size": trainer.world_size, "sampler": record["sampler"],
        "steps": record["steps"], "seconds": seconds,
        "cpu_seconds": record["cpu_t1"] - record["cpu_t0"],
        "total_cpu_seconds": time.process_time() - cpu0,
        "timed_series": record["series"] - record["series_t0"],
        "padding_fraction": 1 - record["real"] / max(record["padded"], 1),
        "peak_rss_mib": peak_rss_mib(),
        "epoch_share": record["epoch_share"], "read": sorted(set(record["read"])),
        "split": record["split"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"train-d{args.devices}-r{rank}.json").write_text(json.dumps(out))


def train_report(ranks: list[dict]) -> dict:
    """Throughput and the disjoint / covering check from the ranks' records."""
    split = set(ranks[0]["split"])
    shares = [set(r["epoch_share"]) for r in ranks]
    n, replicas = len(split), len(ranks)
    repeats = (-n) % replicas  # DistributedSampler-style padding (training: no drop_last)
    overlap = set.union(*(a & b for i, a in enumerate(shares) for b in shares[i + 1:])) \
        if replicas > 1 else set()
    seconds = max(r["seconds"] for r in ranks)
    return {
        "world_size": replicas,
        "sampler": ranks[0]["sampler"],
        "steps_per_rank": ranks[0]["steps"],
        "series_per_s": sum(r["timed_series"] for r in ranks) / seconds,
        # per CPU second of one rank (whatever else runs on the machine)
        "series_per_cpu_s_per_rank": sum(r["timed_series"] for r in ranks)
        / sum(r["cpu_seconds"] for r in ranks),
        "seconds": seconds,
        "per_rank": [{k: r[k] for k in ("rank", "padding_fraction", "peak_rss_mib",
                                        "cpu_seconds", "total_cpu_seconds", "seconds")}
                     | {"epoch_share": len(r["epoch_share"]), "read": len(r["read"])}
                     for r in ranks],
        "train_split_series": n,
        "epoch_items": sum(len(r["epoch_share"]) for r in ranks),
        "padding_repeats": repeats,
        "shares_overlap": len(overlap),
        "shares_disjoint_but_padding": len(overlap) <= repeats
        and sum(len(r["epoch_share"]) for r in ranks) == n + repeats,
        "shares_cover_split": set.union(*shares) == split,
        "reads_within_own_share": all(set(r["read"]) <= s for r, s in zip(ranks, shares)),
        "same_split_on_every_rank": all(set(r["split"]) == split for r in ranks),
    }


def run_train(args, devices: int) -> dict:
    """The ``train`` phase with ``devices`` processes (a fresh ``python`` for rank 0)."""
    import os

    out = args.cache.parent / "train"
    cmd = [sys.executable, __file__, "--phase", "train", "--data", str(args.data), "--cache",
           str(args.cache), "--batch-size", str(args.batch_size), "--train-steps",
           str(args.train_steps), "--devices", str(devices), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in (
        "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        raise RuntimeError(f"phase train (devices={devices}) failed:\n{done.stderr[-3000:]}")
    return train_report([json.loads((out / f"train-d{devices}-r{r}.json").read_text())
                         for r in range(devices)])


def run_phase(args, name: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--data", str(args.data), "--cache",
           str(args.cache), "--batch-size", str(args.batch_size), "--max-batches",
           str(args.max_batches), "--memory-files", str(args.memory_files)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--rows-per-file", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-batches", type=int, default=300)
    parser.add_argument("--memory-files", type=int, default=5,
                        help="files the in-memory TableDataModule reads")
    parser.add_argument("--train-steps", type=int, default=200,
                        help="optimizer steps per process in the train phase")
    parser.add_argument("--phases", default="index,stream,restart,memory,train",
                        help="comma-separated phases to run (index always runs)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "train":
        train_rank(args)
        return
    if args.phase:
        print(json.dumps(phase(args)))
        return
    phases = ["index", *(p for p in args.phases.split(",") if p and p != "index")]
    work = Path(tempfile.mkdtemp(prefix="tsode-scale-", dir=args.workdir))
    try:
        args.data, args.cache = work / "data", work / "cache"
        t = time.perf_counter()
        report = {"dataset": generate(args.data, args.series, args.rows, args.channels,
                                      args.rows_per_file)}
        report["dataset"]["generate_seconds"] = time.perf_counter() - t
        for name in phases:
            if name == "train":
                report["train"] = {f"devices_{d}": run_train(args, d) for d in (1, 2)}
                one, two = report["train"]["devices_1"], report["train"]["devices_2"]
                report["train"]["speedup_2_over_1"] = two["series_per_s"] / one["series_per_s"]
            else:
                report[name] = run_phase(args, name)
            print(name, json.dumps(report[name]), file=sys.stderr, flush=True)
        if "memory" in report and "stream" in report:
            report["ratio_streaming_over_memory"] = {
                "ingest_rows_per_s": report["index"]["rows_per_s"]
                / report["memory"]["rows_per_s"],
                "batches_per_s": report["stream"]["batches_per_s"]
                / report["memory"]["batches_per_s"],
            }
        print(json.dumps(report, indent=1))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
