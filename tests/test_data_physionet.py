"""PhysioNet 2012: parser on fixture records in the official format, cache, download, real set-a."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from tsode.data import DataValidationError, PhysioNet2012DataModule, TaskConfig, load_physionet2012
from tsode.data.physionet import PHYSIONET_CHANNELS, STATIC_NAMES, download_physionet2012

RECORDS = {
    132539: """Time,Parameter,Value
00:00,RecordID,132539
00:00,Age,54
00:00,Gender,0
00:00,Height,-1
00:00,ICUType,4
00:00,Weight,-1
00:07,GCS,15
00:07,HR,73
00:07,Temp,35.1
00:37,HR,77
00:37,HR,79
01:37,HR,60
01:37,Weight,80.5
""",
    132540: """Time,Parameter,Value
00:00,RecordID,132540
00:00,Age,76
00:00,Gender,1
00:00,Height,175.3
00:00,ICUType,2
00:00,Weight,76
00:31,DiasABP,58
00:31,MAP,91
02:01,pH,7.38
47:59,HR,88
""",
    132541: """Time,Parameter,Value
00:00,RecordID,132541
00:00,Age,44
00:00,Gender,0
00:00,Height,-1
00:00,ICUType,3
00:00,Weight,56.7
00:10,HR,100
01:00,HR,101
""",
}
OUTCOMES = """RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death
132539,6,1,5,-1,0
132540,16,8,8,-1,1
"""


def _write_dir(root: Path, records: dict[int, str] = RECORDS) -> Path:
    d = root / "set-a"
    d.mkdir(parents=True)
    for rid, text in records.items():
        (d / f"{rid}.txt").write_text(text)
    (root / "Outcomes-a.txt").write_text(OUTCOMES)
    return root


def _write_tarball(root: Path, records: dict[int, str] = RECORDS) -> Path:
    src = root / "src"
    _write_dir(src, records)
    root.mkdir(exist_ok=True)
    with tarfile.open(root / "set-a.tar.gz", "w:gz") as tar:
        tar.add(src / "set-a", arcname="set-a")
    (root / "Outcomes-a.txt").write_text(OUTCOMES)
    return root / "set-a.tar.gz"


@pytest.mark.parametrize("layout", ["dir", "tarball"])
def test_parser_on_fixture_records(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "pn"
    if layout == "dir":
        _write_dir(root)
    else:
        _write_tarball(root)
    table = load_physionet2012(root, cache_dir=tmp_path / "cache", progress=False)
    assert table.series_ids == [132539, 132540, 132541]
    assert table.channels == list(PHYSIONET_CHANNELS) and table.static_names == list(STATIC_NAMES)
    hr = table.channels.index("HR")
    t, v = table.series(0)
    np.testing.assert_allclose(t, [7 / 60, 37 / 60, 97 / 60])  # absolute hours since admission
    np.testing.assert_allclose(v[:, hr], [73, 78, 60])  # 77 and 79 at 00:37 averaged
    assert v[2, table.channels.index("Weight")] == 80.5  # later Weight is a time series
    assert np.isnan(v[0, table.channels.index("Weight")])
    assert table.info["duplicate_entries_merged"] == 1
    assert table.times[table.offsets[2] - 1] == pytest.approx(47 + 59 / 60)
    static = dict(zip(table.static_names, table.static[0]))
    assert static["Age"] == 54 and static["Gender"] == 0
    assert np.isnan(static["Height"]) and np.isnan(static["Weight"])  # -1 = unknown
    assert static["ICUType_4"] == 1 and static["ICUType_1"] == 0
    assert table.static[1, table.static_names.index("Weight")] == 76
    np.testing.assert_array_equal(table.labels[:2], [0, 1])
    assert np.isnan(table.labels[2])  # not in Outcomes
    assert table.mask.sum() == 6 + 4 + 2  # time-series entries after merging the duplicate


def test_cache_hit_and_invalidation(tmp_path: Path) -> None:
    root = _write_dir(tmp_path / "pn")
    cache = tmp_path / "cache"
    first = load_physionet2012(root, cache_dir=cache, progress=False)
    second = load_physionet2012(root, cache_dir=cache, progress=False)
    assert first.info["cache"] == "miss" and second.info["cache"] == "hit"
    entries = [p.name for p in (cache / "physionet2012").iterdir()]
    assert len(entries) == 1 and ".tmp" not in entries[0]  # renamed into place, no leftovers
    np.testing.assert_array_equal(first.values, second.values)
    np.testing.assert_array_equal(first.times, second.times)
    np.testing.assert_array_equal(first.static, second.static)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.series_ids == second.series_ids
    rec = root / "set-a" / "132541.txt"
    rec.write_text(RECORDS[132541] + "02:00,HR,99\n")
    os.utime(rec, ns=(1, 10**18))
    third = load_physionet2012(root, cache_dir=cache, progress=False)
    assert third.info["cache"] == "miss" and third.lengths[2] == 3


@pytest.mark.parametrize(
    ("record", "pattern"),
    [
        ("Time,Param,Value\n00:00,RecordID,1\n", r"1\.txt, line 1: expected header"),
        (
            "Time,Parameter,Value\n00:00,RecordID,1\n00:10,HR,70\n0x:20,HR,71\n",
            r"1\.txt, line 4, column 'Time'",
        ),
        (
            "Time,Parameter,Value\n00:00,RecordID,1\n00:10,HR,70\n00:20,Mood,3\n",
            r"1\.txt, line 4, column 'Parameter': unknown variable\(s\) \['Mood'\]; a record",
        ),
        (
            "Time,Parameter,Value\n00:00,RecordID,1\n00:10,HR,seventy\n",
            r"1\.txt, line 3, column 'Value': 'seventy'",
        ),
        ("Time,Parameter,Value\n00:00,RecordID,2\n00:10,HR,70\n", r"1\.txt: RecordID .*2"),
    ],
)
def test_parser_errors_name_file_and_line(tmp_path: Path, record: str, pattern: str) -> None:
    d = tmp_path / "set-a"
    d.mkdir()
    (d / "1.txt").write_text(record)
    with pytest.raises(DataValidationError, match=pattern):
        load_physionet2012(tmp_path, use_cache=False, progress=False)


def test_missing_files_explain_manual_placement(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"set-a\.tar\.gz.*Outcomes-a\.txt.*physionet"):
        PhysioNet2012DataModule(root=str(tmp_path), cache_dir=str(tmp_path / "c")).setup()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture()
def http_root(tmp_path: Path):
    """A local HTTP server on 127.0.0.1 serving a fixture copy of the official files."""
    served = tmp_path / "served"
    served.mkdir()
    tarball = _write_tarball(tmp_path / "build")
    (served / "set-a.tar.gz").write_bytes(tarball.read_bytes())
    (served / "Outcomes-a.txt").write_text(OUTCOMES)
    sums = "".join(
        f"{hashlib.sha256((served / n).read_bytes()).hexdigest()} {n}\n"
        for n in ("set-a.tar.gz", "Outcomes-a.txt")
    )
    (served / "SHA256SUMS.txt").write_text(sums)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_verifies_checksums(tmp_path: Path, http_root) -> None:
    served, url = http_root
    root = tmp_path / "downloaded"
    dm = PhysioNet2012DataModule(
        root=str(root),
        download=True,
        base_url=url,
        cache_dir=str(tmp_path / "c"),
        split_fractions=(0.34, 0.33, 0.33),
        task=TaskConfig(cutoff=1.0),
    )
    dm.prepare_data()
    assert (root / "set-a.tar.gz").read_bytes() == (served / "set-a.tar.gz").read_bytes()
    dm.setup()
    assert dm.table.num_series == 3 and dm.num_static == 8
    # a tampered file on the server is rejected and not kept
    (served / "Outcomes-a.txt").write_text(OUTCOMES + "132541,1,1,1,1,1\n")
    other = tmp_path / "other"
    with pytest.raises(ValueError, match=r"checksum mismatch for Outcomes-a\.txt"):
        download_physionet2012(other, base_url=url)
    assert not (other / "Outcomes-a.txt").exists()


def test_offline_download_gives_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=r"could not download.*place them in"):
        download_physionet2012(tmp_path, base_url=f"http://127.0.0.1:{port}/", timeout=5)


def _real_root() -> Path:
    env = os.environ.get("TSODE_PHYSIONET_DIR")
    return (
        Path(env)
        if env
        else Path(__file__).resolve().parents[1].parent / "shared/data/physionet2012"
    )


@pytest.mark.skipif(
    not (_real_root() / "set-a.tar.gz").exists() and not (_real_root() / "set-a").exists(),
    reason="PhysioNet 2012 set-a not available",
)
def test_real_set_a(tmp_path_factory) -> None:
    cache = os.environ.get("TSODE_CACHE_DIR") or str(tmp_path_factory.mktemp("pncache"))
    dm = PhysioNet2012DataModule(root=str(_real_root()), cache_dir=cache, progress=False)
    dm.setup()
    table = dm.table
    assert len(set(table.series_ids)) == table.num_series > 3950  # 4000 minus too-short records
    assert (table.times >= 0).all() and (table.times <= 48.0 + 1e-9).all()
    mortality = np.nanmean(table.labels)
    assert 0.12 < mortality < 0.16  # set-a in-hospital mortality is 13.85 %
    hr = table.values[:, table.channels.index("HR")]
    assert 60 < np.nanmedian(hr) < 110
    batch = next(iter(dm.train_dataloader()))
    assert batch.static.shape == (64, 8) and batch.context.values.shape[-1] == 37
    assert (batch.context.times[batch.context.time_mask] <= 24.0).all()


def test_two_sets_are_concatenated(tmp_path: Path) -> None:
    root = _write_dir(tmp_path / "pn")
    b = root / "set-b"
    b.mkdir()
    text = RECORDS[132541].replace("132541", "142541")
    (b / "142541.txt").write_text(text)
    (root / "Outcomes-b.txt").write_text(OUTCOMES.splitlines()[0] + "\n142541,1,1,1,1,1\n")
    table = load_physionet2012(root, sets=("a", "b"), cache_dir=tmp_path / "c", progress=False)
    assert table.series_ids == [132539, 132540, 132541, 142541]
    np.testing.assert_array_equal(table.lengths, [3, 3, 2, 2])
    np.testing.assert_array_equal(
        table.values[-2:], table.values[table.offsets[2] : table.offsets[3]]
    )
    assert table.labels[-1] == 1 and table.static.shape == (4, 8)


def test_unreadable_cache_is_replaced_and_failed_writes_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tsode.data.physionet as physionet

    root = _write_dir(tmp_path / "pn")
    cache = tmp_path / "cache"
    load_physionet2012(root, cache_dir=cache, progress=False)
    (entry,) = (cache / "physionet2012").iterdir()
    (entry / "rows.parquet").write_bytes(b"truncated")  # e.g. an interrupted older writer
    again = load_physionet2012(root, cache_dir=cache, progress=False)
    assert again.info["cache"] == "miss"
    assert load_physionet2012(root, cache_dir=cache, progress=False).info["cache"] == "hit"
    assert [p.name for p in (cache / "physionet2012").iterdir()] == [entry.name]

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError("disk full")

    other = tmp_path / "cache2"
    monkeypatch.setattr(physionet.pq, "write_table", broken)
    table = load_physionet2012(root, cache_dir=other, progress=False)  # warns, still parses
    assert table.num_series == 3
    assert list((other / "physionet2012").iterdir()) == []  # no half-written cache, no temp dir


class _Terminal:
    """A stderr stand-in that claims to be a terminal and keeps what is written."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("layout", ["dir", "tarball"])
def test_parsing_shows_a_progress_bar_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    root = tmp_path / "pn"
    _write_dir(root) if layout == "dir" else _write_tarball(root)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    load_physionet2012(root, cache_dir=tmp_path / "cache", progress=False)
    assert "parsing" not in terminal.text  # progress=False: silent
    load_physionet2012(root, cache_dir=tmp_path / "cache2", progress=True)
    assert "parsing set-a" in terminal.text and "3" in terminal.text and "rec" in terminal.text


# a record with two lines whose parameter name is empty (as in public copies of the data)
_EMPTY_NAME_RECORD = RECORDS[132541] + "10:45,,1.9\n11:00,HR,102\n11:30,,2.0\n"


def test_empty_parameter_lines_are_skipped_counted_and_warned(tmp_path: Path) -> None:
    root = tmp_path / "pn"
    _write_tarball(root, {**RECORDS, 132541: _EMPTY_NAME_RECORD})
    cache = tmp_path / "cache"
    member = f"{root / 'set-a.tar.gz'}:set-a/132541.txt"
    expected = (
        "PhysioNet 2012: skipped 2 line(s) with an empty parameter name (e.g. '10:45,,1.9') "
        f"in 1 record(s) of {root / 'set-a.tar.gz'}: {member}, line 10; {member}, line 12; "
        "pass strict=True to make this an error"
    )
    with pytest.warns(UserWarning) as record:
        table = load_physionet2012(root, cache_dir=cache, progress=False)
    assert [str(w.message) for w in record] == [expected]
    assert table.info["empty_parameter_lines_skipped"] == 2
    hr = table.channels.index("HR")
    t, v = table.series(2)  # the other lines of the record are kept
    np.testing.assert_allclose(t, [10 / 60, 1.0, 11.0])
    np.testing.assert_allclose(v[:, hr], [100, 101, 102])
    with pytest.warns(UserWarning, match=r"skipped 2 line\(s\) .*132541\.txt, line 10.*cached"):
        again = load_physionet2012(root, cache_dir=cache, progress=False)
    assert again.info["cache"] == "hit" and again.info["empty_parameter_lines_skipped"] == 2
    dm = PhysioNet2012DataModule(
        root=str(root), cache_dir=str(cache), progress=False, split_fractions=(0.34, 0.33, 0.33)
    )
    with pytest.warns(UserWarning, match="empty parameter name"):
        dm.setup()
    assert dm.summary.counts["empty_parameter_lines_skipped"] == 2


def test_empty_parameter_lines_raise_in_strict_mode(tmp_path: Path) -> None:
    root = tmp_path / "pn"
    _write_tarball(root, {**RECORDS, 132541: _EMPTY_NAME_RECORD})
    cache = tmp_path / "cache"
    member = f"{root / 'set-a.tar.gz'}:set-a/132541.txt"
    expected = (
        f"{member}, line 10, column 'Parameter': empty parameter name; 2 line(s) with an empty "
        f"parameter name (e.g. '10:45,,1.9') in 1 record(s) of {root / 'set-a.tar.gz'}: "
        f"{member}, line 10; {member}, line 12. Remove these lines, or load with strict=False "
        "to skip them"
    )
    with pytest.raises(DataValidationError) as err:
        load_physionet2012(root, cache_dir=cache, progress=False, strict=True)
    assert str(err.value) == expected
    with pytest.warns(UserWarning):
        load_physionet2012(root, cache_dir=cache, progress=False)  # writes a cache that skipped
    with pytest.raises(DataValidationError) as err:  # a cached lenient parse does not hide them
        PhysioNet2012DataModule(
            root=str(root), cache_dir=str(cache), progress=False, strict=True
        ).setup()
    assert str(err.value) == expected
    clean = tmp_path / "clean"
    _write_tarball(clean)
    assert load_physionet2012(clean, use_cache=False, progress=False, strict=True).num_series == 3
