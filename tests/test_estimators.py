"""EP estimators against the implicit-differentiation reference (float64)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import diverging_problem, max_diff, problem
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ctep
from ctep import RelaxConfig, TimeConstants, VectorField, relax
from ctep._linalg import spectral_norm
from ctep.cli import main
from ctep.estimators import (
    ESTIMATORS,
    CenteredEP,
    OneSidedEP,
    accepted_options,
    canonical_name,
    get_estimator,
)
from ctep.reference import compare, implicit_gradient

TIGHT = RelaxConfig(method="fixed_point", tol=1e-10, max_steps=100_000)


def _kink_margin(field, x, states) -> float:
    """Smallest distance of a clipped unit's pre-activation to a corner of its clip."""
    e = field.energy
    margins = [math.inf]
    for a, u in zip(e.activations, e.phi_grad(x, states), strict=True):
        u = u.detach()
        if a.bounded:
            margins.append(float(torch.minimum((u - a.low).abs(), (u - a.high).abs()).min()))
    return min(margins)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hidden=st.lists(st.integers(1, 20), min_size=1, max_size=3),
       n_in=st.integers(1, 12), n_out=st.integers(1, 6),
       activation=st.sampled_from(["tanh", "sigmoid", "hard_sigmoid", "relu6", "identity"]),
       form=st.sampled_from(["primitive", "classical"]),
       tau=st.sampled_from([("constant", 0.0), ("uniform", 0.5), ("lognormal", 1.0),
                            ("gamma", 0.7)]),
       seed=st.integers(0, 10_000), beta=st.sampled_from([1e-3, 5e-4]))
def test_centered_ep_matches_implicit(hidden, n_in, n_out, activation, form, tau, seed, beta):
    field, x, y = problem(sizes=(n_in, *hidden, n_out), activation=activation, form=form,
                          tau=tau[0], tau_spread=tau[1], seed=seed, batch=3)
    cfg = TIGHT.replace(damping=0.5 if form == "classical" else 1.0)
    free = relax(field.bind(x), config=cfg)
    assert bool(free.converged.all())
    assume(_kink_margin(field, x, free.states) > 0.05)  # EP needs a locally constant active set
    ref = implicit_gradient(field, x, y, free.states)
    assume(float(torch.cat([g.reshape(-1) for g in ref]).norm()) > 1e-8)
    est = CenteredEP(beta, relax=cfg)(field, x, y, free=free)
    m = compare(est.grads, ref)
    assert m["rel_error"] < 1e-5, m
    assert m["cosine"] > 1 - 1e-9


def _slope(betas, errors) -> float:
    return float(np.polyfit(np.log(betas), np.log(errors), 1)[0])


@pytest.mark.parametrize("activation,form", [("tanh", "primitive"), ("sigmoid", "classical"),
                                             ("hard_sigmoid", "primitive")])
def test_bias_orders_one_sided_linear_centered_quadratic(activation, form):
    field, x, y = problem(activation=activation, form=form, sizes=(6, 9, 4))
    cfg = TIGHT.replace(tol=1e-13, damping=0.5 if form == "classical" else 1.0)
    free = relax(field.bind(x), config=cfg)
    ref = implicit_gradient(field, x, y, free.states)
    betas = [0.04, 0.02, 0.01, 0.005]
    one = [compare(OneSidedEP(b, relax=cfg)(field, x, y, free=free).grads, ref)["rel_error"]
           for b in betas]
    cen = [compare(CenteredEP(b, relax=cfg)(field, x, y, free=free).grads, ref)["rel_error"]
           for b in betas]
    assert abs(_slope(betas, one) - 1) < 0.2, one
    assert abs(_slope(betas, cen) - 2) < 0.2, cen


def test_exact_finite_beta_identity_one_sided():
    """ĝ₁(β) = ∇θ (F*(β) − F*(0))/β exactly, at large β (THEORY.md §0)."""
    field, x, y = problem(activation="tanh", sizes=(4, 5, 3), batch=2)
    beta = 0.3
    cfg = TIGHT.replace(tol=1e-13)
    est = OneSidedEP(beta, relax=cfg)(field, x, y)
    w = field.energy.weights[0]

    def surrogate() -> float:
        f0 = relax(field.bind(x), config=cfg)
        fb = relax(field.bind(x, y, beta), f0.states, cfg)
        with torch.no_grad():
            return float(((field.total_energy(x, fb.states, y, beta)
                           - field.total_energy(x, f0.states)) / beta).mean())

    h = 1e-5
    for i, j in [(0, 0), (2, 3)]:
        with torch.no_grad():
            w[i, j] += h
        up = surrogate()
        with torch.no_grad():
            w[i, j] -= 2 * h
        down = surrogate()
        with torch.no_grad():
            w[i, j] += h
        fd = (up - down) / (2 * h)
        assert est.grads[0][i, j].item() == pytest.approx(fd, rel=1e-6, abs=1e-11)


def test_ep_gradient_does_not_depend_on_tau():
    field, x, y = problem(activation="sigmoid", tau="constant", tau_spread=0.0)
    other = VectorField(field.energy, field.cost, TimeConstants.sample(
        field.energy.state_shapes, "lognormal", 2.0, 1.5, seed=9, dtype=torch.float64))
    cfg = RelaxConfig(method="dopri5", tol=1e-10, polish=2)
    a = CenteredEP(1e-2, relax=cfg)(field, x, y)
    b = CenteredEP(1e-2, relax=cfg)(other, x, y)
    assert compare(a.grads, b.grads)["rel_error"] < 1e-8


def test_cross_entropy_readout_gets_gradients():
    e = ctep.DenseHopfield([5, 8, 6], "tanh", seed=1, dtype=torch.float64)
    with torch.no_grad():
        for w in e.weights:
            w.mul_(0.5 / spectral_norm(w))
    cost = ctep.CrossEntropy((6, 3), seed=2, dtype=torch.float64)
    field = VectorField(e, cost)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=g)
    free = relax(field.bind(x), config=TIGHT)
    ref = implicit_gradient(field, x, y, free.states)
    est = CenteredEP(1e-3, relax=TIGHT)(field, x, y, free=free)
    assert len(est.grads) == len(list(field.learnable_parameters())) == 6
    assert compare(est.grads, ref)["rel_error"] < 1e-5
    assert float(est.grads[-2].abs().max()) > 0  # the read-out weight


def test_write_grads_and_optimizer_step():
    field, x, y = problem(activation="tanh")
    est = get_estimator("symmetric", 0.05, relax=TIGHT)(field, x, y)
    est.write_grads()
    params = list(field.learnable_parameters())
    assert all(p.grad is not None for p in params)
    assert max_diff([p.grad for p in params], est.grads) == 0
    est.write_grads(accumulate=True)
    assert max_diff([p.grad for p in params], [2 * g for g in est.grads]) < 1e-15
    before = [p.detach().clone() for p in params]
    torch.optim.SGD(params, lr=0.1).step()
    assert max_diff(before, [p.detach() for p in params]) > 0
    assert set(est.named(field)) >= {"energy.weights.0", "energy.biases.1"}


def test_random_sign_and_registry():
    field, x, y = problem(activation="tanh")
    est = OneSidedEP(0.01, random_sign=True, seed=3, relax=TIGHT)
    signs = {est(field, x, y).betas[0] > 0 for _ in range(8)}
    assert signs == {True, False}
    with pytest.raises(ValueError, match="unknown estimator"):
        get_estimator("holomorphic-ish", 0.1)
    with pytest.raises(ValueError, match="beta must be"):
        CenteredEP(-0.1)
    with pytest.raises(ValueError, match="on_failure"):
        CenteredEP(0.1, on_failure="ignore")


@pytest.mark.parametrize(("name", "key"), [
    ("one-sided", "one-sided"), ("One_Sided", "one-sided"), ("onesided", "one-sided"),
    ("vanilla", "one-sided"), ("symmetric", "centered"), ("CENTERED", "centered"),
    ("finite_nudge", "finite-nudge"), ("finitenudge", "finite-nudge"),
    ("Finite-Nudge", "finite-nudge"), ("stochastic", "langevin"), ("holomorphic", "holomorphic"),
])
def test_names_and_aliases_resolve_to_one_key(name, key):
    assert canonical_name(name) == key
    assert type(get_estimator(name, 0.1)) is ESTIMATORS[key]


def test_accepted_options_follow_the_constructors():
    settings = {"random_sign": True, "points": 3, "seed": 7, "temperature": None,
                "not_an_option": 1}
    assert accepted_options("vanilla", settings) == {"random_sign": True, "seed": 7}
    assert accepted_options("symmetric", settings) == {}
    assert accepted_options("finitenudge", settings) == {"points": 3}
    assert accepted_options("holomorphic", settings) == {"points": 3}
    assert accepted_options("stochastic", settings) == {"seed": 7}  # temperature None: left out
    assert accepted_options("langevin", {**settings, "temperature": 0.1}) == {
        "seed": 7, "temperature": 0.1}
    with pytest.raises(ValueError, match="unknown estimator 'nope'; known: one-sided"):
        accepted_options("nope", settings)


def test_diverged_sample_raises_or_is_masked():
    field, x = diverging_problem()
    y = torch.zeros(2, 2, dtype=torch.float64)  # sample 1 sits at s = 0 = y: its nudge is zero
    cfg = RelaxConfig(method="fixed_point", tol=1e-8, max_steps=500)
    with pytest.raises(ctep.RelaxationError, match="DIVERGED"):
        CenteredEP(0.1, relax=cfg)(field, x, y)
    out = CenteredEP(0.1, relax=cfg, on_failure="mask")(field, x, y)
    assert out.used.tolist() == [False, True]
    assert all(torch.isfinite(g).all() for g in out.grads)
    # a fixed budget with no checks lets the runaway sample overflow to inf/NaN
    budget = RelaxConfig(method="fixed_point", tol=1e-8, max_steps=3000, check_every=0)
    assert not torch.isfinite(relax(field.bind(x), config=budget).states[0][0]).all()
    out = CenteredEP(0.1, relax=budget, on_failure="mask")(field, x, y)
    assert out.used.tolist() == [False, True]
    assert all(torch.isfinite(g).all() for g in out.grads)


def test_verify_cli_json(capsys):
    assert main(["verify", "--json", "--betas", "1e-1,1e-2,1e-3"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {(r["estimator"], r["beta"]): r for r in report["results"]}
    assert set(report["results"][0]) >= {"estimator", "reference", "beta", "rel_error", "cosine"}
    assert rows[("centered", 1e-3)]["rel_error"] < 1e-5
    one = [rows[("one-sided", b)]["rel_error"] for b in (1e-1, 1e-2, 1e-3)]
    assert one[0] > one[1] > one[2]


def test_verify_cli_table_and_bad_options(capsys):
    assert main(["verify", "--activation", "sigmoid", "--form", "classical", "--tau", "gamma",
                 "--tau-spread", "0.5", "--method", "exp_euler", "--betas", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "centered" in out and "rel_error" in out
    assert main(["verify", "--activation", "relu_alpha", "--alpha", "2.0", "--betas", "1e-3",
                 "--json"]) == 0
    assert "relu_alpha" in capsys.readouterr().out
    assert main(["verify", "--activation", "swish"]) == 2
    assert "unknown activation" in capsys.readouterr().err
    assert main(["verify", "--method", "leapfrog"]) == 2
    assert "unknown relaxation method" in capsys.readouterr().err


@pytest.mark.parametrize("activation,form,tau", [("tanh", "primitive", "lognormal"),
                                                  ("sigmoid", "classical", "gamma"),
                                                  ("hard_sigmoid", "primitive", "uniform"),
                                                  ("identity", "classical", "constant")])
def test_bptt_reference_agrees_with_implicit(activation, form, tau):
    from ctep.reference import bptt_gradient

    field, x, y = problem(activation=activation, form=form, tau=tau, tau_spread=0.5)
    damping = 0.5 if form == "classical" else 1.0
    free = relax(field.bind(x), method="fixed_point", tol=1e-13, max_steps=100_000,
                 damping=damping)
    ref = implicit_gradient(field, x, y, free.states)
    by_map = bptt_gradient(field, x, y, free.states, steps=400, damping=damping)
    tau_min = min(float(t.min()) for t in field.tau())
    by_euler = bptt_gradient(field, x, y, free.states, steps=1500, dt=0.5 * tau_min)
    assert compare(by_map, ref)["rel_error"] < 1e-8
    assert compare(by_euler, ref)["rel_error"] < 1e-8
    if activation in ("tanh", "sigmoid"):  # (clipped nets can have a nilpotent Jacobian)
        short = bptt_gradient(field, x, y, free.states, steps=2, damping=damping)
        assert compare(short, ref)["rel_error"] > 1e-3  # a truncated unroll is not the gradient


def test_verify_cli_bptt_reference(capsys):
    assert main(["verify", "--json", "--references", "implicit,bptt", "--betas", "1e-3",
                 "--estimators", "centered"]) == 0
    rows = {r["reference"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["bptt"]["rel_error"] == pytest.approx(rows["implicit"]["rel_error"], rel=1e-4)


def test_verify_report_netcdf_and_figure(tmp_path, capsys):
    import xarray as xr

    out = tmp_path / "report"
    assert main(["verify", "--json", "--estimators", "one-sided,centered", "--references",
                 "implicit", "--betas", "1e-1,1e-2", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (out / "error_vs_beta.png").stat().st_size > 1000
    with xr.open_dataset(out / "verify.nc") as ds:
        assert ds.rel_error.dims == ("estimator", "reference", "beta")
        assert ds.rel_error_per_parameter.sizes["parameter"] == len(report["parameters"]) == 6
        for r in report["results"]:
            value = float(ds.rel_error.sel(estimator=r["estimator"], reference=r["reference"],
                                           beta=r["beta"]))
            assert value == pytest.approx(r["rel_error"], rel=1e-12)
    assert not list(out.glob("*.tmp"))
