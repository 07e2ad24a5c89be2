"""Tables larger than memory: one bounded-memory index pass into a memory-mapped series cache.

:func:`build_cache` streams a long or wide table (a partitioned Parquet dataset given as a
directory, a glob or a list of files; or CSV files) through ``pyarrow.dataset`` in record
batches and writes an **indexed, validated** copy of it to a cache directory:

* **pass 1** (the source, batch by batch): every batch is checked with the in-memory
  validators (:mod:`tsode.data.tables`), errors located by file, row group (Parquet) or line
  (CSV), row, series and column; the channel list is collected; rows are hash-partitioned by
  series id into ``num_buckets`` bucket files, so every series lies in one bucket;
* **pass 2** (bucket by bucket, one in memory at a time): each bucket is validated and built
  into a :class:`~tsode.data.series.SeriesTable` by :func:`~tsode.data.tables.table_from_frame`
  (the in-memory path itself: duplicates, sorting, time origin, static / label columns,
  ``max_span_hours``), and written as two ``.npy`` arrays (``times`` (N,) float64 hours,
  ``values`` (N, C) float32) that are read back memory-mapped; per-series moments
  (count, mean, M2 per channel) are kept for the normalizer (:meth:`SeriesCache.normalizer`).

The cache directory is named by a fingerprint of the source files (paths, sizes, mtimes), the
:class:`~tsode.data.tables.TableSpec`, the channel list and the bucket count; it is written
atomically (temporary directory, then rename) and reused by the next start.

Peak memory of the pass: one record batch (``batch_rows``) plus one bucket (about
``rows / num_buckets`` source rows, see :func:`default_num_buckets`), not the table.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from tsode.data.atomic import atomic_directory
from tsode.data.normalize import Normalizer, merge_moments, series_moments
from tsode.data.series import DataValidationError, SeriesTable, show
from tsode.data.splits import SPLIT_NAMES
from tsode.data.tables import (
    TableSpec,
    _channel_names,
    _Locator,
    _numeric_column,
    _parse_time_column,
    _require_columns,
    _require_present,
    split_values,
    splits_from_column,
    table_from_frame,
)
from tsode.data.timeaxis import TimeAxis, unit_to_hours

log = logging.getLogger("tsode.data")

#: bump when the cache layout changes (part of the fingerprint)
CACHE_VERSION = 3
#: source rows in the buckets that pass 2 holds at one time (split among its ``workers``)
ROWS_PER_BUCKET = 2_000_000
#: buckets pass 2 builds at the same time by default (threads; 2 did not build faster on
#: the shared 2-core development machine, docs/scale.md)
INDEX_WORKERS = 1
#: measured peak of the index pass (docs/scale.md, memory knobs): about this many MiB of
#: imports and fixed costs, plus about ``BYTES_PER_BUCKET_ROW`` per source row of the
#: buckets held at one time (long tables, 8 channels; an estimate, not a guarantee)
BASE_RESIDENT_MIB = 512
BYTES_PER_BUCKET_ROW = 350

_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")


# ---------------------------------------------------------------------------------- sources
def source_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The files of ``source``: a file, a directory (searched recursively for Parquet / CSV
    files), a glob pattern, or a list of those; sorted, so the order is reproducible.

    Raises:
        FileNotFoundError: nothing matches.
        ValueError: the files mix Parquet and CSV, or have another suffix.
    """
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = [
                p for p in sorted(path.rglob("*"))
                if p.is_file() and p.name.lower().endswith(_PARQUET + _CSV)
                and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
            ]
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in sorted(globmod.glob(str(item), recursive=True))]
            found = [p for p in found if p.is_file()]
        if not found:
            raise FileNotFoundError(f"table source {str(item)!r}: no Parquet or CSV file found")
        files.extend(found)
    kinds = {_kind(p) for p in files}
    if len(kinds) > 1:
        raise ValueError(f"table source mixes Parquet and CSV files: {[str(p) for p in files[:5]]}")
    return files


def is_file_collection(source: Any) -> bool:
    """Whether ``source`` names several table files: a directory, a glob pattern (``*``,
    ``?`` or ``[``, not an existing file) or a list / tuple of paths (what the streaming
    source reads and ``read_table`` does not)."""
    if isinstance(source, list | tuple):
        return len(source) > 0 and all(isinstance(s, str | os.PathLike) for s in source)
    if not isinstance(source, str | os.PathLike):
        return False
    path = Path(source)
    if path.is_dir():
        return True
    return not path.exists() and any(ch in str(source) for ch in "*?[")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_PARQUET):
        return "parquet"
    if name.endswith(_CSV):
        return "csv"
    raise ValueError(f"{path}: unsupported table format (use .parquet or .csv)")


def fingerprint(files: Sequence[Path], spec: TableSpec, extra: dict[str, Any]) -> str:
    """Hex digest naming a cache: source paths, sizes and mtimes, the spec and ``extra``."""
    stats = []
    for p in files:
        st = p.stat()
        stats.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {"version": CACHE_VERSION, "files": stats, "spec": spec.state_dict(), **extra},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def count_rows(files: Sequence[Path]) -> int:
    """Rows of the source: exact for Parquet (file metadata), estimated for CSV (bytes / 20)."""
    if _kind(files[0]) == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in files)
    return sum(p.stat().st_size for p in files) // 20


def default_num_buckets(rows: int, rows_per_bucket: int = ROWS_PER_BUCKET) -> int:
    """Buckets so that one holds about ``rows_per_bucket`` source rows (at least 1)."""
    return max(1, math.ceil(rows / max(1, rows_per_bucket)))


def buckets_for_budget(rows: int, max_resident_mb: float, workers: int = 1) -> int:
    """Buckets so that the index pass's estimated peak stays under ``max_resident_mb`` MiB:
    ``BASE_RESIDENT_MIB`` plus ``BYTES_PER_BUCKET_ROW`` per source row of the ``workers``
    buckets built at one time (the estimate of docs/scale.md, measured on long tables)."""
    room = (float(max_resident_mb) - BASE_RESIDENT_MIB) * 2**20
    if room <= 0:
        raise ValueError(
            f"max_resident_mb={max_resident_mb} is below the index pass's fixed cost "
            f"(about {BASE_RESIDENT_MIB} MiB of imports); give more, or num_buckets"
        )
    rows_per_bucket = max(1, int(room // (BYTES_PER_BUCKET_ROW * max(1, workers))))
    return default_num_buckets(rows, rows_per_bucket)


def _batches(path: Path, columns: list[str], batch_rows: int, spec: TableSpec):
    """Yield ``(record batch, location prefix, first row in file)`` for one file."""
    if _kind(path) == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        first = 0
        for g in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[g], columns=columns):
                yield batch, f"{path}, row group {g}", first
                first += batch.num_rows
        return
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(block_size=1 << 24, encoding=spec.encoding or "utf8")
    parse = pacsv.ParseOptions(delimiter="\t" if ".tsv" in path.name.lower() else ",")
    convert = pacsv.ConvertOptions(include_columns=columns)
    try:
        reader = pacsv.open_csv(path, read_options=read, parse_options=parse,
                                convert_options=convert)
        first = 0
        for batch in reader:
            yield batch, str(path), first
            first += batch.num_rows
    except pa.ArrowInvalid as error:
        raise DataValidationError(f"{path}: cannot be read as CSV: {error}") from error


def _columns(schema_names: list[str], spec: TableSpec, fmt: str, source: str) -> list[str]:
    """The source columns the cache needs (raises naming missing ones, like the in-memory path)."""
    frame = pd.DataFrame(columns=schema_names)
    _require_columns(frame, [spec.id_col, spec.time_col], source, "id/time")
    _require_columns(frame, spec.static_cols, source, "static")
    extra = [c for c in (spec.label_col,) if c is not None]
    _require_columns(frame, extra, source, "label")
    if fmt == "long":
        _require_columns(frame, [spec.channel_col, spec.value_col], source, "long-format")
        values = [spec.channel_col, spec.value_col]
    else:
        values = list(spec.value_cols or [
            c for c in schema_names
            if c not in {spec.id_col, spec.time_col, *spec.static_cols, *extra, spec.split_col}
        ])
        _require_columns(frame, values, source, "value")
        if not values:
            raise DataValidationError(f"{source}: wide table has no value columns")
    if spec.split_col is not None:
        _require_columns(frame, [spec.split_col], source, "split")
        extra.append(spec.split_col)
    return [spec.id_col, spec.time_col, *values, *spec.static_cols, *extra]


class _TimeKinds:
    """The kind of the time column over the batches of pass 1 (numeric, datetime or
    timedelta: one for the whole table, as in memory) and, for datetimes, the earliest time
    and the time zone: the :class:`TimeAxis` that ``TimeAxis.infer`` gives the whole column."""

    def __init__(self, spec: TableSpec):
        self.spec = spec
        self.kind: str | None = None
        self.where = ""
        self.tz: Any = None
        self.earliest: pd.Timestamp | None = None

    def add(self, times: pd.Series, loc: _Locator) -> None:
        kind = (
            "datetime" if pd.api.types.is_datetime64_any_dtype(times)
            else "timedelta" if pd.api.types.is_timedelta64_dtype(times) else "numeric"
        )
        tz = getattr(times.dt, "tz", None) if kind == "datetime" else None
        name = self.spec.time_col
        if self.kind is None:
            self.kind, self.tz, self.where = kind, tz, loc(0, name)
        elif kind != self.kind:
            raise DataValidationError(
                f"{loc(0, name)}: times are {kind} but they are {self.kind} from "
                f"{self.where} on; one time column holds one kind of time"
            )
        elif str(tz) != str(self.tz):
            raise DataValidationError(
                f"{loc(0, name)}: datetimes in time zone {tz} but {self.tz} from {self.where} "
                f"on; convert the column to UTC first"
            )
        if kind == "datetime":
            valid = times.dropna()
            if len(valid) and (self.earliest is None or valid.min() < self.earliest):
                self.earliest = valid.min()

    def axis(self) -> TimeAxis:
        if self.kind == "datetime":
            ref = self.earliest if self.earliest is not None else pd.Timestamp(0)
            tz = str(ref.tz) if getattr(ref, "tz", None) is not None else None
            return TimeAxis(kind="datetime", reference=ref.isoformat(), tz=tz)
        if self.kind == "timedelta":
            return TimeAxis(kind="timedelta")
        return TimeAxis(kind="numeric", unit_hours=unit_to_hours(self.spec.time_unit))


def _check_batch(frame: pd.DataFrame, loc: _Locator, spec: TableSpec, fmt: str,
                 value_cols: list[str], kinds: _TimeKinds) -> set[str]:
    """The located row checks of the in-memory path on one batch; returns its channel names."""
    _require_present(frame[spec.id_col], loc, spec.id_col, "series id")
    times = _parse_time_column(frame[spec.time_col], loc, spec.time_col)
    kinds.add(times, loc)
    if spec.split_col is not None:
        split_values(frame, spec, loc)
    if pd.api.types.is_numeric_dtype(times):
        bad = ~np.isfinite(times.to_numpy(dtype=np.float64, na_value=np.nan))
    else:
        bad = times.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{loc(pos, spec.time_col)}: non-finite time {show(times.iloc[pos])} "
            f"({int(bad.sum())} such rows)"
        )
    if fmt == "wide":
        for col in value_cols:
            _numeric_column(frame[col], loc, col)
        return set()
    chan = frame[spec.channel_col]
    _require_present(chan, loc, spec.channel_col, "channel name")
    _numeric_column(frame[spec.value_col], loc, spec.value_col, channel=chan)
    return set(pd.unique(chan.astype(str)))


def _bucket_of(ids: pd.Series, num_buckets: int) -> np.ndarray:
    """(R,) bucket of every row: a stable hash of the series id (same on every run)."""
    if num_buckets == 1:
        return np.zeros(len(ids), dtype=np.int64)
    values = ids.to_numpy()
    if values.dtype.kind in "iu":
        values = values.astype(np.int64)
    elif values.dtype.kind != "O":
        values = values.astype(object)
    hashed = pd.util.hash_array(values, categorize=False)
    return (hashed % np.uint64(num_buckets)).astype(np.int64)


# ---------------------------------------------------------------------------------- cache
@dataclass
class CacheReport:
    """What a :func:`build_cache` call did (times in seconds)."""

    path: Path
    reused: bool
    rows: int = 0
    seconds: float = 0.0
    pass1_seconds: float = 0.0
    pass2_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def build_cache(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    spec: TableSpec | None = None,
    cache_dir: str | os.PathLike = ".tsode-cache",
    *,
    channels: Sequence[str] | None = None,
    num_buckets: int | None = None,
    batch_rows: int = 262_144,
    rows_per_bucket: int | None = None,
    workers: int = INDEX_WORKERS,
    max_resident_mb: float | None = None,
) -> tuple[SeriesCache, CacheReport]:
    """Index ``source`` into a series cache under ``cache_dir`` (or reuse the one there).

    Args:
        source: Parquet / CSV file(s), a directory of them (partitioned dataset) or a glob.
        spec: columns and policies (long or wide; numeric, datetime or timedelta times;
            ``split_col``).
        cache_dir: parent directory of the caches (one subdirectory per fingerprint).
        channels: fixed channel list (table channels outside it raise); default: inferred
            (sorted names in long format, column order in wide format).
        num_buckets: series buckets (files); default :func:`default_num_buckets` of the rows.
        batch_rows: rows per record batch of pass 1.
        rows_per_bucket: source rows per bucket aimed at when ``num_buckets`` is None
            (default :data:`ROWS_PER_BUCKET` shared by the ``workers``: the buckets built at
            one time hold about as many rows whatever ``workers``).
        workers: buckets built at the same time in pass 2 (threads).
        max_resident_mb: the index pass's peak memory aimed at, in MiB, when ``num_buckets``
            is None: the buckets from :func:`buckets_for_budget` (an estimate of the pass's
            peak from measured bytes per row, not a hard limit). Not with ``num_buckets``.

    Returns the opened cache and a :class:`CacheReport`.
    """
    spec = spec or TableSpec()
    files = source_files(source)
    total_rows = count_rows(files)
    if max_resident_mb is not None and num_buckets is not None:
        raise ValueError("give num_buckets or max_resident_mb, not both")
    if rows_per_bucket is None:
        rows_per_bucket = ROWS_PER_BUCKET // max(1, workers)
    if num_buckets is None and max_resident_mb is not None:
        num_buckets = buckets_for_budget(total_rows, max_resident_mb, workers)
    k = num_buckets or default_num_buckets(total_rows, rows_per_bucket)
    extra = {"channels": None if channels is None else [str(c) for c in channels],
             "num_buckets": k}
    key = fingerprint(files, spec, extra)
    dest = Path(cache_dir) / f"series-{key[:24]}"
    if (dest / "meta.json").exists():
        cache = SeriesCache(dest)
        return cache, CacheReport(dest, True, cache.meta["info"].get("input_rows", 0),
                                  info=cache.meta["info"])
    start = time.perf_counter()
    with atomic_directory(dest) as tmp:
        meta = _write_cache(files, spec, tmp, k, channels, batch_rows, workers)
        meta["fingerprint"] = key
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    cache = SeriesCache(dest)
    report = CacheReport(dest, False, meta["info"]["input_rows"], time.perf_counter() - start,
                         meta["pass1_seconds"], meta["pass2_seconds"], meta["info"])
    log.info("series cache %s: %d rows, %d series, %d buckets in %.1f s", dest,
             report.rows, cache.num_series, k, report.seconds)
    return cache, report


def _write_cache(files: list[Path], spec: TableSpec, out: Path, k: int,
                 channels: Sequence[str] | None, batch_rows: int, workers: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    kind = _kind(files[0])
    root = str(files[0].parent) if len(files) > 1 else str(files[0])
    first_names = _schema_names(files[0], kind, spec)
    fmt = spec.format
    if fmt == "auto":
        fmt = "long" if spec.channel_col in first_names else "wide"
    columns = _columns(first_names, spec, fmt, str(files[0]))
    per_series = len(spec.static_cols) + (spec.label_col is not None) + (spec.split_col is not None)
    value_cols = columns[2: len(columns) - per_series]
    found: set[str] = set()
    kinds = _TimeKinds(spec)
    writers: list[ipc.RecordBatchFileWriter | None] = [None] * k
    schema: pa.Schema | None = None
    rows = 0
    try:
        for path in files:
            names = _schema_names(path, kind, spec)
            _columns(names, spec, fmt, str(path))
            for batch, where, first in _batches(path, columns, batch_rows, spec):
                batch = batch.select(columns)
                frame = batch.to_pandas()
                loc = _Locator(where, frame, spec.id_col, first, kind == "csv")
                found |= _check_batch(frame, loc, spec, fmt, value_cols, kinds)
                rows += batch.num_rows
                if schema is None:
                    schema = batch.schema
                elif batch.schema != schema:
                    try:
                        batch = batch.cast(schema)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as error:
                        raise DataValidationError(
                            f"{where}: column types {batch.schema.types} differ from the first "
                            f"file's {schema.types} and cannot be converted: {error}"
                        ) from error
                bucket = _bucket_of(frame[spec.id_col], k)
                # a radix sort on 16-bit bucket numbers
                order = np.argsort(bucket.astype(np.int16) if k < 2**15 else bucket,
                                   kind="stable")
                bounds = np.searchsorted(bucket[order], np.arange(k + 1))
                taken = batch.take(pa.array(order))
                for b in range(k):
                    lo, hi = int(bounds[b]), int(bounds[b + 1])
                    if hi == lo:
                        continue
                    if writers[b] is None:
                        writers[b] = ipc.new_file(str(out / f"raw-{b}.arrow"), schema)
                    writers[b].write_batch(taken.slice(lo, hi - lo))
    finally:
        for w in writers:
            if w is not None:
                w.close()
    if fmt == "long":
        chans = sorted(found) if channels is None else list(channels)
    else:
        chans = list(value_cols) if channels is None else list(channels)
    chans = _channel_names(chans, root)
    t1 = time.perf_counter()
    axis = kinds.axis()
    parts: list[pd.DataFrame] = []
    moments: list[np.ndarray] = []
    info = {"input_rows": rows, "format": fmt, "duplicate_entries_merged": 0,
            "missing_values_skipped": 0, "series_without_observation": 0}
    built = [b for b in range(k) if (out / f"raw-{b}.arrow").exists()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        # numpy and pandas release the GIL in the sorts and array passes: buckets build in
        # parallel; map hands the results (and the first error) back in bucket order
        for part, bucket_moments, counts in pool.map(
            lambda b: _build_bucket(out, b, k, root, spec, chans, axis), built
        ):
            for name, n in counts.items():
                info[name] += n
            moments.append(bucket_moments)
            parts.append(part)
    if not parts:
        raise DataValidationError(f"{root}: the table has no rows ({len(files)} file(s))")
    index = pd.concat(parts, ignore_index=True)
    try:
        codes, _ = pd.factorize(index["series_id"], sort=True)
    except TypeError:
        codes = np.arange(len(index))
    order = np.argsort(codes, kind="stable")
    index = index.iloc[order].reset_index(drop=True)
    all_moments = np.concatenate(moments)[order]
    np.save(out / "moments.npy", all_moments)
    ids = index.pop("series_id")
    pd.to_pickle(list(ids), out / "series_ids.pkl")
    index.to_parquet(out / "index.parquet")
    return {
        "channels": chans, "static_names": list(spec.static_cols),
        "has_labels": spec.label_col is not None, "num_buckets": k,
        "time_axis": axis.state_dict(), "spec": spec.state_dict(),
        "files": [str(p) for p in files], "source": root, "info": info,
        "pass1_seconds": t1 - t0, "pass2_seconds": time.perf_counter() - t1,
    }


def _build_bucket(out: Path, b: int, k: int, root: str, spec: TableSpec, chans: list[str],
                  axis: TimeAxis) -> tuple[pd.DataFrame, np.ndarray, dict[str, int]]:
    """Pass 2 on bucket ``b``: its rows built by ``table_from_frame`` (the in-memory path:
    validation, duplicates, sorting, time origin, per-series columns), written as ``.npy``
    arrays; returns its index rows, its per-series moments (S_b, 3, C) and its counts."""
    raw = out / f"raw-{b}.arrow"
    with pa.memory_map(str(raw)) as mm:
        frame = ipc.open_file(mm).read_all().to_pandas()
    where = f"{root} (series bucket {b} of {k}; rows count within the bucket)"
    table = table_from_frame(frame, spec, source=where, channels=chans, time_axis=axis)
    split = None
    if spec.split_col is not None:  # one split per series (the values are checked)
        named = splits_from_column(frame, spec, where)
        code = {sid: n for n, name in enumerate(SPLIT_NAMES) for sid in named[name]}
        split = np.array([code.get(sid, -1) for sid in table.series_ids], dtype=np.int8)
    del frame
    raw.unlink()
    counts = {name: int(table.info.get(name, 0)) for name in (
        "duplicate_entries_merged", "missing_values_skipped", "series_without_observation")}
    _write_bucket(out, b, table)
    count, mean, m2 = series_moments(table.values, table.offsets)
    lengths = table.lengths
    starts = table.offsets[:-1]
    has = lengths > 0
    first_t = np.full(table.num_series, np.nan)
    last_t = np.full(table.num_series, np.nan)
    first_t[has] = table.times[starts[has]] + table.time_offset[has]
    last_t[has] = table.times[starts[has] + lengths[has] - 1] + table.time_offset[has]
    part = pd.DataFrame({
        "series_id": pd.Series(table.series_ids, dtype=object),
        "bucket": np.full(table.num_series, b, dtype=np.int32),
        "row": starts, "length": lengths, "time_offset": table.time_offset,
        "first_time": first_t, "last_time": last_t,
    })
    for j, name in enumerate(table.static_names):
        part[f"static:{name}"] = table.static[:, j]
    if table.labels is not None:
        part["label"] = table.labels
    if split is not None:
        part["split"] = split
    return part, np.stack([count, mean, m2], axis=1), counts


def _schema_names(path: Path, kind: str, spec: TableSpec) -> list[str]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    import pyarrow.dataset as pads  # imported here: ``import tsode.data`` stays light

    return list(pads.dataset(str(path), format="csv").schema.names)


def _write_bucket(out: Path, b: int, table: SeriesTable) -> None:
    """One bucket as two ``.npy`` files read memory-mapped: ``times-<b>.npy`` (N,) float64
    and ``values-<b>.npy`` (N, C) float32 (NaN: unobserved)."""
    np.save(out / f"times-{b}.npy", np.ascontiguousarray(table.times))
    np.save(out / f"values-{b}.npy", np.ascontiguousarray(table.values))


class SeriesCache:
    """A built series cache (see :func:`build_cache`), read on demand.

    A read copies each series' rows from the bucket files with positional reads
    (``os.preadv`` straight into the batch's arrays): the file pages stay in the kernel's page
    cache, shared and reclaimable, and only the rows read enter this process's memory.
    (Memory-mapping the buckets made far more than the rows read resident: a fault maps a
    whole large folio of the file, and 16 random batches of 64 series made 1.3 GB of a 50 M
    row cache resident, docs/scale.md.)

    Series are numbered ``0..S-1`` in sorted id order, the order of the in-memory
    :class:`~tsode.data.series.SeriesTable` of the same table. Arrays of the index:
    ``bucket`` (S,), ``row`` (S,) first row in the bucket, ``lengths`` (S,) time points,
    ``time_offset`` (S,) hours, ``first_time`` / ``last_time`` (S,) hours (NaN: empty),
    ``static`` (S, K), ``labels`` (S,) or None.
    """

    def __init__(self, path: str | os.PathLike, release_every: int = 16):
        self.path = Path(path)
        self.release_every = release_every
        #: calls of :meth:`read` in this process
        self.num_reads = 0
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.channels: list[str] = list(self.meta["channels"])
        self.static_names: list[str] = list(self.meta["static_names"])
        self.time_axis = TimeAxis.from_state_dict(self.meta["time_axis"])
        self.source: str = self.meta["source"]
        index = pd.read_parquet(self.path / "index.parquet")
        self.series_ids: list[Any] = pd.read_pickle(self.path / "series_ids.pkl")
        self.bucket = index["bucket"].to_numpy(np.int64)
        self.row = index["row"].to_numpy(np.int64)
        self.lengths = index["length"].to_numpy(np.int64)
        self.time_offset = index["time_offset"].to_numpy(np.float64)
        self.first_time = index["first_time"].to_numpy(np.float64)
        self.last_time = index["last_time"].to_numpy(np.float64)
        self.static = (
            np.stack([index[f"static:{n}"].to_numpy(np.float64) for n in self.static_names], 1)
            if self.static_names else None
        )
        self.labels = index["label"].to_numpy(np.float64) if "label" in index else None
        #: (S,) split of every series from ``split_col`` (0 / 1 / 2: train / val / test,
        #: -1: none given), or None
        self.split = index["split"].to_numpy(np.int64) if "split" in index else None
        self.moments = np.load(self.path / "moments.npy", mmap_mode="r")  # (S, 3, C)
        self._files: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}
        #: set to a list to record the series indices each :meth:`read` reads (sharding
        #: checks); None (default): not recorded, so a long run does not accumulate them
        self.read_log: list[np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}  # files are opened again in each worker process
        state["moments"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.moments = np.load(self.path / "moments.npy", mmap_mode="r")

    @property
    def num_series(self) -> int:
        return len(self.series_ids)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def release(self) -> None:
        """Close the bucket files (they are opened again by the next read). :meth:`read`
        does it every ``release_every`` calls."""
        files, self._files = self._files, {}
        for pair in files.values():
            for fd, _ in pair:
                os.close(fd)

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: nothing left to close with
            pass

    def _bucket_files(self, b: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(descriptor, data offset)`` of bucket ``b``'s times and values files."""
        if b not in self._files:
            pair = []
            for kind, shape in (("times", (None,)), ("values", (None, self.num_channels))):
                path = self.path / f"{kind}-{b}.npy"
                with open(path, "rb") as handle:
                    version = np.lib.format.read_magic(handle)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    found, fortran, dtype = header(handle)
                    start = handle.tell()
                expected = np.float64 if kind == "times" else np.float32
                if fortran or dtype != expected or len(found) != len(shape) or (
                        len(shape) == 2 and found[1] != shape[1]):
                    raise ValueError(f"{path}: unexpected array layout {found} {dtype}")
                pair.append((os.open(path, os.O_RDONLY), start))
            self._files[b] = (pair[0], pair[1])
        return self._files[b]

    def read(self, indices: Sequence[int] | np.ndarray) -> SeriesTable:
        """The series ``indices`` (in that order) as a small in-memory ``SeriesTable``; only
        their rows are read from the bucket files."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.read_log is not None:
            self.read_log.append(idx.copy())
        self.num_reads += 1
        if self.release_every and self.num_reads % self.release_every == 0:
            self.release()
        lens = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        times = np.empty(int(offsets[-1]), dtype=np.float64)
        values = np.empty((int(offsets[-1]), self.num_channels), dtype=np.float32)
        buckets = self.bucket[idx]
        rows = self.row[idx]
        c = self.num_channels
        width = c * 4  # bytes of a row of values (float32)
        flat = values.reshape(-1)
        for b in np.unique(buckets):
            (tfd, tstart), (vfd, vstart) = self._bucket_files(int(b))
            for j in np.flatnonzero(buckets == b).tolist():
                lo, n, row = int(offsets[j]), int(lens[j]), int(rows[j])
                if n == 0:
                    continue
                got = os.preadv(tfd, [times[lo: lo + n]], tstart + row * 8)
                got += os.preadv(vfd, [flat[lo * c: (lo + n) * c]], vstart + row * width)
                if got != n * (8 + width):
                    raise DataValidationError(
                        f"series cache {self.path}, bucket {int(b)}: series "
                        f"{show(self.series_ids[int(idx[j])])} reads {got} bytes of "
                        f"{n * (8 + width)}: the cache files are truncated; delete the cache "
                        f"directory to rebuild it"
                    )
        return SeriesTable(
            series_ids=[self.series_ids[i] for i in idx],
            offsets=offsets,
            times=times,
            values=values,
            channels=list(self.channels),
            time_offset=self.time_offset[idx],
            static=None if self.static is None else self.static[idx],
            static_names=list(self.static_names),
            labels=None if self.labels is None else self.labels[idx],
            time_axis=self.time_axis,
            source=self.source,
        )

    def column_splits(self) -> dict[str, list[Any]]:
        """``{"train": ids, "val": ids, "test": ids}`` from the ``split_col`` of the spec
        (as :func:`~tsode.data.tables.splits_from_column`; series without a value in none)."""
        if self.split is None:
            raise ValueError(f"series cache {self.path} was built without a split column")
        return {
            name: [self.series_ids[i] for i in np.flatnonzero(self.split == k)]
            for k, name in enumerate(SPLIT_NAMES)
        }

    def channel_counts(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(C,) observed entries per channel of the series ``indices`` (stored moments)."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))
        total = np.zeros(self.num_channels, dtype=np.int64)
        for lo in range(0, len(idx), 65_536):
            total += np.asarray(self.moments[idx[lo: lo + 65_536], 0]).sum(0).astype(np.int64)
        return total

    def normalizer(self, indices: Sequence[int] | np.ndarray) -> Normalizer:
        """Per-channel normalizer of the series ``indices`` (e.g. the training split) from the
        stored per-series moments: equal to ``Normalizer.fit`` on their rows up to rounding."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))
        chunks = []
        for lo in range(0, len(idx), 65_536):  # bounded: one chunk of series at a time
            m = np.asarray(self.moments[idx[lo: lo + 65_536]])  # (G, 3, C)
            chunks.append(np.stack(merge_moments(m[:, 0], m[:, 1], m[:, 2])))  # (3, C)
        m = np.stack(chunks) if chunks else np.zeros((0, 3, self.num_channels))
        return Normalizer.from_moments(self.channels, m[:, 0], m[:, 1], m[:, 2])
