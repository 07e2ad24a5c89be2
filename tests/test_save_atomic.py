"""A saved forecaster is one atomic unit: concurrent saves to one path never mix files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tsode.api import Forecaster
from tsode.data.atomic import atomic_directory

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(synthetic_long_frame, tmp_path_factory) -> tuple[Forecaster, Forecaster]:  # noqa: ANN001
    frame: pd.DataFrame = synthetic_long_frame(10)
    work = tmp_path_factory.mktemp("work")
    fits = []
    for hidden in (4, 6):  # two different models (hidden_dim tells them apart)
        fc = Forecaster(
            "gru_dt", hidden_dim=hidden, tracking=False, work_dir=work, verbose=False,
            trainer_kwargs={"max_epochs": 1, "enable_progress_bar": False,
                            "enable_model_summary": False},
        )
        fits.append(fc.fit(frame, cutoff=24.0, batch_size=4))
    return fits[0], fits[1]


def _read_pair(path: Path) -> tuple[dict, dict] | None:
    """forecaster.pt and config.yaml read through one handle on the directory (as a reader
    that opened it once); None if the directory was replaced and removed meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        with open(f"/proc/self/fd/{fd}/forecaster.pt", "rb") as fh:
            payload = torch.load(fh, weights_only=True)
        with open(f"/proc/self/fd/{fd}/config.yaml") as fh:
            config = yaml.safe_load(fh)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)
    return payload, config


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads through /proc/self/fd")
def test_concurrent_saves_to_one_path_never_mix(
    pair: tuple[Forecaster, Forecaster], tmp_path: Path
) -> None:
    path = tmp_path / "fc"
    pair[0].save(path)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[tuple[int, int]] = []

    def writer(fc: Forecaster) -> None:
        try:
            for _ in range(15):
                fc.save(path)
        except BaseException as err:  # reported below
            errors.append(err)

    def reader() -> None:
        while not stop.is_set():
            read = _read_pair(path)
            if read is not None:
                payload, config = read
                seen.append((payload["hyper_parameters"]["hidden_dim"],
                             config["model"]["init_args"]["hidden_dim"]))

    threads = [threading.Thread(target=writer, args=(fc,)) for fc in pair]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert errors == []
    assert seen and all(a == b for a, b in seen)  # every read: one save's pair, never a mix
    loaded = Forecaster.load(path)
    config = yaml.safe_load((path / "config.yaml").read_text())
    hidden = loaded.model.hparams["hidden_dim"]
    assert config["model"]["init_args"]["hidden_dim"] == hidden
    source = pair[0] if hidden == 4 else pair[1]
    for name, tensor in source.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fc"]  # no temporary directories
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "forecaster.pt"]


def test_save_refuses_a_directory_with_other_files(
    pair: tuple[Forecaster, Forecaster], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError) as err:
        pair[0].save(tmp_path)
    assert str(err.value) == (
        f"Forecaster.save: {tmp_path} holds other files (notes.txt); a saved forecaster "
        "replaces its whole directory, so save into a new or empty directory"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_atomic_directory_keeps_old_content_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "unit"
    with atomic_directory(dest) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(dest) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("interrupted")
    assert {p.name: p.read_text() for p in dest.iterdir()} == {"a": "1", "b": "1"}
    with atomic_directory(dest) as tmp:
        (tmp / "a").write_text("3")
    assert {p.name: p.read_text() for p in dest.iterdir()} == {"a": "3"}  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unit"]
