"""Integration: every model trained a few hundred steps on the synthetic ICU data beats LOCF on
held-out series (a quality threshold on the test split, not a time limit)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tsode.data import LoaderConfig, SyntheticICUDataModule
from tsode.models import MODELS
from tsode.solvers import SolverConfig

pytestmark = pytest.mark.slow

FAST_SOLVER = SolverConfig(method="rk4", step_size=0.5)
CONFIGS = {
    "odernn": dict(hidden_dim=32, ode_hidden_dim=32, ode_layers=2, lr=1e-2, solver=FAST_SOLVER),
    "latent_ode": dict(
        latent_dim=8, rec_dim=16, ode_hidden_dim=32, ode_layers=2, rec_ode_hidden_dim=32,
        rec_ode_layers=2, gru_units=32, decoder_layers=1, decoder_hidden_dim=32, lr=1e-2,
        kl_warmup_steps=50, solver=FAST_SOLVER,
    ),
    "gru_dt": dict(hidden_dim=32, lr=1e-2),
    "mean": {},
}


@pytest.fixture(scope="module")
def datamodule():
    dm = SyntheticICUDataModule(num_series=160, max_obs=40, loader=LoaderConfig(batch_size=16), seed=0)
    dm.setup()
    return dm


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def fit_and_test(model, dm, steps: int, tmp_path) -> float:
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, num_sanity_val_steps=0,
        limit_val_batches=0, default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    return trainer.test(model, dm, verbose=False)[0]["test/mse"]


@pytest.fixture(scope="module")
def locf_mse(datamodule, tmp_path_factory):
    return fit_and_test(MODELS["locf"](num_channels=datamodule.num_channels), datamodule, 1,
                        tmp_path_factory.mktemp("locf"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_model_beats_locf_on_held_out_series(name, datamodule, locf_mse, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name](num_channels=datamodule.num_channels, **CONFIGS[name])
    mse = fit_and_test(model, datamodule, 200, tmp_path)
    assert mse < 0.8 * locf_mse, f"{name}: test MSE {mse:.3f} vs LOCF {locf_mse:.3f}"
