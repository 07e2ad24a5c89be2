"""Config groups (issue 12, section 3): the models' ``optim`` group, its per-model defaults, and
the former flat optimizer arguments (Python calls, old checkpoints, old recipes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tsode import OptimConfig
from tsode.cli import main
from tsode.config import CONSTANT_OPTIM, DECAYED_OPTIM
from tsode.models.baselines import GRUDelta
from tsode.models.latent_ode import LatentODE
from tsode.models.ncde import NeuralCDE
from tsode.models.odernn import ODERNN

REPO = Path(__file__).resolve().parents[1]


def test_per_model_defaults_and_partial_groups() -> None:
    assert ODERNN(num_channels=2).optim == DECAYED_OPTIM
    assert LatentODE(num_channels=2).optim == DECAYED_OPTIM
    assert GRUDelta(num_channels=2).optim == CONSTANT_OPTIM
    assert NeuralCDE(num_channels=2).optim == CONSTANT_OPTIM
    assert DECAYED_OPTIM.lr == 3e-3 and DECAYED_OPTIM.scheduler == "exponential"
    assert DECAYED_OPTIM.scheduler_gamma == 0.95 and CONSTANT_OPTIM.lr == 1e-3
    model = ODERNN(num_channels=2, optim=OptimConfig(lr=0.1))
    assert model.optim.lr == 0.1 and model.optim.scheduler == "exponential"  # keeps the decay
    assert ODERNN(num_channels=2, optim={"lr": 0.2}).optim.lr == 0.2
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(optimizer="lbfgs")


def test_flat_arguments_map_into_the_group_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="optim=OptimConfig"):
        model = ODERNN(num_channels=2, lr=1e-2, scheduler="none")
    assert model.optim.lr == 1e-2 and model.optim.scheduler == "none"
    assert "lr" not in model.hparams and model.hparams["optim"] == model.optim
    with pytest.raises(TypeError, match="bogus"):
        ODERNN(num_channels=2, bogus=1)


def test_checkpoint_with_flat_hyperparameters_loads(tmp_path: Path) -> None:
    """A checkpoint written before the group (flat lr / scheduler keys) still loads."""
    model = GRUDelta(num_channels=2, hidden_dim=4)
    hparams = {"num_channels": 2, "hidden_dim": 4, "lr": 0.005, "weight_decay": 0.0, "optimizer": "adam",
               "scheduler": "none", "scheduler_gamma": 0.5, "scheduler_step_size": 10,
               "channel_means": None, "channel_stds": None}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": "2.4.0"}, path)
    with pytest.warns(DeprecationWarning):
        loaded = GRUDelta.load_from_checkpoint(path)
    assert loaded.optim.lr == 0.005
    saved = tmp_path / "new.ckpt"
    torch.save({"state_dict": loaded.state_dict(), "hyper_parameters": dict(loaded.hparams),
                "pytorch-lightning_version": "2.4.0"}, saved)
    assert GRUDelta.load_from_checkpoint(saved).optim == loaded.optim  # weights_only, no warning


def test_old_flat_recipe_key_names_the_new_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = yaml.safe_load((REPO / "recipes" / "table_forecast.yaml").read_text())
    recipe["model"]["init_args"].pop("optim")
    recipe["model"]["init_args"]["lr"] = 0.005
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid configuration in {path}: key 'model.init_args.lr'" in err
    assert "moved to model.init_args.optim.lr" in err


@pytest.mark.parametrize("name", ["odernn", "latent_ode", "ncde", "gru_dt"])
def test_accepted_args_see_through_the_base_arguments(name: str) -> None:
    """Callers that filter keyword arguments by what a model accepts (the API, the benchmarks)
    must still see the arguments a model forwards to its base through ``**base``."""
    from tsode.config import accepted_args
    from tsode.models import MODELS

    accepted = accepted_args(MODELS[name])
    for arg in ("num_channels", "num_static", "channel_means", "channel_stds",
                "loss_weighting", "loss_channel_weights", "optim", "lr"):
        assert arg in accepted, arg


def test_bad_value_in_the_optim_block_names_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = yaml.safe_load((REPO / "recipes" / "table_forecast.yaml").read_text())
    recipe["model"]["init_args"]["optim"]["lr"] = -1.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code == 2
    headline = capsys.readouterr().err.splitlines()[0]
    assert f"invalid configuration in {path}: key 'model.init_args.optim.lr'" in headline
    assert "optim.lr must be > 0, got -1.0" in headline
