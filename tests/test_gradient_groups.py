"""Gradient clipping per group: a Gaussian std head's gradients never shrink the mean model's."""

from __future__ import annotations

import torch

from tsode.models import MODELS
from tsode.models.base import clip_gradient_groups
from tsode.models.predictive import GaussianHead


def test_std_heads_are_their_own_clipping_group():
    model = MODELS["gru_dt"](num_channels=3, hidden_dim=4, decoder_hidden_dim=4)
    rest, heads = model.gradient_groups()
    head_params = {id(p) for m in model.modules() if isinstance(m, GaussianHead) for p in m.parameters()}
    assert {id(p) for p in heads} == head_params and head_params
    assert not head_params & {id(p) for p in rest}
    assert len(rest) + len(heads) == len(list(model.parameters()))


def test_a_huge_head_gradient_leaves_the_model_gradient_alone():
    model = MODELS["gru_dt"](num_channels=3, hidden_dim=4, decoder_hidden_dim=4)
    rest, heads = model.gradient_groups()
    for p in rest:
        p.grad = torch.full_like(p, 1e-3)
    for p in heads:
        p.grad = torch.full_like(p, 1e3)
    before = [p.grad.clone() for p in rest]
    clip_gradient_groups(model.gradient_groups(), 1.0)
    for p, g in zip(rest, before):
        torch.testing.assert_close(p.grad, g)  # norm of the rest is < 1: untouched
    head_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in heads]))
    assert abs(float(head_norm) - 1.0) < 1e-4
    # one shared norm would have scaled the model's gradients down by the head norm (~6e3)
    for p in heads:
        p.grad = torch.full_like(p, 1e3)
    clip_gradient_groups([rest + heads], 1.0)
    assert max(float(p.grad.abs().max()) for p in rest) < 1e-6


def test_deterministic_models_have_one_group():
    model = MODELS["odernn"](num_channels=2, hidden_dim=4, ode_hidden_dim=4, uncertainty="none")
    assert len(model.gradient_groups()) == 1
