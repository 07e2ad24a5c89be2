"""Shared LightningModule base for every tsode model.

What a subclass must implement
------------------------------
``forecast(batch, times) -> Forecast``
    Predict at arbitrary per-series times ``times (B, M)`` (hours, same time axis as
    ``batch.context.times``), conditioning on ``batch.context`` only. Returns a
    :class:`tsode.models.forecast.Forecast`: its ``mean`` ``(B, M, C)`` in normalized units;
    probabilistic models add their predictive distribution (``std`` ``(B, M, C)``, ``samples``
    ``(K, B, M, C)``, a Gaussian mixture or fixed quantiles).

What a subclass may override
----------------------------
``compute_loss(batch) -> StepResult``
    Default: masked MSE between ``forecast(batch, batch.target.times).mean`` and the observed
    target entries. Probabilistic models (latent ODE) return their own loss (negative ELBO), the
    target-time prediction used for metrics, and extra scalars to log (``logs``).

``series_summary(batch) -> Tensor (B, F)`` (encoders only)
    The vector a series-level classification head reads (e.g. the final hidden state after
    the context). A model built with ``num_classes > 0`` calls :meth:`IrregularModel.init_classifier`
    at the end of its constructor; :meth:`IrregularModel.classify` then gives class logits
    ``(B, K)`` and the step adds the cross-entropy on ``batch.labels`` to the loss (see
    :meth:`IrregularModel.classification_step`).

NFE: vector fields whose evaluations should be counted subclass
:class:`tsode.models.blocks.NFECounter` (e.g. :class:`~tsode.models.blocks.ODEFunc`); the base
finds them among the submodules automatically. ODE solves go through ``tsode.solvers`` with a
``SolverConfig`` constructor argument, so method / tolerances / adjoint are a recipe choice.

Constructor contract: subclasses take plain typed arguments, the optimizer group
``optim: OptimConfig | None`` (:class:`tsode.config.OptimConfig`, the recipe's ``optim:``
block) and ``**base``: the other common arguments below, and former flat optimizer
arguments (``lr`` ..., mapped into the group with a ``DeprecationWarning``); they call
``super().__init__(num_channels, optim, default_optim=..., **base)``, then
``self.save_hyperparameters()``.

Logged per stage (``train`` / ``val`` / ``test``): ``{stage}/loss``, ``{stage}/mse``,
``{stage}/mae`` (normalized units, observed target entries only), ``{stage}/mse_orig``,
``{stage}/mae_orig`` (original units, only when ``channel_stds`` is given), ``{stage}/nfe_forward``,
and ``train/nfe_backward`` (vector-field calls during backward: 0 for backprop through the solver,
> 0 for the adjoint). At test end, per-channel ``test/mse/<channel>`` and ``test/mae/<channel>``
(``test/mse_orig/<channel>`` ... in original units when ``channel_stds`` is given).
Classifiers (``num_classes > 0``) log ``{stage}/ce`` and, for ``val`` / ``test``,
``{stage}/auroc``, ``{stage}/auprc`` (average precision) and ``{stage}/accuracy`` (torchmetrics;
binary or multi-class); without a target part (``task="classification"``) there are no forecast
metrics. Probabilistic models (forecasts with ``std`` or ``samples``) also log ``{stage}/coverage80``,
``{stage}/coverage90`` (fraction of observed targets inside the central 80 % / 90 % interval)
and ``{stage}/crps`` (``crps_orig`` in original units) for ``val`` and ``test``.

Why one module over 500 lines: the step (loss, metrics per stage, NFE logging), the
classification head's joint loss and the gradient groups' clipping are one training contract
that every model inherits; split apart, each piece would reach into the others' state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from tsode.config import LEGACY_OPTIM_ARGS, OptimConfig, ParameterError, resolve_optim
from tsode.data.batch import IrregularBatch, SeriesPart
from tsode.models.blocks import ClassifierHead, NFECounter, last_observation
from tsode.models.forecast import Forecast
from tsode.models.history import DEFAULT_HISTORY_SCALES, channel_history, history_feature_count
from tsode.models.predictive import GaussianHead, ProbabilisticMetrics, gaussian_nll

_STAGES = ("train", "val", "test")
#: what ``classifier_inputs=`` accepts
CLASSIFIER_INPUTS = ("state", "state+channels")
#: features per channel in :func:`channel_summary`
CHANNEL_SUMMARY_FEATURES = 3 + history_feature_count(DEFAULT_HISTORY_SCALES) + 2


def channel_summary(context: SeriesPart) -> Tensor:
    """``(B, C * F)`` each channel's summary just after its context's last time: last value,
    seen flag, ``log1p`` age (hours), its :func:`~tsode.models.history.channel_history` and its
    lowest and highest value in the context (the "worst values" of severity scores;
    ``F = 3 + (S + 2) + 2``); zeros for a channel never observed."""
    bsz, length, channels = context.values.shape
    if length == 0:
        return context.values.new_zeros(bsz, channels * CHANNEL_SUMMARY_FEATURES)
    last = context.times.gather(1, (context.lengths - 1).clamp_min(0).unsqueeze(1))
    end = torch.nextafter(last, torch.full_like(last, float("inf")))  # strictly after the context
    values, age, seen = last_observation(context, end)
    history = channel_history(context, end, DEFAULT_HISTORY_SCALES)  # (B, 1, C, S + 2)
    observed = context.mask & context.time_mask.unsqueeze(-1)  # (B, L, C)
    inf = torch.full_like(context.values, float("inf"))
    lowest = torch.where(observed, context.values, inf).amin(dim=1)
    highest = torch.where(observed, context.values, -inf).amax(dim=1)
    extremes = torch.stack([lowest, highest], dim=-1).unsqueeze(1)  # (B, 1, C, 2)
    extremes = torch.where(seen.unsqueeze(-1), extremes, torch.zeros_like(extremes))
    per_channel = torch.cat(
        [torch.stack([values, seen.to(values.dtype), torch.log1p(age)], dim=-1), history.to(values), extremes],
        dim=-1,
    )
    return per_channel.reshape(bsz, -1)


@dataclass
class StepResult:
    """What ``compute_loss`` returns.

    loss: scalar tensor to minimise (None for parameter-free models).
    prediction: ``(B, Lt, C)`` predicted mean at ``batch.target.times`` (normalized units), used
        for the MSE / MAE metrics; None to skip metrics.
    logs: extra scalar tensors to log as ``{stage}/{name}``.
    predictive: the :class:`~tsode.models.forecast.Forecast` at ``batch.target.times`` when it
        carries a predictive distribution (``is_probabilistic``): scored by interval coverage
        and CRPS in validation and test.
    """

    loss: Tensor | None
    prediction: Tensor | None
    logs: dict[str, Tensor] = field(default_factory=dict)
    predictive: Forecast | None = None
    classification: tuple[Tensor, Tensor] | None = None  # (logits (N, K), labels (N,)), known labels


def classification_metrics(num_classes: int) -> torch.nn.ModuleDict:
    """torchmetrics AUROC, AUPRC (average precision) and accuracy: the ``Binary*`` versions for
    ``num_classes=2`` (scored on class 1's probability), else the ``Multiclass*`` ones."""
    from torchmetrics.classification import (
        BinaryAccuracy,
        BinaryAUROC,
        BinaryAveragePrecision,
        MulticlassAccuracy,
        MulticlassAUROC,
        MulticlassAveragePrecision,
    )

    if num_classes == 2:
        return torch.nn.ModuleDict(
            {"auroc": BinaryAUROC(), "auprc": BinaryAveragePrecision(), "accuracy": BinaryAccuracy()}
        )
    return torch.nn.ModuleDict(
        {
            "auroc": MulticlassAUROC(num_classes),
            "auprc": MulticlassAveragePrecision(num_classes),
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        }
    )


def has_target(batch: IrregularBatch) -> bool:
    """Whether the batch has anything in its target part (``task="classification"`` has not)."""
    return bool(batch.target.lengths.any())


class MaskedChannelError(Metric):
    """Mean squared (``kind="mse"``) or absolute (``kind="mae"``) error over observed entries.

    Accumulates per-channel error sums and counts, so ``per_channel()`` gives the channel
    breakdown. The overall value weights every observed entry equally (``reduction="entry"``)
    or is the mean of the per-channel errors over the channels observed (``"channel"``, the
    per-variable metric). ``scale`` (C,) multiplies the normalized error per channel (pass the
    normalizer stds to get original units).
    """

    full_state_update = False

    def __init__(
        self, num_channels: int, kind: str = "mse", scale: list[float] | None = None, reduction: str = "entry"
    ):
        super().__init__()
        if kind not in ("mse", "mae"):
            raise ValueError(f"kind must be 'mse' or 'mae', got {kind!r}")
        if reduction not in ("entry", "channel"):
            raise ValueError(f"reduction must be 'entry' or 'channel', got {reduction!r}")
        self.kind = kind
        self.reduction = reduction
        scale_t = torch.ones(num_channels) if scale is None else torch.as_tensor(scale, dtype=torch.float64)
        if scale_t.shape != (num_channels,):
            raise ValueError(f"scale must have {num_channels} entries, got {tuple(scale_t.shape)}")
        self.register_buffer("scale", scale_t.to(torch.float64), persistent=False)
        self.add_state("err_sum", default=torch.zeros(num_channels, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_channels, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, mask: Tensor) -> None:  # type: ignore[override]
        diff = (pred.detach().to(torch.float64) - target.to(torch.float64)) * self.scale
        err = diff.square() if self.kind == "mse" else diff.abs()
        m = mask.to(torch.float64)
        dims = tuple(range(err.dim() - 1))
        self.err_sum += (err * m).sum(dim=dims)
        self.count += m.sum(dim=dims)

    def compute(self) -> Tensor:
        if self.reduction == "channel":
            seen = self.count > 0
            per_channel = self.err_sum[seen] / self.count[seen]
            return (per_channel.mean() if bool(seen.any()) else self.err_sum.sum()).to(torch.float32)
        return (self.err_sum.sum() / self.count.sum().clamp_min(1.0)).to(torch.float32)

    def per_channel(self) -> Tensor:
        """(C,) error per channel; NaN for channels never observed."""
        out = self.err_sum / self.count
        return out.to(torch.float32)


LOSS_WEIGHTINGS = ("entry", "channel")


def masked_mse(
    pred: Tensor, target: Tensor, mask: Tensor, weighting: str = "entry", scale: Tensor | None = None
) -> Tensor:
    """Mean squared error over entries where ``mask`` is True (0 if there are none).

    ``weighting="entry"``: every observed entry counts equally (pooled MSE);
    ``"channel"``: the mean of the per-channel MSEs over the channels observed in the batch
    (each channel counts equally however often it is measured, as in per-variable metrics).
    ``scale`` ``(C,)`` multiplies each channel's squared errors (e.g. to score in another
    unit per channel). Masked-out entries contribute exactly nothing (also no NaN/inf leaks
    from ``target``).
    """
    diff = torch.where(mask, pred - target, torch.zeros_like(pred))
    squared = diff.square()
    if scale is not None:
        squared = squared * scale.to(squared)
    if weighting == "channel":
        squared = squared * channel_weights(mask).to(squared)
    return squared.sum() / mask.sum().clamp_min(1)


def channel_weights(mask: Tensor) -> Tensor:
    """``(C,)`` per-entry weights that make each observed channel count equally in a sum over
    the observed entries of ``mask (..., C)`` divided by their number: ``N / (C_obs * n_c)``
    (0 for channels with no entry). Their weighted count is still ``N``."""
    counts = mask.reshape(-1, mask.shape[-1]).sum(0).to(torch.float32)
    observed = counts > 0
    total = counts.sum()
    num_observed = observed.sum().clamp_min(1)
    return torch.where(observed, total / (num_observed * counts.clamp_min(1)), torch.zeros_like(counts))


class IrregularModel(L.LightningModule):
    """Base LightningModule: steps, masked metrics, NFE logging, optimizer and scheduler.

    Args:
        num_channels: C, number of value channels.
        optim: optimizer, learning rate and schedule (:class:`~tsode.config.OptimConfig`;
            a mapping is converted); fields left None take ``default_optim``'s.
        channel_means: per-channel normalizer means (plain list) -- enables original units in
            ``predict_step`` (``"mean_original"``).
        channel_stds: per-channel normalizer stds (plain list) -- enables ``*_orig`` metrics.
        loss_weighting: ``"entry"`` (default; every observed target entry counts equally) or
            ``"channel"`` (each channel's mean error in the batch counts equally, whatever its
            sampling rate: the training counterpart of per-variable metrics such as
            forecast-24h's, where a lab measured twice a day weighs as much as heart rate).
        loss_channel_weights: ``(C,)`` non-negative weight of each channel's squared errors in
            the loss and in ``{stage}/mse_channel`` (None: all 1). A per-variable metric in
            other units than the model's (e.g. min-max scaled while the model sees z-scores)
            is matched by ``(std_c / range_c)^2``.
        classifier_inputs: what a classification head (``num_classes > 0``) reads: ``"state"``
            (default; the model's :meth:`series_summary`) or ``"state+channels"`` (that, plus
            each channel's summary at the end of the context: last value, seen flag,
            ``log1p`` age, exponentially weighted means at 1 / 6 / 24 h, spread, ``log1p``
            count (:mod:`tsode.models.history`), lowest and highest value).
        default_optim: the subclass's defaults for the fields ``optim`` leaves None (None:
            ``CONSTANT_OPTIM``, Adam at a constant 1e-3).
        legacy: former flat optimizer arguments (``lr``, ``scheduler``, ... from old code or
            checkpoints), applied on top of the group with a ``DeprecationWarning``.
    """

    def __init__(
        self,
        num_channels: int,
        optim: OptimConfig | None = None,
        channel_means: list[float] | None = None,
        channel_stds: list[float] | None = None,
        loss_weighting: str = "entry",
        loss_channel_weights: list[float] | None = None,
        classifier_inputs: str = "state",
        *,
        default_optim: OptimConfig | None = None,
        **legacy: Any,
    ) -> None:
        super().__init__()
        # ``grid`` was an ODE-RNN / latent ODE argument until the reference batching moved to
        # benchmarks/union_grid.py: checkpoints saved before carry grid="per_sample"
        if legacy.pop("grid", "per_sample") != "per_sample":
            raise ParameterError(
                "grid",
                "grid must be 'per_sample' (the models solve each series on its own times; the "
                "reference implementation's union grid is benchmarks/union_grid.py)",
            )
        self.optim = resolve_optim(optim, legacy, default_optim, type(self).__name__)
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ParameterError("loss_weighting", f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
        self.loss_weighting = loss_weighting
        if classifier_inputs not in CLASSIFIER_INPUTS:
            raise ParameterError("classifier_inputs", f"classifier_inputs must be one of {CLASSIFIER_INPUTS}, got {classifier_inputs!r}")
        self.classifier_inputs = classifier_inputs
        if loss_channel_weights is not None:
            w = [float(x) for x in loss_channel_weights]
            if len(w) != num_channels or not all(math.isfinite(x) and x >= 0 for x in w):
                raise ParameterError(
                    "loss_channel_weights",
                    f"loss_channel_weights must be {num_channels} finite values >= 0, got {loss_channel_weights}"
                )
            self.register_buffer("loss_scale", torch.tensor(w), persistent=False)
        else:
            self.loss_scale = None
        if num_channels < 1:
            raise ParameterError("num_channels", f"num_channels must be >= 1, got {num_channels}")
        for name, stats in (("channel_means", channel_means), ("channel_stds", channel_stds)):
            if stats is not None and len(stats) != num_channels:
                raise ParameterError(name, f"{name} has {len(stats)} entries, expected num_channels={num_channels}")
        self.num_channels = num_channels
        self.channel_means = None if channel_means is None else [float(x) for x in channel_means]
        self.channel_stds = None if channel_stds is None else [float(x) for x in channel_stds]
        metrics: dict[str, Metric] = {}
        # MaskedChannelError scales errors, not squared errors: sqrt of the loss weights
        metric_scale = None if loss_channel_weights is None else [math.sqrt(float(x)) for x in loss_channel_weights]
        for stage in _STAGES:
            metrics[f"{stage}_mse"] = MaskedChannelError(num_channels, "mse")
            metrics[f"{stage}_mae"] = MaskedChannelError(num_channels, "mae")
            metrics[f"{stage}_mse_channel"] = MaskedChannelError(
                num_channels, "mse", metric_scale, reduction="channel"
            )
            if self.channel_stds is not None:
                metrics[f"{stage}_mse_orig"] = MaskedChannelError(num_channels, "mse", self.channel_stds)
                metrics[f"{stage}_mae_orig"] = MaskedChannelError(num_channels, "mae", self.channel_stds)
        self.metrics = torch.nn.ModuleDict(metrics)
        # Separate per-channel accumulators for the test stage (not reset by Lightning's logging).
        scale = self.channel_stds
        self.test_channel_mse = MaskedChannelError(num_channels, "mse", scale)
        self.test_channel_mae = MaskedChannelError(num_channels, "mae", scale)
        # interval coverage and CRPS of probabilistic forecasts (validation and test)
        self.predictive_metrics = torch.nn.ModuleDict(
            {stage: ProbabilisticMetrics(scale) for stage in ("val", "test")}
        )
        self._channel_names: list[str] | None = None
        self.num_classes = 0
        self.classifier: ClassifierHead | None = None
        self._nfe_forward = 0
        self.last_nfe_forward = 0
        self.last_nfe_backward = 0

    # ------------------------------------------------------------------ subclass interface
    def forecast(self, batch: IrregularBatch, times: Tensor) -> Forecast:
        """Predict at ``times (B, M)`` given ``batch.context``: a :class:`Forecast` with at least
        its ``mean (B, M, C)`` (normalized units)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forecast(batch, times)")

    def compute_loss(self, batch: IrregularBatch) -> StepResult:
        """Default objective: masked MSE of the forecast mean on the observed target entries,
        plus, when the forecast has a ``std``, the Gaussian NLL of the std given the detached
        mean (the std learns the size of the errors; the mean is trained by the MSE alone)."""
        target = batch.target
        out = self.forecast(batch, target.times)
        pred = out.mean
        loss = masked_mse(pred, target.values, target.mask, self.loss_weighting, self.loss_scale)
        logs: dict[str, Tensor] = {}
        if out.std is not None:
            nll = gaussian_nll(pred, out.std, target.values, target.mask)
            logs["std_nll"] = nll
            loss = loss + nll
        return StepResult(loss, pred, logs, out if out.is_probabilistic else None)

    # ------------------------------------------------------------------ classification
    def init_classifier(self, num_classes: int, summary_dim: int) -> None:
        """Add a :class:`~tsode.models.blocks.ClassifierHead` on the ``summary_dim``-wide
        :meth:`series_summary` when ``num_classes > 0`` (0: forecasting only, nothing is added).
        Subclasses call it last in their constructor, so the other weights are initialised as
        without a head."""
        if num_classes < 0 or num_classes == 1:
            raise ParameterError("num_classes", f"num_classes must be 0 (no classifier) or >= 2 (binary: 2), got {num_classes}")
        self.num_classes = int(num_classes)
        if num_classes == 0:
            return
        if self.classifier_inputs == "state+channels":
            summary_dim += self.num_channels * CHANNEL_SUMMARY_FEATURES
        self.classifier = ClassifierHead(summary_dim, num_classes)
        self.classification_metrics = torch.nn.ModuleDict(
            {stage: classification_metrics(num_classes) for stage in ("val", "test")}
        )

    def series_summary(self, batch: IrregularBatch) -> Tensor:
        """``(B, F)`` summary of each series' context that the classification head reads."""
        raise NotImplementedError(f"{type(self).__name__} has no series summary (no classifier)")

    def classify(self, batch: IrregularBatch) -> Tensor:
        """Class logits ``(B, K)`` from ``batch.context`` (binary: ``K = 2``; probabilities are
        their softmax, class 1's is ``softmax(logits)[:, 1]``)."""
        return self.head_logits(batch, self.series_summary(batch))

    def head_logits(self, batch: IrregularBatch, summary: Tensor) -> Tensor:
        """Class logits ``(B, K)`` of the head on a series summary ``(B, F)`` already computed
        (plus, with ``classifier_inputs="state+channels"``, the context's channel summary)."""
        if self.classifier is None:
            raise RuntimeError(f"{type(self).__name__} was built with num_classes=0: no classifier")
        if self.classifier_inputs == "state+channels":
            summary = torch.cat([summary, channel_summary(batch.context).to(summary)], dim=-1)
        return self.classifier(summary)

    def predict_proba(self, batch: IrregularBatch) -> Tensor:
        """Class probabilities ``(B, K)``."""
        return torch.softmax(self.classify(batch), dim=-1)

    def add_classification(
        self, result: StepResult, batch: IrregularBatch, logits: Tensor, weight: float = 1.0
    ) -> StepResult:
        """``result`` with ``weight`` x the cross-entropy of ``logits (B, K)`` on the batch's
        known labels added to its loss (or as the loss, when it has none) and logged as ``ce``."""
        if batch.labels is None:
            return result
        known = ~torch.isnan(batch.labels)
        if not bool(known.any()):
            return result
        labels = batch.labels[known].long()
        ce = F.cross_entropy(logits[known], labels)
        term = weight * ce
        result.loss = term if result.loss is None else result.loss + term
        result.logs["ce"] = ce
        result.classification = (logits[known].detach(), labels)
        return result

    def classification_step(self, batch: IrregularBatch) -> StepResult:
        """Objective of a classifier: the cross-entropy on the known labels, plus the forecasting
        loss of :meth:`compute_loss` when the batch has a target part (multi-task); with
        ``task="classification"`` (no target) the cross-entropy alone."""
        result = self.compute_loss(batch) if has_target(batch) else StepResult(None, None)
        return self.add_classification(result, batch, self.classify(batch))

    def step_result(self, batch: IrregularBatch) -> StepResult:
        """The loss and what is scored for one batch: :meth:`compute_loss`, or with a
        classifier :meth:`classification_step`."""
        if self.classifier is None:
            return self.compute_loss(batch)
        return self.classification_step(batch)

    def _update_classification(self, stage: str, result: StepResult, bs: int) -> None:
        if result.classification is None or stage not in getattr(self, "classification_metrics", {}):
            return
        logits, labels = result.classification
        probs = torch.softmax(logits.float(), dim=-1)
        scores = probs[:, 1] if self.num_classes == 2 else probs
        for name, metric in self.classification_metrics[stage].items():
            metric.update(scores, labels)
            self.log(f"{stage}/{name}", metric, batch_size=bs, on_step=False, on_epoch=True,
                     prog_bar=name == "auroc" and stage == "val")

    # ------------------------------------------------------------------ NFE bookkeeping
    def nfe_modules(self) -> list[NFECounter]:
        """Every vector field (``NFECounter``) inside this model."""
        return [m for m in self.modules() if isinstance(m, NFECounter)]

    def reset_nfe(self) -> None:
        for m in self.nfe_modules():
            m.reset_nfe()

    def total_nfe(self) -> int:
        return int(sum(m.nfe for m in self.nfe_modules()))

    # ------------------------------------------------------------------ steps
    def _shared_step(self, batch: IrregularBatch, stage: str) -> Tensor | None:
        self._channel_names = list(batch.channels) if batch.channels else self._channel_names
        self.reset_nfe()
        result = self.step_result(batch)
        self._nfe_forward = self.total_nfe()
        self.last_nfe_forward = self._nfe_forward
        bs = batch.batch_size
        on_step = stage == "train"
        # under DDP the epoch values are batch-size-weighted means over all ranks' batches
        # (reduced once at the end of the epoch; training step values are reduced each step)
        sync = {"sync_dist": True}
        if result.loss is not None:
            self.log(f"{stage}/loss", result.loss.detach(), batch_size=bs, on_step=on_step,
                     on_epoch=True, prog_bar=True, **sync)
        for name, value in result.logs.items():
            self.log(f"{stage}/{name}", value.detach(), batch_size=bs, on_step=on_step,
                     on_epoch=True, **sync)
        if self.nfe_modules():
            self.log(f"{stage}/nfe_forward", float(self._nfe_forward), batch_size=bs,
                     on_step=on_step, on_epoch=True, **sync)
        if result.prediction is not None:
            target = batch.target
            for suffix in ("mse", "mae", "mse_channel", "mse_orig", "mae_orig"):
                key = f"{stage}_{suffix}"
                if key in self.metrics:
                    metric = self.metrics[key]
                    metric.update(result.prediction, target.values, target.mask)
                    self.log(f"{stage}/{suffix}", metric, batch_size=bs, on_step=False, on_epoch=True,
                             prog_bar=suffix == "mse" and stage == "val")
            if stage == "test":
                self.test_channel_mse.update(result.prediction, target.values, target.mask)
                self.test_channel_mae.update(result.prediction, target.values, target.mask)
        if result.predictive is not None and stage in self.predictive_metrics:
            self.predictive_metrics[stage].update(result.predictive, batch.target.values, batch.target.mask)
        self._update_classification(stage, result, bs)
        return result.loss

    def _log_predictive(self, stage: str) -> None:
        metric = self.predictive_metrics[stage]
        if metric.update_called:  # the same on every rank: all ranks run the same model
            for name, value in metric.compute().items():
                self.log(f"{stage}/{name}", value)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_predictive("val")

    def training_step(self, batch: IrregularBatch, batch_idx: int = 0) -> Tensor | None:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: IrregularBatch, batch_idx: int = 0) -> Tensor | None:
        return self._shared_step(batch, "val")

    def test_step(self, batch: IrregularBatch, batch_idx: int = 0) -> Tensor | None:
        return self._shared_step(batch, "test")

    def on_after_backward(self) -> None:
        if self.nfe_modules():
            self.last_nfe_backward = self.total_nfe() - self._nfe_forward
            self.log("train/nfe_backward", float(self.last_nfe_backward), on_step=True, on_epoch=True,
                     batch_size=1, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_predictive("test")
        names = self._channel_names or [f"ch{i}" for i in range(self.num_channels)]
        unit = "_orig" if self.channel_stds is not None else ""
        for metric, kind in ((self.test_channel_mse, "mse"), (self.test_channel_mae, "mae")):
            with metric.sync_context():  # under DDP: the sums over every rank's batches
                values = metric.per_channel().tolist()
            for name, value in zip(names, values):
                if value == value:  # skip channels never observed (NaN)
                    self.log(f"test/{kind}{unit}/{name}", value)
            metric.reset()

    def predict_step(self, batch: IrregularBatch, batch_idx: int = 0, dataloader_idx: int = 0) -> dict:
        """Forecast at ``batch.target.times``: a dict of ``"forecast"`` (the :class:`Forecast`),
        ``"times"``, ``"mask"`` (target time mask, (B, Lt)), ``"series_ids"`` and, when
        ``channel_means``/``channel_stds`` are known, ``"mean_original"`` (B, Lt, C) in original
        units. A classifier adds ``"probabilities"`` (B, K); without a target part it returns
        only those and ``"series_ids"``."""
        if self.classifier is not None and not has_target(batch):
            return {"probabilities": self.predict_proba(batch), "series_ids": list(batch.series_ids)}
        forecast = self.forecast(batch, batch.target.times)
        out: dict = {"forecast": forecast}
        if self.classifier is not None:
            out["probabilities"] = self.predict_proba(batch)
        out["times"] = batch.target.times
        out["mask"] = batch.target.time_mask
        out["series_ids"] = list(batch.series_ids)
        if self.channel_means is not None and self.channel_stds is not None:
            mean = torch.as_tensor(self.channel_means, dtype=forecast.mean.dtype, device=self.device)
            std = torch.as_tensor(self.channel_stds, dtype=forecast.mean.dtype, device=self.device)
            out["mean_original"] = forecast.mean * std + mean
        return out

    # ------------------------------------------------------------------ optimization
    def gradient_groups(self) -> list[list[torch.nn.Parameter]]:
        """Parameter groups clipped separately: the model, then its Gaussian std heads.

        A std head is trained by its own NLL on detached features; its gradients (large while
        the std is far from the errors' size) must not shrink the mean model's gradients
        through one shared clipping norm.
        """
        heads = [p for m in self.modules() if isinstance(m, GaussianHead) for p in m.parameters()]
        head_ids = {id(p) for p in heads}
        rest = [p for p in self.parameters() if id(p) not in head_ids]
        return [group for group in (rest, heads) if group]

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None  # noqa: ANN001
    ) -> None:
        """Lightning hook: the Trainer's ``gradient_clip_val`` applied to each of
        :meth:`gradient_groups` on its own (norm or value, as the Trainer says)."""
        if not gradient_clip_val:
            return
        clip_gradient_groups(self.gradient_groups(), float(gradient_clip_val),
                             str(gradient_clip_algorithm or "norm"))

    def configure_optimizers(self):  # noqa: ANN201 - Lightning accepts several return types
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        max_epochs = getattr(self.trainer, "max_epochs", None) if self._trainer else None
        return self.optim.build(params, max_epochs)

    def save_hyperparameters(self, *args: Any, frame: Any = None, **kwargs: Any) -> None:
        """Lightning's ``save_hyperparameters`` (of the caller's constructor arguments), with the
        resolved ``optim`` group in place of the argument given and no former flat optimizer
        arguments (so a checkpoint rebuilds the model without deprecation warnings)."""
        import inspect

        frame = frame if frame is not None else inspect.currentframe().f_back
        super().save_hyperparameters(*args, frame=frame, **kwargs)
        if "optim" in self._hparams or any(k in self._hparams for k in LEGACY_OPTIM_ARGS):
            for key in ("base", "legacy", "grid", *LEGACY_OPTIM_ARGS):  # grid: a former argument
                self._hparams.pop(key, None)
            self._hparams["optim"] = self.optim


def clip_gradient_groups(groups: list[list[torch.nn.Parameter]], value: float, algorithm: str = "norm") -> None:
    """Clip the gradients of each parameter group on its own: total norm <= ``value``
    (``algorithm="norm"``) or every entry within ``[-value, value]`` (``"value"``)."""
    for group in groups:
        params = [p for p in group if p.grad is not None]
        if not params:
            continue
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, value)
        else:
            torch.nn.utils.clip_grad_norm_(params, value)
