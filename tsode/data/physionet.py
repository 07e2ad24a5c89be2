"""PhysioNet/Computing in Cardiology Challenge 2012 (ICU mortality): parser, cache, download.

Official layout (https://physionet.org/content/challenge-2012/1.0.0/): ``set-a.tar.gz`` holds
``set-a/<RecordID>.txt`` records (likewise set b/c) and ``Outcomes-a.txt`` the outcomes. A
record is a CSV with header ``Time,Parameter,Value``; ``Time`` is ``HH:MM`` since ICU
admission (hour 0). The rows at ``00:00`` for RecordID, Age, Gender, Height, ICUType and
Weight are general descriptors (``-1`` = unknown); everything else is a time series of one of
37 variables. Weight at later times is a time series.

Conversion to tsode:

* series id = RecordID (int); times are float hours since admission (``time_origin``
  ``"absolute"``); channels = the 37 variables (:data:`PHYSIONET_CHANNELS`), original units;
  repeated (time, variable) entries are averaged (counted);
* static covariates = Age, Gender, Height, Weight (descriptor, ``-1`` -> NaN) and ICUType
  one-hot (ICUType_1..4);
* label = ``In-hospital_death`` from ``Outcomes-<set>.txt`` (NaN when the file is absent);
* lines with an empty parameter name (``10:45,,1.9``, found in public copies of the data) are
  skipped with a warning naming the record and line, and counted
  (``info["empty_parameter_lines_skipped"]``); ``strict=True`` makes them an error.

Parsing the 4000 records of a set takes a few seconds and happens once: the parsed table is
cached as Parquet files keyed by the source files (name, size, mtime) and parser version.

Why one long module: the parser, its cache (keyed by the parser version), the verified
download and the data module are the one dataset's format; they change together.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tsode.data.atomic import atomic_path
from tsode.data.config import LoaderConfig
from tsode.data.module import IrregularDataModule
from tsode.data.series import DataValidationError, SeriesTable
from tsode.data.timeaxis import TimeAxis

log = logging.getLogger("tsode.data")

PARSER_VERSION = 2  # 2: lines with an empty parameter name are skipped and counted
PHYSIONET_URL = "https://physionet.org/files/challenge-2012/1.0.0/"
DEFAULT_CUTOFF = 24.0  # hours observed when a forecast names neither cutoff nor cutoff_fraction
PHYSIONET_PAGE = "https://physionet.org/content/challenge-2012/1.0.0/"
PHYSIONET_CHANNELS = (
    "ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine",
    "DiasABP", "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "MAP",
    "MechVent", "Mg", "NIDiasABP", "NIMAP", "NISysABP", "Na", "PaCO2", "PaO2", "Platelets",
    "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT", "Urine", "WBC", "Weight",
    "pH",
)  # fmt: skip
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
STATIC_NAMES = (
    "Age", "Gender", "Height", "Weight", "ICUType_1", "ICUType_2", "ICUType_3", "ICUType_4",
)  # fmt: skip
LABEL_COLUMN = "In-hospital_death"
HEADER = b"Time,Parameter,Value"
EMPTY_PARAMETER_KEY = "empty_parameter_lines_skipped"
_EMPTY_PARAMETER_AT = "empty_parameter_lines_at"


def default_root() -> Path:
    """``$TSODE_PHYSIONET_DIR`` or ``~/.cache/tsode/physionet2012``."""
    env = os.environ.get("TSODE_PHYSIONET_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tsode" / "physionet2012"


def default_cache_dir() -> Path:
    """``$TSODE_CACHE_DIR`` or ``~/.cache/tsode``."""
    env = os.environ.get("TSODE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tsode"


def _manual_instructions(root: Path, set_name: str) -> str:
    return (
        f"Download set-{set_name}.tar.gz and Outcomes-{set_name}.txt from {PHYSIONET_PAGE} "
        f"(free, Open Data Commons Attribution License) and place them in {root} "
        f"(a directory set-{set_name}/ with the extracted <RecordID>.txt records also works), "
        f"or pass root=... / set TSODE_PHYSIONET_DIR, or use download=True when online."
    )


# ---------------------------------------------------------------------- locating sources
def find_sources(root: Path, set_name: str) -> tuple[Path, Path | None]:
    """(records source: tarball or directory, outcomes file or None) of one set under ``root``.

    Raises:
        FileNotFoundError: with instructions for placing the files by hand.
    """
    root = Path(root)
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        outcomes = root.parent / f"Outcomes-{set_name}.txt"
        return root, outcomes if outcomes.exists() else None
    candidates = [
        root / f"set-{set_name}.tar.gz",
        root / f"set-{set_name}.tgz",
        root / f"set-{set_name}",
    ]
    records = next((c for c in candidates if c.exists()), None)
    if records is None and root.is_dir() and any(p.stem.isdigit() for p in root.glob("*.txt")):
        records = root  # a directory of <RecordID>.txt records itself
    if records is None:
        raise FileNotFoundError(
            f"PhysioNet 2012 set {set_name!r} not found under {root}. "
            + _manual_instructions(root, set_name)
        )
    outcomes = root / f"Outcomes-{set_name}.txt"
    return records, outcomes if outcomes.exists() else None


def _iter_records(source: Path, progress: bool) -> Iterator[tuple[str, bytes]]:
    """Yield (record file name, raw bytes) for every ``*.txt`` record, sorted by name."""
    disable = not progress or not sys.stderr.isatty()
    if source.is_dir():
        files = sorted(p for p in source.glob("*.txt") if not p.name.startswith("Outcomes"))
        for p in tqdm(files, desc=f"parsing {source.name}", unit="rec", disable=disable):
            yield str(p), p.read_bytes()
        return
    # stream members in archive order (seeking backwards in a .gz re-decompresses from the start)
    records: list[tuple[str, bytes]] = []
    with tarfile.open(source, "r|*") as tar:
        bar = tqdm(desc=f"parsing {source.name}", unit="rec", disable=disable)
        for m in tar:
            if m.isfile() and m.name.endswith(".txt"):
                fh = tar.extractfile(m)
                records.append((f"{source}:{m.name}", fh.read() if fh is not None else b""))
                bar.update()
        bar.close()
    records.sort(key=lambda r: r[0])
    yield from records


# ---------------------------------------------------------------------- parsing
def parse_records(
    source: Path, outcomes: Path | None = None, progress: bool = True, strict: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse every record of ``source`` (tarball or directory) in one vectorized pass.

    Lines with an empty parameter name (``10:45,,1.9``) are skipped with a ``UserWarning``
    naming the record files and lines, and counted per record (``series`` column
    ``empty_parameter_lines``); with ``strict=True`` they are a ``DataValidationError``.

    Returns:
        observations: long frame (record_id int64, time float64 hours, channel str,
            value float64) of time-series rows (descriptors excluded).
        series: one row per record: record_id, the static descriptors (NaN = unknown),
            label, file name, empty_parameter_lines (skipped lines).

    Raises:
        DataValidationError: naming the record file and line of malformed content.
    """
    names: list[str] = []
    bodies: list[bytes] = []
    line_counts: list[int] = []
    for name, raw in _iter_records(source, progress):
        raw = raw.replace(b"\r\n", b"\n").strip()
        head, _, body = raw.partition(b"\n")
        if head.strip() != HEADER:
            raise DataValidationError(
                f"{name}, line 1: expected header {HEADER.decode()!r}, got {head[:60]!r}"
            )
        if body and not body.endswith(b"\n"):
            body += b"\n"
        if b"\n\n" in body:
            line = body[: body.index(b"\n\n")].count(b"\n") + 3
            raise DataValidationError(f"{name}, line {line}: empty line inside the record")
        names.append(name)
        bodies.append(body)
        line_counts.append(body.count(b"\n"))
    if not names:
        raise DataValidationError(f"{source}: no record files (*.txt) found")
    counts = np.asarray(line_counts, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    blob = b"".join(bodies).replace(b":", b",")

    line_rows = np.arange(starts[-1])  # body line of each parsed row (rows may be skipped)

    def where(row: int) -> str:
        line = int(line_rows[row])
        rec = int(np.searchsorted(starts, line, side="right") - 1)
        return f"{names[rec]}, line {line - starts[rec] + 2}"

    try:
        frame = pd.read_csv(
            io.BytesIO(blob),
            header=None,
            names=["hh", "mm", "parameter", "value"],
            dtype={"parameter": "category"},
            skip_blank_lines=False,
            engine="c",
        )
    except pd.errors.ParserError as err:
        raise DataValidationError(f"{source}: malformed record line ({err})") from err
    if len(frame) != starts[-1]:
        raise DataValidationError(f"{source}: could not align parsed rows with record lines")
    record = np.repeat(np.arange(len(names)), counts)
    # lines with an empty (or blank) parameter name: skipped and counted, or an error if strict
    blank = [c for c in frame["parameter"].cat.categories if not str(c).strip()]
    empty = frame["parameter"].isna().to_numpy() | frame["parameter"].isin(blank).to_numpy()
    empty_per_record = np.bincount(record[empty], minlength=len(names))
    if empty.any():
        rows = np.flatnonzero(empty)
        shown = "; ".join(where(int(r)) for r in rows[:5]) + ("; ..." if len(rows) > 5 else "")
        what = (
            f"{len(rows)} line(s) with an empty parameter name (e.g. '10:45,,1.9') in "
            f"{int((empty_per_record > 0).sum())} record(s) of {source}: {shown}"
        )
        if strict:
            raise DataValidationError(
                f"{where(int(rows[0]))}, column 'Parameter': empty parameter name; {what}. "
                "Remove these lines, or load with strict=False to skip them"
            )
        _warn_empty_parameters(what)
        kept = np.flatnonzero(~empty)
        frame = frame.iloc[kept].reset_index(drop=True)
        frame["parameter"] = frame["parameter"].cat.remove_unused_categories()
        record = record[kept]
        line_rows = line_rows[kept]
    hh = pd.to_numeric(frame["hh"], errors="coerce").to_numpy(dtype=np.float64)
    mm = pd.to_numeric(frame["mm"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(hh) | ~np.isfinite(mm) | (mm < 0) | (mm >= 60) | (hh < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{where(row)}, column 'Time': not an HH:MM time ({int(bad.sum())} such lines)"
        )
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{where(row)}, column 'Value': {frame['value'].iloc[row]!r} is not a finite number "
            f"({int(bad.sum())} such lines)"
        )
    cats = frame["parameter"].cat
    hours = hh + mm / 60.0
    # vocabulary: the 37 channels, then the descriptors other than Weight
    vocab = list(PHYSIONET_CHANNELS) + [d for d in DESCRIPTORS if d != "Weight"]
    lookup = {name: k for k, name in enumerate(vocab)}
    unknown = [c for c in cats.categories if c not in lookup]
    if unknown:
        row = int(np.flatnonzero(frame["parameter"].isin(unknown).to_numpy())[0])
        raise DataValidationError(
            f"{where(row)}, column 'Parameter': unknown variable(s) {unknown}; a record holds "
            f"the descriptors {list(DESCRIPTORS)} and the 37 variables of PHYSIONET_CHANNELS"
        )
    lut = np.array([lookup[c] for c in cats.categories], dtype=np.int64)
    pid = lut[cats.codes.to_numpy()]
    num_ch = len(PHYSIONET_CHANNELS)
    weight = PHYSIONET_CHANNELS.index("Weight")
    is_descr = (pid >= num_ch) | ((pid == weight) & (hours == 0.0))
    late = (pid >= num_ch) & (hours != 0.0)
    if late.any():
        row = int(np.flatnonzero(late)[0])
        raise DataValidationError(f"{where(row)}: descriptor {vocab[pid[row]]!r} not at 00:00")
    # ---- per-record descriptors (first occurrence per record wins; they are given once)
    n_rec = len(names)
    descr = {d: np.full(n_rec, np.nan) for d in DESCRIPTORS}
    d_rows = np.flatnonzero(is_descr)
    for d in DESCRIPTORS:
        sel = d_rows[pid[d_rows] == (weight if d == "Weight" else lookup[d])]
        rec, first = np.unique(record[sel][::-1], return_index=True)
        descr[d][rec] = values[sel][::-1][first]
    stems = np.array([Path(n.split(":")[-1]).stem for n in names])
    rid = descr["RecordID"]
    missing_rid = np.isnan(rid)
    if missing_rid.any():
        numeric_stems = np.array([float(s) if s.isdigit() else np.nan for s in stems])
        rid[missing_rid] = numeric_stems[missing_rid]
    if np.isnan(rid).any():
        k = int(np.flatnonzero(np.isnan(rid))[0])
        raise DataValidationError(f"{names[k]}: no RecordID descriptor and no numeric file name")
    mismatch = np.array([s.isdigit() and float(s) != r for s, r in zip(stems, rid)])
    if mismatch.any():
        k = int(np.flatnonzero(mismatch)[0])
        raise DataValidationError(
            f"{names[k]}: RecordID descriptor {int(rid[k])} differs from the file name"
        )
    rid = rid.astype(np.int64)
    if len(np.unique(rid)) != n_rec:
        dup = pd.Series(rid).duplicated()
        k = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataValidationError(f"{names[k]}: duplicate RecordID {rid[k]}")
    series = pd.DataFrame({"record_id": rid, "file": names})
    series["empty_parameter_lines"] = empty_per_record
    series.attrs[_EMPTY_PARAMETER_AT] = shown if empty.any() else ""
    for d in DESCRIPTORS[1:]:
        v = descr[d]
        series[d] = np.where(v == -1, np.nan, v)
    icu = series["ICUType"].to_numpy()
    for k in range(1, 5):
        series[f"ICUType_{k}"] = np.where(np.isnan(icu), np.nan, (icu == k).astype(np.float64))
    series[LABEL_COLUMN] = np.nan
    if outcomes is not None:
        out = read_outcomes(outcomes)
        lab = out.set_index("RecordID")[LABEL_COLUMN]
        series[LABEL_COLUMN] = series["record_id"].map(lab).to_numpy(dtype=np.float64)
    ts = ~is_descr
    observations = pd.DataFrame(
        {
            "record_id": rid[record[ts]],
            "time": hours[ts],
            "channel": pd.Categorical.from_codes(pid[ts], categories=list(PHYSIONET_CHANNELS)),
            "value": values[ts],
        }
    )
    return observations, series


def _warn_empty_parameters(what: str) -> None:
    message = f"PhysioNet 2012: skipped {what}; pass strict=True to make this an error"
    log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def read_outcomes(path: Path) -> pd.DataFrame:
    """Outcomes-*.txt (RecordID, SAPS-I, SOFA, Length_of_stay, Survival, In-hospital_death)."""
    out = pd.read_csv(path)
    for col in ("RecordID", LABEL_COLUMN):
        if col not in out.columns:
            raise DataValidationError(
                f"{path}: missing column {col!r}; columns are {list(out.columns)}"
            )
    return out


def build_table(
    observations: pd.DataFrame, series: pd.DataFrame, quantization_minutes: float | None = None
) -> SeriesTable:
    """``SeriesTable`` (absolute hours since admission) from :func:`parse_records` output."""
    times = observations["time"].to_numpy(dtype=np.float64)
    if quantization_minutes:
        step = quantization_minutes / 60.0
        times = np.round(times / step) * step
    index = pd.Index(series["record_id"].to_numpy())
    codes = index.get_indexer(observations["record_id"].to_numpy())
    return SeriesTable.from_long(
        series_ids=[int(r) for r in series["record_id"]],
        series_codes=codes,
        times=times,
        channel_codes=observations["channel"].cat.codes.to_numpy(dtype=np.int64),
        values=observations["value"].to_numpy(dtype=np.float64),
        channels=list(PHYSIONET_CHANNELS),
        time_origin="absolute",
        duplicates="mean",
        static=series[list(STATIC_NAMES)].to_numpy(dtype=np.float64),
        static_names=list(STATIC_NAMES),
        labels=series[LABEL_COLUMN].to_numpy(dtype=np.float64),
        time_axis=TimeAxis(kind="numeric", unit_hours=1.0),
        source="PhysioNet 2012",
    )


# ---------------------------------------------------------------------- cache
def _source_key(paths: Sequence[Path | None], extra: str) -> str:
    h = hashlib.sha256(f"v{PARSER_VERSION}|{extra}".encode())
    for p in paths:
        if p is None:
            h.update(b"<none>")
            continue
        p = Path(p)
        entries = sorted(p.glob("*.txt")) if p.is_dir() else [p]
        for e in entries:
            st = e.stat()
            h.update(f"{e.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _save_cache(table: SeriesTable, directory: Path) -> None:
    """Write into a private temporary directory, then rename it into place (atomic, so
    concurrent writers, e.g. DDP ranks, never leave a half-written cache; an error while
    writing leaves no cache and no temporary files)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".tmp", dir=directory.parent))
    try:
        rows = {"time": table.times}
        rows.update({c: table.values[:, j] for j, c in enumerate(table.channels)})
        pq.write_table(pa.table(rows), tmp / "rows.parquet")
        per = {"series_id": np.asarray(table.series_ids, dtype=np.int64), "length": table.lengths}
        per["time_offset"] = table.time_offset
        per.update({s: table.static[:, k] for k, s in enumerate(table.static_names)})
        per["label"] = table.labels
        pq.write_table(pa.table(per), tmp / "series.parquet")
        meta = {"channels": table.channels, "static_names": table.static_names, "info": table.info}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(directory)
        except OSError:
            if _load_cache(directory) is not None:  # another process finished first: keep it
                shutil.rmtree(tmp, ignore_errors=True)
                return
            # an unreadable cache (e.g. from an interrupted older version): replace it
            stale = Path(tempfile.mkdtemp(prefix=directory.name + ".stale", dir=directory.parent))
            directory.rename(stale / "cache")
            shutil.rmtree(stale, ignore_errors=True)
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cache(directory: Path) -> SeriesTable | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        rows = pq.read_table(directory / "rows.parquet")
        per = pq.read_table(directory / "series.parquet").to_pandas()
    except (OSError, ValueError, pa.ArrowInvalid):
        return None
    channels, static_names = meta["channels"], meta["static_names"]
    values = np.column_stack([rows.column(c).to_numpy() for c in channels])
    offsets = np.zeros(len(per) + 1, dtype=np.int64)
    np.cumsum(per["length"].to_numpy(), out=offsets[1:])
    return SeriesTable(
        series_ids=per["series_id"].tolist(),
        offsets=offsets,
        times=rows.column("time").to_numpy(),
        values=values,
        channels=channels,
        time_offset=per["time_offset"].to_numpy(),
        static=per[static_names].to_numpy(dtype=np.float64),
        static_names=static_names,
        labels=per["label"].to_numpy(dtype=np.float64),
        time_axis=TimeAxis(kind="numeric", unit_hours=1.0),
        info=meta["info"],
        source=f"PhysioNet 2012 (cache {directory})",
    )


def load_physionet2012(
    root: str | os.PathLike | None = None,
    sets: Sequence[str] = ("a",),
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    quantization_minutes: float | None = None,
    progress: bool = True,
    strict: bool = False,
) -> SeriesTable:
    """Parse (or load from cache) PhysioNet 2012 sets into one ``SeriesTable``.

    Lines with an empty parameter name are skipped with a warning naming record and line, and
    counted in ``info["empty_parameter_lines_skipped"]`` (so in the data summary); with
    ``strict=True`` they raise a ``DataValidationError`` naming them (a cached parse that
    skipped lines is parsed again to name them).
    """
    root = Path(root) if root is not None else default_root()
    tables = []
    for set_name in sets:
        records, outcomes = find_sources(root, set_name)
        key = _source_key([records, outcomes], f"{set_name}|q={quantization_minutes}")
        cache = Path(cache_dir or default_cache_dir()) / "physionet2012" / f"set-{set_name}-{key}"
        table = _load_cache(cache) if use_cache else None
        skipped = 0 if table is None else int(table.info.get(EMPTY_PARAMETER_KEY, 0))
        if table is not None and skipped and strict:
            table = None  # parse again: the strict parse raises naming every skipped line
        elif table is not None and skipped:
            _warn_empty_parameters(
                f"{skipped} line(s) with an empty parameter name (e.g. '10:45,,1.9') of "
                f"{records}: {table.info.get(_EMPTY_PARAMETER_AT, '')} (cached parse {cache})"
            )
        if table is None:
            obs, series = parse_records(records, outcomes, progress=progress, strict=strict)
            table = build_table(obs, series, quantization_minutes)
            table.info.update(
                {
                    "set": set_name,
                    "records": table.num_series,
                    "outcomes_file": outcomes is not None,
                    "descriptor_unknown_-1_as_nan": True,
                    EMPTY_PARAMETER_KEY: int(series["empty_parameter_lines"].sum()),
                }
            )
            if series.attrs.get(_EMPTY_PARAMETER_AT):
                table.info[_EMPTY_PARAMETER_AT] = series.attrs[_EMPTY_PARAMETER_AT]
            if use_cache:
                try:
                    _save_cache(table, cache)
                except OSError as err:  # read-only cache location: parse again next time
                    log.warning("could not write PhysioNet cache %s: %s", cache, err)
            table.info["cache"] = "miss"
        else:
            table.info["cache"] = "hit"
        tables.append(table)
    return tables[0] if len(tables) == 1 else _concat_tables(tables)


def _concat_tables(tables: Sequence[SeriesTable]) -> SeriesTable:
    offsets = [np.zeros(1, dtype=np.int64)]
    base = 0
    for t in tables:
        offsets.append(t.offsets[1:] + base)
        base += t.offsets[-1]
    info = {k: v for t in tables for k, v in t.info.items()}
    info["records"] = sum(t.num_series for t in tables)
    info[EMPTY_PARAMETER_KEY] = sum(int(t.info.get(EMPTY_PARAMETER_KEY, 0)) for t in tables)
    at = "; ".join(t.info[_EMPTY_PARAMETER_AT] for t in tables if t.info.get(_EMPTY_PARAMETER_AT))
    info.pop(_EMPTY_PARAMETER_AT, None)
    if at:
        info[_EMPTY_PARAMETER_AT] = at
    return SeriesTable(
        series_ids=[i for t in tables for i in t.series_ids],
        offsets=np.concatenate(offsets),
        times=np.concatenate([t.times for t in tables]),
        values=np.concatenate([t.values for t in tables]),
        channels=tables[0].channels,
        time_offset=np.concatenate([t.time_offset for t in tables]),
        static=np.concatenate([t.static for t in tables]),
        static_names=tables[0].static_names,
        labels=np.concatenate([t.labels for t in tables]),
        time_axis=tables[0].time_axis,
        info=info,
        source=" + ".join(t.source for t in tables),
    )


# ---------------------------------------------------------------------- download
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Download ``url`` to ``dest`` atomically (an interrupted download leaves no file)."""
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)


def download_physionet2012(
    root: str | os.PathLike,
    sets: Sequence[str] = ("a",),
    base_url: str = PHYSIONET_URL,
    checksums: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``set-<x>.tar.gz`` and ``Outcomes-<x>.txt`` into ``root`` with SHA-256 checks.

    Expected digests come from ``checksums`` (file name -> hex digest) or else from the
    ``SHA256SUMS.txt`` PhysioNet publishes next to the files. Files already present with the
    right digest are not fetched again. A digest mismatch deletes the file and raises.

    Raises:
        ConnectionError: offline / server unreachable, with instructions for manual placement.
        ValueError: checksum mismatch or a file missing from the checksum list.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    wanted = [f for s in sets for f in (f"set-{s}.tar.gz", f"Outcomes-{s}.txt")]
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    try:
        if checksums is None:
            sums = root / "SHA256SUMS.txt"
            _fetch(base_url + "SHA256SUMS.txt", sums, timeout)
            checksums = {}
            for line in sums.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2:
                    checksums[parts[1].lstrip("*")] = parts[0].lower()
        for name in wanted:
            if name not in checksums:
                raise ValueError(f"no SHA-256 checksum known for {name} (from {base_url})")
            dest = root / name
            if dest.exists() and _sha256(dest) == checksums[name]:
                continue
            log.info("downloading %s", base_url + name)
            _fetch(base_url + name, dest, timeout)
            digest = _sha256(dest)
            if digest != checksums[name]:
                dest.unlink()
                raise ValueError(
                    f"checksum mismatch for {name} from {base_url}: expected "
                    f"{checksums[name]}, got {digest}; the file was deleted"
                )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise ConnectionError(
            f"could not download PhysioNet 2012 from {base_url} ({err}). "
            + _manual_instructions(root, sets[0])
        ) from err
    return root


# ---------------------------------------------------------------------- DataModule
class PhysioNet2012DataModule(IrregularDataModule):
    """PhysioNet 2012 ICU records (37 channels, 8 static covariates, in-hospital death label).

    Args:
        root: directory holding ``set-a.tar.gz`` (or ``set-a/``) and ``Outcomes-a.txt``;
            default ``$TSODE_PHYSIONET_DIR`` or ``~/.cache/tsode/physionet2012``.
        sets: which sets to load (``("a",)``, ``("a", "b")``, ...).
        download: fetch missing files from PhysioNet (checksum-verified) in ``prepare_data``.
        base_url: download location (tests point it at a local server).
        cache_dir: where parsed Parquet caches live (default ``$TSODE_CACHE_DIR`` or
            ``~/.cache/tsode``); ``use_cache=False`` always re-parses.
        quantization_minutes: round times to this grid (e.g. 6 or 60 as in the latent ODE
            paper; repeated entries are then averaged). None keeps minute resolution.
        strict: raise on record lines with an empty parameter name instead of skipping them
            (with a warning naming record and line; counted in the data summary).
        progress: show a progress bar while parsing (on a terminal).
        base: ``task``, ``loader``, ``split_fractions``, ``splits``, ``min_time_points``,
            ``normalize``, ``seed``: see :class:`IrregularDataModule`. A forecast task naming
            neither ``cutoff`` nor ``cutoff_fraction`` observes the first
            :attr:`default_cutoff` (24) hours; any cutoff given is used as given. Batches of
            64 unless ``loader.batch_size`` says otherwise.
    """

    default_cutoff: ClassVar[float | None] = DEFAULT_CUTOFF
    default_loader: ClassVar[LoaderConfig] = LoaderConfig(batch_size=64)

    def __init__(
        self,
        root: str | None = None,
        sets: tuple[str, ...] = ("a",),
        download: bool = False,
        base_url: str = PHYSIONET_URL,
        cache_dir: str | None = None,
        use_cache: bool = True,
        quantization_minutes: float | None = None,
        progress: bool = True,
        strict: bool = False,
        **base: Any,
    ):
        super().__init__(**base)
        self.root = Path(root) if root is not None else default_root()
        self.sets = tuple(sets)
        self.download = download
        self.base_url = base_url
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.quantization_minutes = quantization_minutes
        self.progress = progress
        self.strict = strict

    @property
    def channels(self) -> list[str]:
        return list(PHYSIONET_CHANNELS)

    @property
    def static_names(self) -> list[str]:
        return list(STATIC_NAMES)

    def _download_missing(self) -> None:
        if not self.download:
            return
        missing = []
        for s in self.sets:
            try:
                find_sources(self.root, s)
            except FileNotFoundError:
                missing.append(s)
        if missing:
            download_physionet2012(self.root, missing, base_url=self.base_url)

    def prepare_data(self) -> None:
        """Download missing files (``download=True``) and parse once into the cache.

        Lightning calls this on one process only, so DDP ranks then all hit the cache.
        """
        self._download_missing()
        if self.use_cache:
            self._load()

    def _load(self) -> SeriesTable:
        return load_physionet2012(
            self.root,
            self.sets,
            cache_dir=self.cache_dir,
            use_cache=self.use_cache,
            quantization_minutes=self.quantization_minutes,
            progress=self.progress,
            strict=self.strict,
        )

    def load_table(self) -> SeriesTable:
        self._download_missing()
        return self._load()
