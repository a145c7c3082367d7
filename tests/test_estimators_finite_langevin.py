"""Finite-nudge EP (Gauss–Legendre quadrature over β) and Langevin EP (Euler–Maruyama chains of
the Gibbs laws), against the implicit reference, their exact targets and deterministic EP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import diverging_problem, problem
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ctep
from ctep import Energy, RelaxConfig, VectorField, relax
from ctep._linalg import batched_jacobian, one_thread
from ctep._states import flatten_states, unflatten_states
from ctep.estimators import (
    CenteredEP,
    FiniteNudgeEP,
    LangevinEP,
    OneSidedEP,
    finite_nudge_rule,
    get_estimator,
)
from ctep.reference import compare, implicit_gradient

# β up to 1: the plain map (damping 1) 2-cycles in the nudged phase of the primitive form there
# (its output unit's slope is about −β), so these tests relax with the damped map.
CFG = RelaxConfig(method="fixed_point", tol=1e-12, max_steps=20_000, damping=0.5)


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


# --- finite-nudge EP ----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), beta=st.floats(0.05, 3.0),
       coefs=st.lists(st.floats(-2.0, 2.0), min_size=10, max_size=10))
def test_rule_is_exact_for_polynomials_and_has_the_stated_bias(n, beta, coefs):
    """Σ_j c_j [ψ(b_j) − ψ(0)] = ψ'(0) for ψ of degree ≤ n; for ψ = b^{n+1} it is
    (−1)^{n+1} β^n (n!)²/(2n)!, the leading bias term of the docstring."""
    nodes, c = finite_nudge_rule(beta, n)
    b = np.array(nodes)
    assert np.all(np.diff(b) > 0) and 0 < b[0] and b[-1] < beta
    poly = np.polynomial.Polynomial(coefs[: n + 1])
    est = float(np.dot(c, poly(b) - poly(0.0)))
    scale = sum(abs(a) * max(beta, 1.0) ** k for k, a in enumerate(coefs[: n + 1]))
    assert est == pytest.approx(coefs[1], abs=1e-10 * max(scale, 1.0) * sum(map(abs, c)))
    mono = float(np.dot(c, b ** (n + 1)))
    bias = (-1) ** (n + 1) * beta**n * math.factorial(n) ** 2 / math.factorial(2 * n)
    assert mono == pytest.approx(bias, rel=1e-9)


def test_rule_is_the_derivative_of_the_interpolant():
    """The quadrature weights equal p'(0) for the polynomial through ψ at 0, b_1..b_n."""
    nodes, c = finite_nudge_rule(0.7, 5)
    t = np.array((0.0, *nodes))
    for j in range(1, len(t)):
        others = np.delete(t, j)
        lagrange = np.polynomial.Polynomial.fromroots(others) / np.prod(t[j] - others)
        assert lagrange.deriv()(0.0) == pytest.approx(c[j - 1], rel=1e-10)


@pytest.fixture(scope="module")
def tanh_case():
    field, x, y = problem(activation="tanh")
    free = relax(field.bind(x), config=CFG)
    return field, x, y, free, implicit_gradient(field, x, y, free.states)


@pytest.mark.parametrize("activation,form", [("tanh", "primitive"), ("sigmoid", "primitive"),
                                             ("tanh", "classical")])
def test_finite_nudge_beats_centered_at_large_beta(activation, form):
    # measured (rel. error vs implicit, β = 1): tanh/primitive centered 3.5e-1, finite-nudge
    # (4 points) 8.6e-3; sigmoid/primitive 1.6e-1 vs 1.7e-4; tanh/classical 3.0e-1 vs 7.1e-3
    field, x, y = problem(activation=activation, form=form)
    cfg = CFG.replace(max_steps=2000)
    free = relax(field.bind(x), config=cfg)
    ref = implicit_gradient(field, x, y, free.states)
    cen = CenteredEP(1.0, relax=cfg)(field, x, y, free=free)
    fin = get_estimator("finite-nudge", 1.0, points=4, relax=cfg)(field, x, y, free=free)
    centered, finite = compare(cen.grads, ref), compare(fin.grads, ref)
    assert finite["rel_error"] < centered["rel_error"] / 10, (finite, centered)
    assert finite["cosine"] > 0.999
    assert all(bool(eq.converged.all()) for eq in fin.nudged)
    if form == "classical":
        # −β·ℓ = −½‖s_L − y‖² cancels the output's ½‖s_L‖² confinement at β = 1: the −β phase
        # has no equilibrium, and centered EP's second phase runs out of budget
        assert not bool(cen.nudged[1].converged.any())


def test_quadrature_converges_with_points(tanh_case):
    # measured at β = 1: 3.8e-1, 8.7e-2, 8.6e-3, 9.4e-5 for 1, 2, 4, 8 points
    field, x, y, free, ref = tanh_case
    errors = [compare(FiniteNudgeEP(1.0, points=n, relax=CFG)(field, x, y, free=free).grads,
                      ref)["rel_error"] for n in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < errors[1] / 100, errors


def test_one_point_is_one_sided_at_half_beta(tanh_case):
    field, x, y, free, _ = tanh_case
    a = FiniteNudgeEP(0.6, points=1, relax=CFG)(field, x, y, free=free)
    b = OneSidedEP(0.3, relax=CFG)(field, x, y, free=free)
    assert a.betas == (0.3,)
    assert compare(a.grads, b.grads)["rel_error"] < 1e-12


def test_finite_nudge_is_the_exact_gradient_of_its_objective():
    """ĝ_n(β) = ∇θ J_n(β), J_n = Σ_j c_j [F*(b_j) − F*(0)], exactly at β = 1 (central finite
    differences of J_n with re-relaxed, continued equilibria)."""
    field, x, y = problem(activation="tanh", sizes=(4, 5, 3), batch=2)
    cfg = CFG.replace(tol=1e-13)
    est = FiniteNudgeEP(1.0, points=3, relax=cfg)(field, x, y)
    assert est.betas == est.info["nodes"]
    w = field.energy.weights[0]

    def objective() -> float:
        free = relax(field.bind(x), config=cfg)
        total, start = 0.0, free.states
        with torch.no_grad():
            f0 = field.total_energy(x, free.states)
            for b, c in zip(est.info["nodes"], est.info["coefficients"], strict=True):
                eq = relax(field.bind(x, y, b), start, cfg)
                total = total + c * (field.total_energy(x, eq.states, y, b) - f0)
                start = eq.states
        return float(total.mean())

    h = 1e-5
    for i, j in [(0, 0), (2, 3)]:
        with torch.no_grad():
            w[i, j] += h
        up = objective()
        with torch.no_grad():
            w[i, j] -= 2 * h
        down = objective()
        with torch.no_grad():
            w[i, j] += h
        assert est.grads[0][i, j].item() == pytest.approx((up - down) / (2 * h), rel=1e-6,
                                                          abs=1e-10)


def test_finite_nudge_float32_and_continuation(tanh_case):
    field, x, y, free, _ = tanh_case
    est64 = FiniteNudgeEP(1.0, points=4, relax=CFG)(field, x, y, free=free)
    assert all(bool(eq.converged.all()) for eq in est64.nudged)
    assert [eq.steps.max() for eq in est64.nudged][-1] < est64.nudged[0].steps.max()
    f32, x32, y32 = problem(activation="tanh", dtype="float32")
    cfg32 = CFG.replace(tol=1e-6)
    est32 = FiniteNudgeEP(1.0, points=4, relax=cfg32)(f32, x32, y32)
    assert est32.grads[0].dtype == torch.float32
    # equilibrium error ~1e-6 times Σ|c_j| ≈ 45 (β = 1)
    assert compare([g.double() for g in est32.grads], est64.grads)["rel_error"] < 1e-3


# --- Langevin EP --------------------------------------------------------------------------------

def _em_stationary_target(field, x, y, free, beta, temperature, dt):
    """E[ĝ] under the exact stationary law of the Euler–Maruyama chain, for a quadratic F
    (identity activation): mean s*_b, covariance Σ = (I − DA)Σ(I − DA)ᵀ + 2T·D with
    D = diag(dt/τ) and A = ∂²F/∂s²; E[∂θF] from 2n sigma points (exact for quadratics)."""
    shapes = field.energy.state_shapes
    h = torch.cat([(dt * it).reshape(-1) for it in field.tau.inverse()]).double()
    total = 0.0
    for b, c in ((beta, 0.5 / beta), (-beta, -0.5 / beta)):
        bound = field.bind(x, y, b)
        eq = relax(bound, free.states, CFG.replace(tol=1e-13))
        a = -batched_jacobian(bound.stationarity, eq.states)[0]
        n = a.shape[0]
        m = torch.eye(n, dtype=a.dtype) - torch.diag(h) @ a
        rhs = (2 * temperature * torch.diag(h)).reshape(-1)
        with one_thread():
            cov = torch.linalg.solve(torch.eye(n * n, dtype=a.dtype) - torch.kron(m, m), rhs)
            cov = cov.reshape(n, n)
            root = torch.linalg.cholesky(0.5 * (cov + cov.T)) * math.sqrt(n)
        mu = flatten_states(eq.states)
        for sign in (1.0, -1.0):
            for k in range(n):
                pts = unflatten_states(mu + sign * root[:, k], shapes)
                total = total + c * field.total_energy(x, pts, y, b).mean() / (2 * n)
    return torch.autograd.grad(total, tuple(field.learnable_parameters()))


def test_langevin_samples_the_gibbs_law_of_a_quadratic_energy():
    """Identity activation: F is quadratic, the chain's stationary law is Gaussian and known in
    closed form (including Euler–Maruyama's O(dt) covariance error); at T = 0.5 the thermal
    term T·∂β(A⁻¹) is far from zero, and the chain's estimate matches the exact target."""
    field, x, y = problem(activation="identity", sizes=(4, 5, 3), batch=3)
    free = relax(field.bind(x), config=CFG)
    beta, temperature = 0.2, 0.5
    est = LangevinEP(beta, temperature=temperature, samples=5000, chains=16, seed=1,
                     relax=CFG)(field, x, y, free=free)
    target = _em_stationary_target(field, x, y, free, beta, temperature, est.info["dt"])
    deterministic = CenteredEP(beta, relax=CFG)(field, x, y, free=free).grads
    se = float(_flat(est.info["std_error"]).norm())
    # ‖e‖² = Σ λ_i z_i² with Σ λ_i = Σ SE²: 4 SE bounds it with P ≤ P(χ²₁ > 16) = 6e-5
    # measured: ‖error‖ 0.077, ‖SE‖ 0.071, thermal term ‖target − deterministic‖ 0.63
    assert float((_flat(est.grads) - _flat(target)).norm()) < 4 * se
    assert float((_flat(target) - _flat(deterministic)).norm()) > 4 * se


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("centered", [True, False])
def test_langevin_converges_to_deterministic_ep_as_temperature_falls(activation, centered):
    """E[ĝ_T] = ĝ_det + O(T); the mean's error is O(√(T/n)), measured by batch means: at low T
    the distance to deterministic EP is within 4 standard errors, and both shrink like √T."""
    field, x, y = problem(activation=activation, form="classical", sizes=(4, 6, 3), batch=3)
    free = relax(field.bind(x), config=CFG)
    beta = 0.1
    det = (CenteredEP if centered else OneSidedEP)(beta, relax=CFG)(field, x, y, free=free)
    err, se = {}, {}
    for temperature in (1e-3, 1e-5):
        est = get_estimator("langevin", beta, temperature=temperature, samples=3000, chains=8,
                            centered=centered, relax=CFG)(field, x, y, free=free)
        err[temperature] = float((_flat(est.grads) - _flat(det.grads)).norm())
        se[temperature] = float(_flat(est.info["std_error"]).norm())
        assert err[temperature] < 4 * se[temperature], (temperature, err, se)
    assert 5 < se[1e-3] / se[1e-5] < 20  # √(1e-3/1e-5) = 10
    assert err[1e-5] < err[1e-3] / 3
    # measured (tanh, centered): ‖error‖ 4.0e-3 / 3.4e-4, ‖SE‖ 2.9e-3 / 2.9e-4, |g| 1.0


def test_langevin_is_reproducible_and_seeded():
    field, x, y = problem(activation="tanh", form="classical", sizes=(3, 4, 2), batch=2)
    kw = dict(temperature=1e-2, samples=200, burn_in=50, relax=CFG)
    a = LangevinEP(0.1, seed=5, **kw)(field, x, y)
    b = LangevinEP(0.1, seed=5, **kw)(field, x, y)
    c = LangevinEP(0.1, seed=6, **kw)(field, x, y)
    assert all(torch.equal(u, v) for u, v in zip(a.grads, b.grads, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a.grads, c.grads, strict=True))
    assert a.info["temperature"] == 1e-2 and a.info["burn_in"] == 50
    assert len(a.info["chain_means"]) == 2 and a.betas == (0.1, -0.1)
    assert all(bool(eq.converged.all()) for eq in a.nudged)  # the chains' deterministic starts


def test_common_noise_cuts_the_variance():
    field, x, y = problem(activation="tanh", form="classical", sizes=(3, 4, 2), batch=2)
    kw = dict(temperature=1e-3, samples=1000, chains=4, relax=CFG)
    common = LangevinEP(0.05, **kw)(field, x, y)
    independent = LangevinEP(0.05, common_noise=False, **kw)(field, x, y)
    # without common noise the two phases' fluctuations add, divided by 2β
    assert _flat(independent.info["std_error"]).norm() > 5 * _flat(
        common.info["std_error"]).norm()


def test_langevin_float32():
    field, x, y = problem(activation="tanh", form="classical", sizes=(4, 6, 3), batch=3,
                          dtype="float32")
    cfg = CFG.replace(tol=1e-6)
    est = LangevinEP(0.1, temperature=1e-4, samples=1000, chains=4, relax=cfg)(field, x, y)
    det = CenteredEP(0.1, relax=cfg)(field, x, y, free=est.free)
    assert est.grads[0].dtype == torch.float32
    se = float(_flat(est.info["std_error"]).norm())
    # float32 equilibria (tol 1e-6) move the centered estimate by ~1e-6/β: within the noise
    assert float((_flat(est.grads) - _flat(det.grads)).norm()) < 4 * se + 1e-4


def test_langevin_refuses_the_primitive_form_with_tanh():
    field, x, y = problem(activation="tanh", form="primitive", sizes=(3, 4, 2), batch=2)
    with pytest.raises(ValueError, match="primitive form with tanh"):
        LangevinEP(0.1)(field, x, y)
    # clipped (or identity) primitive energies are ½‖s‖² − Φ on the box: sampled
    field, x, y = problem(activation="hard_sigmoid", form="primitive", sizes=(3, 4, 2), batch=2)
    out = LangevinEP(0.1, temperature=1e-4, samples=100, burn_in=10, relax=CFG)(field, x, y)
    assert all(torch.isfinite(g).all() for g in out.grads)
    assert all(float(s.min()) >= 0 and float(s.max()) <= 1
               for m in out.info["chain_means"] for s in m)


# --- shared interface ---------------------------------------------------------------------------

def test_failures_raise_or_are_masked():
    field, x = diverging_problem()
    y = torch.zeros(2, 2, dtype=torch.float64)
    cfg = RelaxConfig(method="fixed_point", tol=1e-8, max_steps=500)
    with pytest.raises(ctep.RelaxationError, match="DIVERGED"):
        FiniteNudgeEP(0.5, points=3, relax=cfg)(field, x, y)
    out = FiniteNudgeEP(0.5, points=3, relax=cfg, on_failure="mask")(field, x, y)
    assert out.used.tolist() == [False, True]
    assert all(torch.isfinite(g).all() for g in out.grads)
    with pytest.raises(ctep.RelaxationError):
        LangevinEP(0.1, samples=200, relax=cfg)(field, x, y)
    # E is unbounded below: the noise also pushes sample 1 off its (unstable) equilibrium s = 0
    out = LangevinEP(0.1, samples=200, relax=cfg, on_failure="mask")(field, x, y)
    assert out.used.tolist() == [False, False]
    assert all(torch.isfinite(g).all() and not g.any() for g in out.grads)


class _Quartic(Energy):
    """E = ½s² − x·s⁴/4 − b·s (one unit): a stable well at s ≈ b with, for x > 0, a barrier
    beyond which the state runs away; for x = 0 a plain quadratic."""

    state_shapes = ((1,),)

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor([0.1], dtype=torch.float64))

    def energy(self, x, states):
        s = states[0]
        return (0.5 * s**2 - x * s**4 / 4 - self.b * s).sum(dim=1)


def test_langevin_masks_a_sample_whose_chain_alone_diverges():
    """Deterministic phases converge for both samples; at T = 0.3 the chain of sample 1 crosses
    its barrier and runs away: it is dropped (and the rest rerun unchanged) or raises."""
    field = VectorField(_Quartic())
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    kw = dict(temperature=0.3, samples=2000, seed=0, relax=CFG)
    out = LangevinEP(0.1, on_failure="mask", **kw)(field, x, y)
    assert all(bool(eq.converged.all()) for eq in (out.free, *out.nudged))
    assert out.used.tolist() == [True, False]
    assert all(torch.isfinite(g).all() for g in out.grads) and bool(out.grads[0].any())
    with pytest.raises(ctep.RelaxationError, match="Langevin chains diverged"):
        LangevinEP(0.1, **kw)(field, x, y)


@pytest.mark.parametrize("name,kwargs,match", [
    ("finite-nudge", {"points": 0}, "points"),
    ("finite-nudge", {"points": 2.5}, "points"),
    ("finite-nudge", {"points": True}, "points"),
    ("finite-nudge", {"points": float("nan")}, "points"),
    ("finite-nudge", {"temperature": 1e-3}, "takes no option 'temperature'"),
    ("langevin", {"temperature": 0.0}, "temperature"),
    ("langevin", {"temperature": -1e-3}, "temperature"),
    ("langevin", {"temperature": float("nan")}, "temperature"),
    ("langevin", {"samples": 5}, "samples"),
    ("langevin", {"blocks": 1}, "blocks"),
    ("langevin", {"burn_in": -1}, "burn_in"),
    ("langevin", {"dt": 0.0}, "dt"),
    ("langevin", {"seed": 1.5}, "seed"),
    ("langevin", {"chains": 0}, "chains"),
    ("langevin", {"centered": "yes"}, "centered"),
    ("langevin", {"points": 4}, "takes no option 'points'"),
    ("stochastic", {"temprature": 1e-3}, "it takes: .*temperature"),
])
def test_bad_options(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_estimator(name, 0.1, **kwargs)


def test_registry_names():
    assert isinstance(get_estimator("finite_nudge", 1.0, points=3), FiniteNudgeEP)
    assert isinstance(get_estimator("stochastic", 0.1, temperature=1e-2), LangevinEP)
    assert get_estimator("langevin", 0.1, temperature=2e-3).temperature == 2e-3
    assert get_estimator("finite-nudge", 1.0).points == 4
