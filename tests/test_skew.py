"""Skew-gradient (FitzHugh–Nagumo) EP: closed forms, saddle yet stable equilibria, EP vs the
implicit reference, bias orders, stability guard (Hopf, limit cycle), bad inputs. float64."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctep import CenteredEP, DenseHopfield, OneSidedEP, RelaxConfig, Status, VectorField, relax
from ctep.energies.base import Energy
from ctep.reference import compare, implicit_gradient
from ctep.skew import (
    SkewGradientField,
    Stability,
    StableEP,
    UnstableEquilibriumError,
    find_critical_point,
    fitzhugh_nagumo,
    settle,
    small_instance,
)

DT = torch.float64
FAST = RelaxConfig(method="dopri5", tol=1e-6, max_time=3000.0)
POLISH = 8


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def theory_network(tau_v: float = 12.5, bias: float = -0.1, seed: int = 0):
    """THEORY §6's check: 5 units, γ = 0.8, a = 0.7, τ_v = 12.5, I ≈ −0.1 ± 0.1."""
    field = fitzhugh_nagumo(5, 2, 2, tau_v=tau_v, coupling=0.2, input_bias=bias,
                            input_scale=0.2, seed=seed, dtype=DT)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(3, 2, generator=gen, dtype=DT) - 0.5
    y = -1.3 + 0.3 * torch.rand(3, 2, generator=gen, dtype=DT)
    return field, x, y


def mixed_network(tau_v: float = 12.5):
    """One unit, I = 0.8x − 0.3: x = 0 rests (I = −0.3), x = 1 oscillates (I = 0.5)."""
    field = fitzhugh_nagumo(1, 1, 1, tau_v=tau_v, edges="chain", dtype=DT)
    with torch.no_grad():
        field.energy.input_weight.fill_(0.8)
        field.energy.input_bias.fill_(-0.3)
    return field, torch.tensor([[0.0], [1.0]], dtype=DT), torch.tensor([[-1.0], [-1.0]], dtype=DT)


def test_closed_form_gradient_and_laplacian_match_autograd():
    field, x, _ = theory_network()
    e = field.energy
    with torch.no_grad():
        e.couplings.copy_(torch.rand(e.couplings.shape, generator=torch.Generator().manual_seed(3),
                                     dtype=DT))
    gen = torch.Generator().manual_seed(4)
    states = tuple(torch.randn(3, 5, generator=gen, dtype=DT) for _ in range(2))
    closed = e.grad_states(x, states)
    auto = Energy.grad_states(e, x, states)
    for c, a in zip(closed, auto, strict=True):
        assert torch.allclose(c, a, atol=1e-13)
    lap = e.laplacian()
    assert torch.allclose(lap, lap.t()) and torch.allclose(lap.sum(1), torch.zeros(5, dtype=DT))
    # ½ uᵀLu = ½ Σ_e g_e (u_i − u_j)²
    u = states[1]
    i, j = e.edge_index
    direct = 0.5 * (e.couplings * (u[:, i] - u[:, j]) ** 2).sum(1)
    assert torch.allclose(0.5 * ((u @ lap) * u).sum(1), direct, atol=1e-13)


def test_drive_signs_and_signature():
    field, x, y = theory_network()
    bound = field.bind(x, y, 0.1)
    gen = torch.Generator().manual_seed(5)
    states = tuple(torch.randn(3, 5, generator=gen, dtype=DT) for _ in range(2))
    dv, du = bound.drive(states)
    gv, gu = field.energy.grad_states(x, states)
    nudge = 0.1 * field.cost.grad_output(states[1], y)
    assert torch.allclose(dv, gv) and torch.allclose(du, -(gu + nudge))  # v ascends, u descends
    sig_v, sig_u = field.signature()
    assert torch.allclose(sig_v, torch.full((5,), 1 / 12.5, dtype=DT))
    assert torch.allclose(sig_u, torch.full((5,), -1.0, dtype=DT))
    # J = S ∇²F
    jac = field.flow_jacobian(x, states, y, 0.1)
    hes = field.hessian(x, states, y, 0.1)
    s = torch.cat([sig_v, sig_u])
    assert torch.allclose(jac, s.unsqueeze(-1) * hes, atol=1e-12)
    assert torch.allclose(hes, hes.transpose(1, 2), atol=1e-12)
    # autograd mode gives the same drive
    auto = SkewGradientField(field.energy, field.cost, field.tau, gradient="autograd")
    for a, c in zip(auto.bind(x, y, 0.1).drive(states), (dv, du), strict=True):
        assert torch.allclose(a, c, atol=1e-13)


def test_saddle_of_h_is_a_stable_equilibrium_reached_by_torchdiffeq():
    field, x, _ = theory_network()
    crit = find_critical_point(field, x)
    assert bool(crit.converged.all()) and float(crit.residual.max()) < 1e-12
    eq = relax(field.bind(x), config=RelaxConfig(method="dopri5", tol=1e-9))
    assert bool(eq.converged.all())
    for a, b in zip(eq.states, crit.states, strict=True):  # dynamics = root finder
        assert float((a - b).abs().max()) < 1e-8
    rep = field.stability(x, eq)
    assert bool(rep.stable.all())
    assert (rep.hessian_negative == 5).all() and (rep.hessian_positive == 5).all()  # saddle
    assert float(rep.max_real.max()) < -0.01
    # critical points do not depend on τ
    other = fitzhugh_nagumo(5, 2, 2, tau_v=2.0, coupling=0.2, input_bias=-0.1, input_scale=0.2,
                            seed=0, dtype=DT)
    crit2 = find_critical_point(other, x)
    for a, b in zip(crit.states, crit2.states, strict=True):
        assert float((a - b).abs().max()) < 1e-13


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_units=st.integers(2, 6),
       beta=st.floats(3e-4, 1e-3))
def test_centered_ep_matches_implicit(seed, n_units, beta):
    """THEORY §3: centered bias c₃β²; measured ~1e-7 relative at β = 1e-3 (docs), so 1e-5
    leaves two orders of margin for c₃ and for the solve (residual ≤ 1e-13 after polish)."""
    field, x, y = small_instance(seed, DT, n_units=n_units)
    free, rep = settle(field, x, config=FAST, polish=POLISH)
    rep.check()
    assert float(free.residual.max()) < 1e-13
    ref = implicit_gradient(field, x, y, free.states)
    est = StableEP(CenteredEP(beta, relax=FAST.replace(polish=POLISH)))(field, x, y, free=free)
    out = compare(est.grads, ref)
    assert out["rel_error"] < 1e-5, out
    assert out["sign_agreement"] == 1.0
    assert est.info["max_real_eig"] < 0


def test_bias_orders_and_plain_estimator_reuse():
    field, x, y = small_instance(7, DT)
    free, rep = settle(field, x, config=FAST, polish=POLISH)
    ref = implicit_gradient(field, x, y, free.states)
    betas = (4e-2, 2e-2, 1e-2)
    errs: dict[str, list[float]] = {"one-sided": [], "centered": []}
    nudged = FAST.replace(polish=POLISH)
    for beta in betas:
        for cls in (OneSidedEP, CenteredEP):
            errs[cls.name].append(compare(StableEP(cls(beta, relax=nudged))(
                field, x, y, free=free).grads, ref)["rel_error"])
    for name, order in (("one-sided", 1), ("centered", 2)):
        slope = math.log(errs[name][0] / errs[name][-1]) / math.log(betas[0] / betas[-1])
        assert abs(slope - order) < 0.2, (name, slope, errs[name])
    # the core Estimator takes the skew field unchanged and agrees with the guarded one
    plain = CenteredEP(1e-2, relax=nudged)(field, x, y, free=free)
    guarded = StableEP(CenteredEP(1e-2, relax=nudged))(field, x, y, free=free)
    assert float((flat(plain.grads) - flat(guarded.grads)).abs().max()) < 1e-12


def test_hopf_stability_depends_on_tau_not_the_critical_point():
    """I = 0.5 puts u* on the middle branch (1 − u*² > 0): stable for τ_v = 1, a Hopf-unstable
    focus for τ_v = 12.5 (a complex pair with positive real part)."""
    x = torch.zeros(1, 1, dtype=DT)
    reps, crits = [], []
    for tau_v in (1.0, 12.5):
        field = fitzhugh_nagumo(3, 1, 1, tau_v=tau_v, coupling=0.05, input_bias=0.5,
                                input_scale=0.0, dtype=DT)
        crit = find_critical_point(field, x)
        crits.append(crit.states)
        reps.append(field.stability(x, crit))
    assert max(float((a - b).abs().max()) for a, b in zip(*crits, strict=True)) < 1e-13
    assert reps[0].status[0] == Stability.STABLE and float(reps[0].max_real[0]) < 0
    assert reps[1].status[0] == Stability.UNSTABLE and float(reps[1].max_real[0]) > 0
    lead = reps[1].eigenvalues[0, 0]
    assert abs(float(lead.imag)) > 0.05  # a complex pair crosses: Hopf, not a saddle-node


def test_limit_cycle_is_refused_with_a_clear_status():
    field, x, y = mixed_network()
    # the resting sample needs t ≈ 100 (slowest rate 0.185); the cycle has period ≈ 30
    cfg = RelaxConfig(method="dopri5", tol=1e-6, max_time=150.0)
    eq, rep = settle(field, x, config=cfg, polish=POLISH)
    assert rep.status.tolist() == [int(Stability.STABLE), int(Stability.NOT_CONVERGED)]
    assert float(rep.critical_max_real[1]) > 0  # the equilibrium inside the cycle is unstable
    with pytest.raises(UnstableEquilibriumError, match="NOT_CONVERGED.*limit cycle"):
        rep.check()
    with pytest.raises(UnstableEquilibriumError, match="limit cycle"):
        StableEP(CenteredEP(1e-3, relax=cfg.replace(polish=POLISH)), polish=POLISH)(field, x, y)
    # Newton polish inside relax lands on the unstable critical point: the report says so
    polished = relax(field.bind(x), config=cfg.replace(polish=20))
    assert polished.status[1] == Status.CONVERGED
    rep2 = field.stability(x, polished)
    assert rep2.status[1] == Stability.UNSTABLE and float(rep2.max_real[1]) > 0
    with pytest.raises(UnstableEquilibriumError, match="UNSTABLE.*oscillate"):
        rep2.check()
    # masking keeps the stable sample, and its gradient is that sample's own
    est = StableEP(CenteredEP(1e-3, relax=cfg.replace(polish=POLISH)), polish=POLISH,
                   on_unstable="mask")(field, x, y, free=eq)
    assert est.used.tolist() == [True, False]
    alone = StableEP(CenteredEP(1e-3, relax=cfg.replace(polish=POLISH)), polish=POLISH)(
        field, x[:1], y[:1])
    assert float((flat(est.grads) - flat(alone.grads)).abs().max()) < 1e-10


def test_signed_wrapper_of_a_gradient_energy():
    """All signs +1 give the gradient flow −∂E/∂s (not the energy's own primitive-form drive,
    which has the same roots); flipping one layer flips its drive."""
    energy = DenseHopfield([3, 4, 2], "tanh", seed=0, dtype=DT)
    x = torch.rand(2, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    states = tuple(0.3 * torch.ones(2, n, dtype=DT) for n in (4, 2))
    plain = tuple(-g for g in energy.grad_states(x, states))
    same = SkewGradientField(energy, signs=(1.0, 1.0)).bind(x).drive(states)
    flip = SkewGradientField(energy, signs=(1.0, -1.0)).bind(x).drive(states)
    assert torch.allclose(plain[0], same[0]) and torch.allclose(plain[1], same[1])
    assert torch.allclose(plain[0], flip[0]) and torch.allclose(plain[1], -flip[1])


def test_bad_inputs_give_clear_errors():
    field, x, y = theory_network()
    with pytest.raises(ValueError, match=r"input must have shape \(B, 2\)"):
        field.bind(torch.zeros(3, 4, dtype=DT))
    with pytest.raises(ValueError, match=r"targets must be float values of shape \(B, 2\)"):
        field.bind(x, torch.zeros(3, 3, dtype=DT), 0.1)
    with pytest.raises(ValueError, match="batch size"):
        field.bind(x, torch.zeros(2, 2, dtype=DT), 0.1)
    with pytest.raises(ValueError, match="output units must be distinct"):
        fitzhugh_nagumo(3, 1, [0, 5])
    with pytest.raises(ValueError, match="outputs must lie"):
        fitzhugh_nagumo(3, 1, 4)
    with pytest.raises(ValueError, match="edge"):
        fitzhugh_nagumo(3, 1, 1, edges=[(0, 0)])
    energy = DenseHopfield([3, 4, 2], "tanh", dtype=DT)
    with pytest.raises(ValueError, match="2 signs given for 3"):
        SkewGradientField(DenseHopfield([3, 4, 2, 2], "tanh", dtype=DT), signs=(1, -1))
    with pytest.raises(ValueError, match=r"\+1 \(descend\) or −1"):
        SkewGradientField(energy, signs=(1, 0.5))
    with pytest.raises(TypeError, match="SkewEnergy or explicit signs"):
        SkewGradientField(energy)
    with pytest.raises(TypeError, match="SkewGradientField"):
        StableEP(CenteredEP(1e-3))(VectorField(energy), torch.zeros(1, 3, dtype=DT),
                                   torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="state 1 has shape"):
        field.stability(x, (torch.zeros(3, 5, dtype=DT), torch.zeros(3, 4, dtype=DT)))
    with pytest.raises(ValueError, match="on_unstable"):
        StableEP(CenteredEP(1e-3), on_unstable="ignore")
