"""Dendritic neurons: the energy-consistent form, its closed forms, EP vs implicit, and why the
paper's untied rule has no energy."""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff, nudge_keeps_output_clip
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ctep import RelaxConfig, VectorField, relax
from ctep._linalg import batched_jacobian, checked_eigvalsh
from ctep.energies import DendriticHopfield, DendriticRule
from ctep.estimators import CenteredEP, HolomorphicEP
from ctep.models import active_set, active_set_margin, build_model, small_instance
from ctep.reference import compare, implicit_gradient

F64 = torch.float64
TIGHT = RelaxConfig(method="fixed_point", tol=1e-12, max_steps=20_000)


def _inputs(n_in: int, batch: int, seed: int, classes: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, n_in, generator=g, dtype=F64),
            torch.randint(0, classes, (batch,), generator=g))


def _states(energy, batch: int, seed: int, lo: float = 0.05, hi: float = 0.95):
    g = torch.Generator().manual_seed(seed)
    return tuple(lo + (hi - lo) * torch.rand(batch, *sh, generator=g, dtype=F64)
                 for sh in energy.state_shapes)


def _rule_by_hand(e: DendriticHopfield, x, s):
    """s_l = σ(b_l + α a_l) written out branch by branch (independent of the module's einsums)."""
    layers = (x, *s)
    out = []
    for l in range(1, len(layers)):
        w, c = e.effective_weight(l - 1), e.branch_biases[l - 1]
        b = sum(torch.relu(layers[l - 1] @ w[k].T + c[k]) for k in range(e.branches)) / e.branches
        a = torch.zeros_like(b)
        if l + 1 < len(layers):
            w, c = e.effective_weight(l), e.branch_biases[l]
            for k in range(e.branches):
                gate = (layers[l] @ w[k].T + c[k] > 0).to(F64)
                a = a + (gate * layers[l + 1]) @ w[k] / e.branches
        out.append(e.activations[l - 1](b + e.apical_scale * a))
    return tuple(out)


# --- closed forms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("branch", ["relu", "softplus"])
@pytest.mark.parametrize("form", ["primitive", "classical"])
def test_closed_forms_equal_autograd(branch, form):
    e, _ = small_instance("dendritic", 1, branch_activation=branch, form=form, activation="tanh",
                          sizes=(4, 6, 5, 3), branches=4)
    x, y = _inputs(4, 3, 2, 3)
    s = _states(e, 3, 3, -0.9, 0.9)
    assert max_diff(e.phi_grad(x, s), e.phi_grad_autograd(x, s)) < 1e-12
    ss = tuple(t.clone().requires_grad_(True) for t in s)
    assert max_diff(e.grad_states(x, s), torch.autograd.grad(e.energy(x, ss).sum(), ss)) < 1e-12
    field, auto = VectorField(e), VectorField(e, gradient="autograd")
    for beta in (0.0, 0.2):
        assert max_diff(field.bind(x, y, beta).drive(s), auto.bind(x, y, beta).drive(s)) < 1e-12


def test_somatic_input_is_basal_plus_scaled_apical():
    """phi_grad is u_l = b_l + α a_l exactly as the docstring writes it (hand-written loops)."""
    e, _ = small_instance("dendritic", 4, activation="identity")
    x, _ = _inputs(5, 2, 5, 3)
    s = _states(e, 2, 6)
    assert max_diff(e.phi_grad(x, s), _rule_by_hand(e, x, s)) < 1e-13
    lam = e.layer_weights
    assert lam[-1] == 1.0
    assert all(lam[i + 1] / lam[i] == pytest.approx(e.apical_scale) for i in range(len(lam) - 1))


# --- the energy's stationary points are the rule's fixed points -------------------------------
@pytest.mark.parametrize("activation", ["hard_sigmoid", "sigmoid"])
def test_fixed_points_of_the_rule_are_stationary_points(activation):
    e, _ = small_instance("dendritic", 7, activation=activation)
    x, y = _inputs(5, 4, 8, 3)
    field = VectorField(e)
    free = relax(field.bind(x), config=TIGHT)
    assert bool(free.converged.all())
    assert max_diff(free.states, _rule_by_hand(e, x, free.states)) < 1e-11
    if activation == "sigmoid":  # ∂E/∂s = λ(σ⁻¹(s) − u): zero at the fixed point
        with torch.no_grad():
            assert max(float(g.abs().max()) for g in e.grad_states(x, free.states)) < 1e-9
    # the nudged fixed point: s_L = σ(u_L − β ∂ℓ/∂s_L), the nudge unscaled (λ_L = 1)
    beta = 0.3
    nudged = relax(field.bind(x, y, beta), free.states, TIGHT)
    u = e.phi_grad(x, nudged.states)
    target = field.cost.grad_output(nudged.states[-1], y)
    assert max_diff((nudged.states[-1],), (e.activations[-1](u[-1] - beta * target),)) < 1e-11


def test_hessian_is_symmetric_and_positive_at_the_free_equilibrium():
    e, _ = small_instance("dendritic", 3, activation="sigmoid")
    x, _ = _inputs(5, 2, 4, 3)
    free = relax(VectorField(e).bind(x), config=TIGHT)
    hess = batched_jacobian(lambda s: e.grad_states(x, s), free.states)
    assert float((hess - hess.transpose(1, 2)).abs().max()) < 1e-10
    assert float(checked_eigvalsh(0.5 * (hess + hess.transpose(1, 2))).min()) > 0


# --- EP vs the implicit reference -----------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hidden=st.lists(st.integers(1, 6), min_size=1, max_size=2), n_in=st.integers(1, 6),
       n_out=st.integers(1, 4), branches=st.integers(1, 8),
       sparsity=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
       apical_scale=st.sampled_from([0.2, 0.5, 1.0]),
       branch=st.sampled_from(["relu", "softplus"]),
       activation=st.sampled_from(["hard_sigmoid", "sigmoid", "tanh"]),
       form=st.sampled_from(["primitive", "classical"]), seed=st.integers(0, 10_000))
def test_centered_ep_matches_implicit(hidden, n_in, n_out, branches, sparsity, apical_scale,
                                      branch, activation, form, seed):
    e, _ = small_instance("dendritic", seed, sizes=(n_in, *hidden, n_out), branches=branches,
                          sparsity=sparsity, apical_scale=apical_scale,
                          branch_activation=branch, activation=activation, form=form)
    x, y = _inputs(n_in, 2, seed + 9, n_out)
    field = VectorField(e)
    cfg = TIGHT.replace(damping=0.5 if form == "classical" else 1.0)
    free = relax(field.bind(x), config=cfg)
    assert bool(free.converged.all())
    est = CenteredEP(1e-3, relax=cfg)(field, x, y, free=free)
    codes = active_set(e, x, free.states)
    # EP needs a locally constant active set: the same branch gates and clip regions at ±β
    assume(all(torch.equal(codes, active_set(e, x, n.states)) for n in est.nudged))
    assume(nudge_keeps_output_clip(field, x, y, est))  # the codes do not see the nudge
    ref = implicit_gradient(field, x, y, free.states)
    assume(float(torch.cat([g.reshape(-1) for g in ref]).norm()) > 1e-8)
    m = compare(est.grads, ref)
    assert m["rel_error"] < 1e-5, m
    assert m["cosine"] > 1 - 1e-9


def test_ep_error_is_second_order_in_beta():
    e, _ = small_instance("dendritic", 0)
    x, y = _inputs(5, 3, 1, 3)
    field = VectorField(e)
    free = relax(field.bind(x), config=TIGHT)
    ref = implicit_gradient(field, x, y, free.states)
    errors = [compare(CenteredEP(b, relax=TIGHT)(field, x, y, free=free).grads, ref)["rel_error"]
              for b in (4e-3, 2e-3, 1e-3)]
    assert errors[0] / errors[1] == pytest.approx(4, rel=0.1)
    assert errors[1] / errors[2] == pytest.approx(4, rel=0.1)
    assert float(active_set_margin(e, x, free.states).min()) > 0


def test_masks_are_fixed_by_the_seed_and_gradients_stay_on_them():
    a = DendriticHopfield((30, 20, 4), branches=3, sparsity=0.5, seed=1, dtype=F64)
    b = DendriticHopfield((30, 20, 4), branches=3, sparsity=0.5, seed=1, dtype=F64)
    c = DendriticHopfield((30, 20, 4), branches=3, sparsity=0.5, seed=2, dtype=F64)
    assert torch.equal(a.mask(0), b.mask(0)) and not torch.equal(a.mask(0), c.mask(0))
    assert float(a.mask(0).mean()) == pytest.approx(0.5, abs=0.05)
    assert bool((a.weights[0][a.mask(0) == 0] == 0).all())
    x, y = _inputs(30, 2, 3, 4)
    field = VectorField(a)
    est = CenteredEP(1e-2, relax=TIGHT)(field, x, y)
    for layer, g in enumerate(est.grads[: len(a.weights)]):
        assert bool((g[a.mask(layer) == 0] == 0).all())
    assert float(est.grads[0].abs().max()) > 0
    assert len(a.state_dict()) == 2 * len(a.weights) + len(a.weights)  # + the mask buffers


# --- the paper's rule has no energy -----------------------------------------------------------
def test_paper_rule_is_not_a_gradient_field():
    """For the untied rule, ∂u_l/∂s_{l+1} depends only on s_{l+1} and ∂u_{l+1}/∂s_l only on s_l,
    so c_{l+1} ∂u_{l+1}/∂s_l = α c_l (∂u_l/∂s_{l+1})ᵀ (symmetry of an energy's Hessian with
    constant layer weights) fails as soon as a branch gate switches. The tied energy form's
    Jacobian satisfies it everywhere (its Hessian is symmetric)."""
    rule = DendriticRule((4, 6, 5), branches=4, apical_branches=2, sparsity=0.25,
                         activation="identity", seed=3, dtype=F64)
    x = torch.rand(1, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = torch.Generator().manual_seed(1)

    def blocks(s):
        jac = batched_jacobian(lambda t: rule.preactivation(x, t), s)[0]
        return jac[:6, 6:], jac[6:, :6]  # ∂u_1/∂s_2 and ∂u_2/∂s_1

    s2 = torch.rand(1, 5, generator=g, dtype=F64)
    up_a, down_a = blocks((torch.randn(1, 6, generator=g, dtype=F64), s2))
    up_b, down_b = blocks((torch.randn(1, 6, generator=g, dtype=F64), s2))
    assert torch.equal(up_a, up_b)  # the apical block ignores s_1 ...
    assert float((down_a - down_b).abs().max()) > 1e-3  # ... the basal block does not
    # so no constant ratio c_2/(α c_1) can make both points symmetric
    ratios = [(up.T * down).sum() / (down * down).sum() for up, down in ((up_a, down_a),
                                                                        (up_b, down_b))]
    residuals = [float((up.T - r * down).abs().max())
                 for r in ratios for up, down in ((up_a, down_a), (up_b, down_b))]
    assert min(max(residuals[:2]), max(residuals[2:])) > 1e-3
    # the tied energy form: λ_l ∂u_l/∂s_{l+1} is the transpose of λ_{l+1} ∂u_{l+1}/∂s_l
    e = DendriticHopfield((4, 6, 5), branches=4, sparsity=0.25, activation="identity", seed=3,
                          dtype=F64)
    jac = batched_jacobian(lambda t: e.phi_grad(x, t), (torch.randn(1, 6, dtype=F64,
                                                                    generator=g), s2))[0]
    lam = e.layer_weights
    assert float((lam[0] * jac[:6, 6:] - lam[1] * jac[6:, :6].T).abs().max()) < 1e-14
    assert len(rule.step(x, (torch.zeros(1, 6, dtype=F64), s2))) == 2


# --- configuration errors -----------------------------------------------------------------------
def test_configuration_errors():
    with pytest.raises(ValueError, match="sparsity must lie in"):
        DendriticHopfield((4, 3), sparsity=1.0)
    with pytest.raises(ValueError, match="branches must be a positive integer"):
        DendriticHopfield((4, 3), branches=0)
    with pytest.raises(ValueError, match="apical_scale must be positive"):
        DendriticHopfield((4, 3), apical_scale=0.0)
    with pytest.raises(ValueError, match="unknown branch activation 'tanh'"):
        DendriticHopfield((4, 3), branch_activation="tanh")
    with pytest.raises(ValueError, match="sizes must list at least two"):
        DendriticHopfield((4,))
    with pytest.raises(ValueError, match="2 hidden activations given for 1 hidden layers"):
        DendriticHopfield((4, 3, 2), activation=["tanh", "tanh"])
    e = DendriticHopfield((4, 3, 2), dtype=F64)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 4\)"):
        VectorField(e).bind(torch.zeros(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="no separate apical branches"):
        build_model("dendritic", sizes=(4, 3, 2), apical_branches=2)
    with pytest.raises(ValueError, match="not holomorphic"):
        HolomorphicEP(0.01, points=4)(VectorField(DendriticHopfield((4, 3, 2), activation="tanh",
                                                                   dtype=F64)),
                                      torch.zeros(2, 4, dtype=F64), torch.zeros(2, 2, dtype=F64))
    m = build_model("dendritic-fmnist", dtype="float32")
    assert m.sizes == (784, 256, 256, 10) and m.branches == 8 and m.apical_scale == 0.2
    assert build_model("dendritic-mnist").sizes == (784, 256, 10)
