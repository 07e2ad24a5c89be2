"""Load safety: a saved forecaster or checkpoint never runs code it names (issue: reliability)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import tsode
from tsode.api import Forecaster, load_checkpoint_weights
from tsode.models.baselines import LOCF


@pytest.fixture(scope="module")
def saved(synthetic_long_frame, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    frame: pd.DataFrame = synthetic_long_frame(12)
    work = tmp_path_factory.mktemp("safety")
    fc = Forecaster("locf", trainer_kwargs={"max_epochs": 1, "enable_progress_bar": False},
                    tracking=False, verbose=False, work_dir=work)
    return fc.fit(frame, cutoff=24.0, batch_size=8).save(work / "fc")


def _tamper(saved: Path, tmp_path: Path, **changes) -> Path:  # noqa: ANN003
    payload = torch.load(saved / "forecaster.pt", weights_only=True)
    payload.update(changes)
    out = tmp_path / "tampered"
    out.mkdir()
    torch.save(payload, out / "forecaster.pt")
    return out


@pytest.mark.parametrize(
    ("model_class", "hparams"),
    [
        ("subprocess.Popen", {"args": ["touch", "PWNED"]}),
        ("os.system", {"command": "touch PWNED"}),
        ("builtins.eval", {"source": "open('PWNED', 'w')"}),
        ("tsode_nonexistent_module.Evil", {}),  # never imported
        (["not", "a", "string"], {}),
    ],
)
def test_load_refuses_class_outside_tsode_before_calling_anything(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_class, hparams  # noqa: ANN001
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = _tamper(saved, tmp_path, model_class=model_class, hyper_parameters=hparams)
    with pytest.raises(ValueError, match=r"forecaster\.pt: refusing to load model class .*register_model"):
        Forecaster.load(bad)
    assert not (tmp_path / "PWNED").exists()


def test_load_refuses_non_model_hyper_parameters(saved: Path, tmp_path: Path) -> None:
    bad = _tamper(saved, tmp_path, hyper_parameters=["x"])
    with pytest.raises(ValueError, match="'hyper_parameters' is not a mapping"):
        Forecaster.load(bad)


def test_registered_user_class_loads(saved: Path, tmp_path: Path) -> None:
    class MyLOCF(LOCF):
        pass

    path = f"{MyLOCF.__module__}.{MyLOCF.__qualname__}"
    bad = _tamper(saved, tmp_path, model_class=path)
    with pytest.raises(ValueError, match="refusing to load model class"):
        Forecaster.load(bad)
    tsode.register_model(MyLOCF)
    assert type(Forecaster.load(bad).model) is MyLOCF


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated"])
def test_truncated_or_empty_saved_file_names_the_file(saved: Path, tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "broken"
    out.mkdir()
    full = (saved / "forecaster.pt").read_bytes()
    (out / "forecaster.pt").write_bytes(content or b"")
    with pytest.raises(ValueError, match=r"broken/forecaster\.pt: not a readable saved forecaster"):
        Forecaster.load(out)
    (out / "forecaster.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"broken/forecaster\.pt: corrupt, or holds objects"):
        Forecaster.load(out)
    (out / "forecaster.pt").write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match=r"broken/forecaster\.pt: not a readable saved forecaster"):
        Forecaster.load(out)


def test_checkpoint_weights_never_unpickle_objects(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (open, (str(tmp_path / "PWNED"), "w"))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "callbacks": Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.ckpt: checkpoint holds objects .* refuses"):
        load_checkpoint_weights(path)
    assert not (tmp_path / "PWNED").exists()
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"evil\.ckpt: not a readable checkpoint"):
        load_checkpoint_weights(path)


def test_pyfunc_load_context_refuses_tampered_model(saved: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tsode.pyfunc import ARTIFACT_KEY, ForecasterModel

    bad = _tamper(saved, tmp_path, model_class="subprocess.Popen", hyper_parameters={"args": ["true"]})
    with pytest.raises(ValueError, match="refusing to load model class 'subprocess.Popen'"):
        ForecasterModel().load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: str(bad)}))
