"""Closed-form parameter gradients (Energy.param_grads) against autograd, and the estimators'
choice between them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctep import DenseHopfield, RelaxConfig, TimeConstants, VectorField
from ctep import estimators as estimators_module
from ctep.estimators import CenteredEP, FiniteNudgeEP, OneSidedEP
from ctep.losses import CrossEntropy


def _autograd(energy, x, phases):
    with torch.enable_grad():
        total = sum((w * energy.energy(x, s)).sum() for w, s in phases)
        grads = torch.autograd.grad(total, tuple(energy.parameters()), allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in
                 zip(energy.parameters(), grads, strict=True))


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 7), min_size=2, max_size=5),
       activation=st.sampled_from(["hard_sigmoid", "tanh", "sigmoid", "relu6", "identity"]),
       form=st.sampled_from(["primitive", "classical"]), batch=st.integers(1, 5),
       phases=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_dense_param_grads_equal_autograd(sizes, activation, form, batch, phases, seed):
    energy = DenseHopfield(sizes, activation, form=form, seed=seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sizes[0], generator=gen, dtype=torch.float64)
    weighted = [(torch.randn(batch, generator=gen, dtype=torch.float64),
                 tuple(2 * torch.rand(batch, n, generator=gen, dtype=torch.float64) - 0.5
                       for n in sizes[1:])) for _ in range(phases)]
    got = energy.param_grads(x, weighted)
    want = _autograd(energy, x, weighted)
    scale = max(float(g.abs().max()) for g in want) + 1e-300
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert float((g - w).abs().max()) <= 1e-14 * scale


def _field(readout=False):
    energy = DenseHopfield([6, 8, 4], "hard_sigmoid", seed=2, dtype=torch.float64)
    cost = CrossEntropy(readout=(4, 3), dtype=torch.float64) if readout else "squared_error"
    tau = TimeConstants.sample(energy.state_shapes, "lognormal", 1.0, 0.5, seed=3,
                               dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3 if readout else 4, (5,), generator=gen)
    return VectorField(energy, cost, tau), x, y


@pytest.mark.parametrize("make", [lambda: OneSidedEP(0.1, relax=CFG), lambda: CenteredEP(
    0.1, relax=CFG), lambda: FiniteNudgeEP(0.1, points=3, relax=CFG)])
def test_estimators_use_the_closed_form_and_match_autograd(monkeypatch, make):
    field, x, y = _field()
    calls = []
    original = estimators_module._autograd_gradient
    monkeypatch.setattr(estimators_module, "_autograd_gradient",
                        lambda *a: calls.append(1) or original(*a))
    estimator = make()
    est = estimator(field, x, y)
    assert not calls  # the closed form was used
    phases = estimator.phases()
    terms = estimators_module._terms(phases, est.free, est.nudged)
    want = original(field, x, y, terms, est.used.to(torch.float64),
                    tuple(field.learnable_parameters()))
    # |states|, |x| ≤ 1 and the batch weights sum to 1: each entry is a sum of terms of size
    # at most |c_k|, so its round-off is a few ε·Σ|c_k| (finite nudge's c_k reach ~50)
    bound = 64 * torch.finfo(torch.float64).eps * sum(abs(c) for _, c in phases)
    for g, w in zip(est.grads, want, strict=True):
        assert float((g - w).abs().max()) <= bound


def test_a_masked_sample_and_a_readout():
    field, x, y = _field()
    used = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    states = tuple(torch.rand(5, n, dtype=torch.float64) for n in (8, 4))
    bad = tuple(s.clone() for s in states)
    bad[0][2] = torch.inf  # a diverged sample: masked, and its inf must not leak
    got = estimators_module._closed_form_gradient(field, x, [(0.5, 0.1, bad), (-0.5, -0.1, states)],
                                                      used)
    share = used / used.sum()
    clean = tuple(torch.where(used.bool().unsqueeze(1), s, 0.0) for s in bad)
    want = _autograd(field.energy, x, [(0.5 * share, clean), (-0.5 * share, states)])
    for g, w in zip(got, want, strict=True):
        assert bool(torch.isfinite(g).all())
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-15)
    field_ro, x, _ = _field(readout=True)
    assert estimators_module._closed_form_gradient(field_ro, x, [(1.0, 0.1, states)], used) is None


CFG = RelaxConfig(method="fixed_point", tol=1e-10, max_steps=5000)
