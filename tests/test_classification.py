"""Series-level classification: task='classification' in the data modules, the classification
head of ODE-RNN / latent ODE / NCDE / GRU-dt (binary and multi-class), the latent ODE's joint
loss, metrics, the CLI link and Forecaster.fit(task='classification') / predict_proba."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from tsode.data import LoaderConfig, TableDataModule, TaskConfig
from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.data.series import DataValidationError
from tsode.models import MODELS
from tsode.solvers import SolverConfig

SMALL = {
    "odernn": dict(hidden_dim=8, ode_hidden_dim=8, ode_layers=1, decoder_hidden_dim=8),
    "latent_ode": dict(
        latent_dim=4, rec_dim=8, ode_hidden_dim=8, ode_layers=1, rec_ode_hidden_dim=8,
        rec_ode_layers=1, gru_units=8, decoder_hidden_dim=8, num_samples=1, num_predict_samples=2,
    ),
    "gru_dt": dict(hidden_dim=8, decoder_hidden_dim=8),
    "ncde": dict(hidden_dim=8, vf_width=8, vf_layers=1, decoder_width=8, decoder_layers=1),
}
RK4 = SolverConfig(method="rk4", step_size=1.0)


def build(name: str, seed: int = 0, num_channels: int = 2, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(SMALL[name], **extra)
    if name != "gru_dt":
        kwargs["solver"] = RK4
    return MODELS[name](num_channels=num_channels, **kwargs)


def make_batch(num_series: int = 32, length: int = 6, num_classes: int = 2, seed: int = 0):
    """Irregular series whose class is set by the level of channel 0 (channel 1 is noise);
    no target part (as task='classification' builds)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_series) % num_classes
    level = labels.float() * 2.0 - (num_classes - 1)  # -1/+1 (binary), -2/0/2 (K=3)
    times = torch.sort(torch.rand(num_series, length, generator=g) * 5.0, dim=1).values
    values = torch.randn(num_series, length, 2, generator=g) * 0.3
    values[..., 0] += level.unsqueeze(1)
    mask = torch.rand(num_series, length, 2, generator=g) < 0.8
    mask[:, 0, 0] = True
    values = torch.where(mask, values, torch.zeros_like(values))
    lengths = torch.full((num_series,), length)
    lengths[::5] = length - 2  # some padding
    steps = torch.arange(length).unsqueeze(0)
    pad = steps >= lengths.unsqueeze(1)
    last = times.gather(1, (lengths - 1).unsqueeze(1))
    times = torch.where(pad, last, times)
    mask = mask & ~pad.unsqueeze(-1)
    values = torch.where(mask, values, torch.zeros_like(values))
    context = SeriesPart(times, values, mask, lengths)
    target = SeriesPart(
        last.clone(), torch.zeros(num_series, 1, 2), torch.zeros(num_series, 1, 2, dtype=torch.bool),
        torch.zeros(num_series, dtype=torch.long),
    )
    return IrregularBatch(context, target, labels=labels.float(),
                          series_ids=list(range(num_series)), channels=["a", "b"])


def train_steps(model, batch, steps: int, lr: float = 0.02) -> None:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = model.step_result(batch).loss
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("name", list(SMALL))
def test_binary_head_learns_a_separable_label(name):
    batch = make_batch()
    model = build(name, num_classes=2)
    train_steps(model, batch, steps=30)
    with torch.no_grad():
        logits = model.classify(batch)
    assert logits.shape == (batch.batch_size, 2)
    auroc = binary_auroc(torch.softmax(logits, -1)[:, 1], batch.labels.long())
    assert float(auroc) > 0.9, float(auroc)


@pytest.mark.parametrize("name", ["gru_dt", "odernn"])
def test_multiclass_head(name):
    batch = make_batch(num_series=30, num_classes=3)
    model = build(name, num_classes=3)
    train_steps(model, batch, steps=40)
    with torch.no_grad():
        probs = model.predict_proba(batch)
    assert probs.shape == (30, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(30))
    accuracy = (probs.argmax(-1) == batch.labels.long()).float().mean()
    assert accuracy > 0.8


@pytest.mark.parametrize("name", list(SMALL))
def test_num_classes_zero_changes_nothing(name, forecast_batch):
    plain = build(name, num_channels=3).eval()
    explicit = build(name, num_channels=3, num_classes=0).eval()
    with_head = build(name, num_channels=3, num_classes=2).eval()
    assert plain.classifier is None and explicit.classifier is None
    assert plain.state_dict().keys() == explicit.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, explicit.state_dict()[key])
        assert torch.equal(value, with_head.state_dict()[key])  # the head comes on top
    assert {k for k in with_head.state_dict() if k not in plain.state_dict()} == {
        k for k in with_head.state_dict() if k.startswith("classifier.")
    }
    times = forecast_batch.target.times
    torch.manual_seed(3)
    a = plain.forecast(forecast_batch, times).mean
    torch.manual_seed(3)
    b = explicit.forecast(forecast_batch, times).mean
    assert torch.equal(a, b)
    torch.manual_seed(3)
    loss_a = plain.step_result(forecast_batch).loss
    torch.manual_seed(3)
    loss_b = explicit.compute_loss(forecast_batch).loss
    assert torch.equal(loss_a, loss_b)
    with pytest.raises(RuntimeError, match="num_classes=0"):
        plain.classify(forecast_batch)


def test_num_classes_one_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        build("gru_dt", num_classes=1)


@pytest.mark.parametrize("poisson", [False, True])
def test_latent_ode_joint_loss_is_negative_elbo_plus_weighted_ce(poisson):
    batch = make_batch(num_series=8)
    batch.labels[1] = float("nan")  # unknown labels take no part in the cross-entropy
    model = build("latent_ode", num_classes=2, classification_weight=100.0, poisson=poisson)
    model.sample_eps = lambda shape, like: torch.zeros(shape, dtype=like.dtype)
    model.train()
    result = model.step_result(batch)
    elbo_loss = model.compute_loss(batch).loss  # negative ELBO per observed entry (context)
    known = ~torch.isnan(batch.labels)
    ce = F.cross_entropy(model.classify(batch)[known], batch.labels[known].long())
    assert torch.allclose(result.loss, elbo_loss + 100.0 * ce)
    assert torch.allclose(result.logs["ce"], ce)
    assert result.prediction is None  # no target part: nothing to forecast
    mu, _, _ = model.posterior(batch)
    assert torch.allclose(model.series_summary(batch), mu)


def test_ce_alone_without_target_and_added_to_the_forecast_loss_with_one(forecast_batch):
    model = build("gru_dt", num_classes=2)
    batch = make_batch(num_series=8)
    result = model.step_result(batch)
    ce = F.cross_entropy(model.classify(batch), batch.labels.long())
    assert torch.allclose(result.loss, ce) and result.prediction is None
    model = build("gru_dt", num_channels=3, num_classes=2)
    labelled = IrregularBatch(
        forecast_batch.context, forecast_batch.target,
        labels=torch.arange(forecast_batch.batch_size).remainder(2).float(),
    )
    torch.manual_seed(0)
    both = model.step_result(labelled).loss
    torch.manual_seed(0)
    forecast_loss = model.compute_loss(labelled).loss
    ce = F.cross_entropy(model.classify(labelled), labelled.labels.long())
    assert torch.allclose(both, forecast_loss + ce)


# ---------------------------------------------------------------------- data


def frame(num_series: int = 24, seed: int = 0, num_classes: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(num_series):
        label = s % num_classes
        for t in np.sort(rng.uniform(0.0, 60.0, 10)):
            rows.append({"series_id": f"s{s}", "time": t, "a": rng.normal(0.3) + 2.0 * label,
                         "b": rng.normal(), "y": float(label)})
    return pd.DataFrame(rows)


def test_data_module_classification_task():
    df = frame()
    df.loc[df.series_id == "s3", "y"] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = TableDataModule(
            df,
            value_cols=["a", "b"],
            label_col="y",
            task=TaskConfig("classification", cutoff=48.0),
            loader=LoaderConfig(batch_size=64),
            split_fractions=(0.5, 0.25, 0.25),
        )
        dm.setup()
    assert dm.num_classes == 2
    assert sum(len(ds) for ds in dm.datasets.values()) == 23  # s3 has no label
    assert sum(r.get("no_label", 0) for r in dm.dropped_series().values()) == 1
    assert any("unknown (NaN) label" in str(w.message) for w in caught)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert not torch.isnan(batch.labels).any()
            assert int(batch.target.lengths.sum()) == 0  # no target part
            real = batch.context.time_mask
            assert float(batch.context.times[real].max()) <= 48.0
            assert "s3" not in batch.series_ids
    assert TableDataModule(df, value_cols=["a", "b"], label_col="y").num_classes == 0
    three = TableDataModule(frame(num_classes=3), value_cols=["a", "b"], label_col="y",
                            task="classification", split_fractions=(0.5, 0.25, 0.25))
    assert three.num_classes == 3


def test_non_integer_labels_and_missing_labels_are_clear_errors():
    df = frame()
    df.loc[df.series_id == "s5", "y"] = 0.5
    dm = TableDataModule(df, value_cols=["a", "b"], label_col="y", task="classification")
    with pytest.raises(DataValidationError, match=r"integers 0\.\.K-1.*s5"):
        dm.setup()
    dm = TableDataModule(frame(), value_cols=["a", "b"], task="classification")
    with pytest.raises(DataValidationError, match="label_col"):
        dm.setup()


def test_per_time_point_label_error_says_labels_are_per_series(tmp_path):
    """An hourly flag given as label_col (0 then 1 within a stay) is refused by Forecaster.fit
    with how to reduce it to one label per series; the suggested reductions are accepted."""
    from tsode import Forecaster

    df = frame(8)
    df["sepsis"] = 0.0
    late = (df.series_id == "s2") & (df.time > 30.0)  # s2 turns positive after 30 h
    df.loc[late, "sepsis"] = 1.0
    fc = Forecaster("gru_dt", tracking=False, verbose=False, work_dir=tmp_path, hidden_dim=4,
                    trainer_kwargs={"max_epochs": 1, "enable_progress_bar": False,
                                    "enable_model_summary": False})
    with pytest.raises(DataValidationError) as caught:
        fc.fit(df, value_cols=["a", "b"], label_col="sepsis", task="classification")
    message = str(caught.value)
    assert "series 's2' has conflicting values 0 and 1 in per-series column 'sepsis'" in message
    assert "Labels are per series" in message
    assert "df.groupby('series_id')['sepsis'].transform('max')" in message  # ever positive
    assert "transform('last')" in message and "sort_values(['series_id', 'time'])" in message
    # the reductions the message (and docs/data.md) suggest give one label per series
    ever = df.assign(sepsis=df.groupby("series_id")["sepsis"].transform("max"))
    ordered = df.sort_values(["series_id", "time"])
    last = ordered.assign(sepsis=ordered.groupby("series_id")["sepsis"].transform("last"))
    for reduced in (ever, last):
        dm = TableDataModule(reduced, value_cols=["a", "b"], label_col="sepsis",
                             task="classification", split_fractions=(0.5, 0.5, 0.0))
        dm.load_table()  # reads the labels: no conflict left
    # a static covariate that changes within a series keeps the plain message
    df["age"] = df["time"]
    with pytest.raises(DataValidationError, match="per-series column 'age'") as caught:
        fc.fit(df, value_cols=["a", "b"], static_cols=["age"])
    assert "Labels are per series" not in str(caught.value)


def test_lightning_fit_logs_classification_metrics(tmp_path):
    dm = TableDataModule(
        frame(32),
        value_cols=["a", "b"],
        label_col="y",
        task="classification",
        loader=LoaderConfig(batch_size=8),
        split_fractions=(0.5, 0.25, 0.25),
    )
    model = build("gru_dt", num_classes=dm.num_classes)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    for key in ("val/auroc", "val/auprc", "val/accuracy", "val/ce", "train/ce"):
        assert key in metrics and np.isfinite(float(metrics[key])), key
    assert "val/mse" not in metrics
    scores = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert {"test/auroc", "test/auprc", "test/accuracy", "test/ce"} <= set(scores)
    batch = next(iter(dm.test_dataloader()))
    out = model.eval().predict_step(batch)
    assert out["probabilities"].shape == (batch.batch_size, 2)
    assert out["series_ids"] == batch.series_ids


def test_forecaster_classification_fit_and_predict_proba(tmp_path):
    from tsode import Forecaster

    df = frame(32)
    fc = Forecaster("gru_dt", tracking=False, verbose=False, work_dir=tmp_path, patience=None,
                    trainer_kwargs={"max_epochs": 2, "enable_progress_bar": False,
                                    "enable_model_summary": False}, hidden_dim=8)
    fc.fit(df, value_cols=["a", "b"], label_col="y", task="classification", cutoff=48.0,
           batch_size=8)
    assert fc.model.num_classes == 2
    assert fc.fit_summary["monitor"] == "val/ce"
    probs = fc.predict_proba(df.drop(columns="y"))
    assert list(probs.columns) == ["series_id", "class", "probability"]
    assert len(probs) == 2 * 32
    totals = probs.groupby("series_id")["probability"].sum()
    assert np.allclose(totals, 1.0, atol=1e-6)
    saved = fc.save(tmp_path / "clf")
    again = Forecaster.load(saved)
    pd.testing.assert_frame_equal(again.predict_proba(df), probs)

    # evaluate: the classifier's metrics over the labelled series, from the same probabilities
    table = fc.evaluate(df)
    assert list(table.columns) == ["n_series", "auroc", "auprc", "accuracy", "ce"]
    assert table.loc["all", "n_series"] == 32
    p1 = probs[probs["class"] == 1].set_index("series_id")["probability"]
    labels = df.groupby("series_id")["y"].first().loc[p1.index]
    expected = float(binary_auroc(torch.tensor(p1.to_numpy()), torch.tensor(labels.to_numpy()).long()))
    assert table.loc["all", "auroc"] == pytest.approx(expected, abs=1e-6)
    expected_ce = float(-np.log(np.where(labels.to_numpy() == 1, p1.to_numpy(), 1 - p1.to_numpy())).mean())
    assert table.loc["all", "ce"] == pytest.approx(expected_ce, rel=1e-4)
    with pytest.raises(DataValidationError, match="no series with a known label"):
        fc.evaluate(df.drop(columns="y"))


def test_cli_links_num_classes(tmp_path, monkeypatch):
    from tsode.cli import run

    path = tmp_path / "table.csv"
    frame(24).to_csv(path, index=False)
    monkeypatch.chdir(tmp_path)
    cli = run([
        "fit",
        "--model", "tsode.models.baselines.GRUDelta", "--model.init_args.hidden_dim", "8",
        "--data", "tsode.data.TableDataModule", "--data.init_args.data", str(path),
        "--data.init_args.value_cols", "[a, b]", "--data.init_args.label_col", "y",
        "--data.init_args.task", "classification", "--data.init_args.loader.batch_size", "8",
        "--checkpoint.monitor", "val/auroc", "--checkpoint.mode", "max",
        "--trainer.fast_dev_run", "true", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])
    assert cli.model.num_classes == 2
    assert "val/ce" in cli.trainer.callback_metrics


def test_cli_fit_then_predict_writes_probabilities(tmp_path, monkeypatch):
    from tsode.cli import run

    path = tmp_path / "table.csv"
    frame(24).to_csv(path, index=False)
    monkeypatch.chdir(tmp_path)
    common = [
        "--model", "tsode.models.baselines.GRUDelta", "--model.init_args.hidden_dim", "8",
        "--data", "tsode.data.TableDataModule", "--data.init_args.data", str(path),
        "--data.init_args.value_cols", "[a, b]", "--data.init_args.label_col", "y",
        "--data.init_args.task.kind", "classification", "--data.init_args.loader.batch_size", "8",
        "--data.init_args.split_fractions", "[0.5, 0.25, 0.25]",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]
    run(["fit", *common, "--trainer.max_epochs", "1", "--checkpoint.monitor", "val/auroc",
         "--checkpoint.mode", "max", "--checkpoint.dirpath", str(tmp_path / "ckpt")])
    ckpt = next((tmp_path / "ckpt").glob("*.ckpt"))
    output = tmp_path / "probs.csv"
    run(["predict", *common, "--ckpt_path", str(ckpt), "--predictions.output", str(output)])
    probs = pd.read_csv(output)
    assert list(probs.columns) == ["series_id", "class", "probability", "label"]
    assert len(probs) == 2 * probs["series_id"].nunique() > 0
    assert np.allclose(probs.groupby("series_id")["probability"].sum(), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", list(SMALL))
def test_channel_summary_inputs_reach_the_head(name):
    """``classifier_inputs="state+channels"``: the head reads the state and each channel's
    summary; padding the batch does not change a series' logits."""
    batch = make_batch()
    model = build(name, num_classes=2, classifier_inputs="state+channels").eval()
    plain = build(name, num_classes=2).eval()
    extra = model.classifier.net[0].in_features - plain.classifier.net[0].in_features
    assert extra == 2 * 10  # 2 channels x (last, seen, age, 3 weighted means, spread, count, min, max)
    with torch.no_grad():
        logits = model.classify(batch)
        row = 5  # a padded row (lengths[::5] = length - 2)
        n = int(batch.context.lengths[row])
        alone = SeriesPart(*(x[row : row + 1, :n] if x.dim() > 1 else x[row : row + 1]
                             for x in (batch.context.times, batch.context.values, batch.context.mask,
                                       batch.context.lengths)))
        single = IrregularBatch(alone, batch.target, labels=batch.labels[row : row + 1],
                                series_ids=[row], channels=["a", "b"])
        torch.testing.assert_close(model.classify(single)[0], logits[row], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="classifier_inputs must be one of"):
        build(name, num_classes=2, classifier_inputs="channels")
