"""Config groups of the data modules (issue 12, section 3): the ``task:`` and ``loader:``
blocks, per-dataset defaults, the former flat arguments (Python calls with a warning, recipes
with an error naming the new key) and the flat keywords of ``Forecaster.fit``."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tsode.cli import main
from tsode.data import (
    LoaderConfig,
    PeriodicToyDataModule,
    PhysioNet2012DataModule,
    SyntheticICUDataModule,
    TableDataModule,
    TaskConfig,
)
from tsode.data.config import data_key_hint, group_data_args

REPO = Path(__file__).resolve().parents[1]


def test_blocks_and_dataset_defaults() -> None:
    icu = SyntheticICUDataModule(num_series=12)
    assert icu.task == TaskConfig("forecast", cutoff=24.0, seed=0)  # the dataset's 24 h
    assert icu.loader == LoaderConfig(batch_size=32, eval_batch_size=None, bucketing=True, num_workers=0)
    toy = PeriodicToyDataModule(num_series=12, seed=4)
    assert toy.task == TaskConfig("extrapolation", seed=4) and toy.loader.batch_size == 50
    assert toy.normalize is False
    physionet = PhysioNet2012DataModule(loader=LoaderConfig(num_workers=2))
    assert physionet.loader.batch_size == 64 and physionet.loader.num_workers == 2  # partial block
    assert physionet.eval_batch_size == 64
    # an explicit cutoff (24.0 included) or a fraction is kept as given; other kinds get none
    assert SyntheticICUDataModule(task=TaskConfig(cutoff=24.0)).task.cutoff == 24.0
    fraction = SyntheticICUDataModule(task={"kind": "forecast", "cutoff_fraction": 0.25}).task
    assert fraction.cutoff is None and fraction.cutoff_fraction == 0.25
    assert SyntheticICUDataModule(task="interpolation").task.cutoff is None
    assert TableDataModule(pd.DataFrame(), task="forecast").task.cutoff is None  # half the span
    # the task's hold-out seed: the module's seed unless the block sets its own
    assert SyntheticICUDataModule(seed=7, task="interpolation").task.seed == 7
    assert SyntheticICUDataModule(seed=7, task=TaskConfig("interpolation", seed=3)).task.seed == 3


def test_blocks_validate_their_fields() -> None:
    with pytest.raises(ValueError, match=r"loader.batch_size must be an integer >= 1"):
        SyntheticICUDataModule(loader=LoaderConfig(batch_size=0))
    with pytest.raises(ValueError, match=r"loader: unknown field\(s\) \['batch'\]"):
        SyntheticICUDataModule(loader={"batch": 8})
    with pytest.raises(ValueError, match=r"task: unknown field\(s\) \['cutof'\]"):
        SyntheticICUDataModule(task={"kind": "forecast", "cutof": 3.0})
    with pytest.raises(ValueError, match="task.kind must be one of"):
        SyntheticICUDataModule(task="forcast")
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['batchsize'\]"):
        SyntheticICUDataModule(batchsize=8)


def test_flat_arguments_map_into_the_blocks_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning) as caught:
        dm = SyntheticICUDataModule(num_series=12, task="interpolation", holdout_fraction=0.2,
                                    batch_size=8, bucketing=False)
    message = str(caught[0].message)
    assert "holdout_fraction=0.2, batch_size=8, bucketing=False are deprecated" in message
    assert "task=TaskConfig(...) and loader=LoaderConfig(...)" in message
    assert caught[0].filename == __file__  # points at the caller
    assert dm.task == TaskConfig("interpolation", holdout_fraction=0.2, seed=0)
    assert dm.loader == LoaderConfig(batch_size=8, bucketing=False, num_workers=0)
    with pytest.warns(DeprecationWarning):  # on top of a block; a cutoff replaces a fraction
        dm = SyntheticICUDataModule(task=TaskConfig(cutoff_fraction=0.5, horizon=6.0), cutoff=12.0)
    assert (dm.task.cutoff, dm.task.cutoff_fraction, dm.task.horizon) == (12.0, None, 6.0)


def test_group_data_args_keeps_other_arguments() -> None:
    grouped = group_data_args({"task": "forecast", "cutoff": 3.0, "batch_size": 4, "id_col": "id"})
    assert grouped == {"task": {"kind": "forecast", "cutoff": 3.0},
                       "loader": LoaderConfig(batch_size=4), "id_col": "id"}
    assert group_data_args({"seed": 1}) == {"seed": 1}


def test_forecaster_style_flat_keywords_build_without_a_warning() -> None:
    frame = pd.DataFrame(
        [{"series_id": s, "time": float(t), "x": np.sin(s + t)} for s in range(10) for t in range(6)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        dm = TableDataModule(frame, **group_data_args(
            {"task": "forecast", "cutoff": 2.0, "horizon": 2.0, "batch_size": 4, "seed": 3,
             "split_fractions": (0.8, 0.2, 0.0)}
        ))
    assert dm.task == TaskConfig("forecast", cutoff=2.0, horizon=2.0, seed=3)
    assert dm.loader.batch_size == 4
    dm.setup("fit")
    assert max(len(b.series_ids) for b in dm.train_dataloader()) <= 4


@pytest.mark.parametrize(
    ("key", "new"),
    [("data.init_args.cutoff", "data.init_args.task.cutoff"),
     ("data.init_args.context_boundary", "data.init_args.task.context_boundary"),
     ("data.init_args.batch_size", "data.init_args.loader.batch_size"),
     ("data.init_args.num_workers", "data.init_args.loader.num_workers")],
)
def test_data_key_hint(key: str, new: str) -> None:
    assert data_key_hint(key).startswith(f"moved to {new} ")
    assert data_key_hint(new) is None and data_key_hint("model.init_args.cutoff") is None


@pytest.mark.parametrize(
    ("old", "value", "new"),
    [("cutoff", 12.0, "data.init_args.task.cutoff"), ("batch_size", 4, "data.init_args.loader.batch_size")],
)
def test_old_flat_data_key_in_a_recipe_names_the_new_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, old: str, value: float, new: str
) -> None:
    recipe = yaml.safe_load((REPO / "recipes" / "table_forecast.yaml").read_text())
    recipe["data"]["init_args"][old] = value
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid configuration in {path}: key 'data.init_args.{old}'" in err
    assert f"moved to {new}" in err


def test_block_field_errors_name_their_field() -> None:
    """A block's rejected field is named by the error itself (``ParameterError.param``), so
    the ``tsode`` command maps it to the recipe key without reading the message."""
    import pickle

    from tsode.config import OptimConfig, ParameterError
    from tsode.data import TaskConfig

    with pytest.raises(ParameterError) as info:
        TaskConfig(cutoff=-1.0)
    assert info.value.param == "task.cutoff"
    assert str(info.value) == "task.cutoff must be a finite number of hours >= 0 (hours since each series' origin), got -1.0"
    with pytest.raises(ParameterError) as info:
        TaskConfig(cutoff=1.0, cutoff_fraction=0.5)
    assert info.value.param == "task.cutoff"
    with pytest.raises(ParameterError) as info:
        LoaderConfig(batch_size=0)
    assert info.value.param == "loader.batch_size"
    with pytest.raises(ParameterError) as info:
        OptimConfig(lr=-1.0)
    assert info.value.param == "optim.lr" and isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))
    assert again.param == "optim.lr" and str(again) == str(info.value)


def test_flat_fields_on_a_mapping_block_keep_the_dataset_kind() -> None:
    with pytest.warns(DeprecationWarning):
        toy = PeriodicToyDataModule(num_series=12, task={"holdout_fraction": 0.2}, cutoff_fraction=0.4)
    assert toy.task.kind == "extrapolation" and toy.task.cutoff_fraction == 0.4
