"""Convolutional energies and Hopfield-ResNet: closed forms, EP vs implicit, shapes, registry."""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff, nudge_keeps_output_clip
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ctep import RelaxConfig, VectorField, relax
from ctep.energies import ConvHopfield, HopfieldResNet, hopfield_resnet13, vgg5
from ctep.energies.conv import ConvCoupling
from ctep.estimators import CenteredEP, HolomorphicEP
from ctep.models import (
    MODELS,
    active_set,
    active_set_margin,
    build_model,
    model_options,
    small_instance,
)
from ctep.reference import compare, implicit_gradient

F64 = torch.float64
TIGHT = RelaxConfig(method="fixed_point", tol=1e-11, max_steps=20_000)


def _rand_states(energy, batch: int, seed: int, lo: float = 0.05, hi: float = 0.95):
    g = torch.Generator().manual_seed(seed)
    return tuple(lo + (hi - lo) * torch.rand(batch, *sh, generator=g, dtype=F64)
                 for sh in energy.state_shapes)


def _inputs(shape, batch: int, seed: int, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, *shape, generator=g, dtype=F64),
            torch.randint(0, classes, (batch,), generator=g))


# --- closed forms vs autograd ---------------------------------------------------------------------
CONV_CASES = [
    dict(input_shape=(2, 9, 7), channels=(3, 4), kernel=(3, 2), padding=(1, 0), pool="max"),
    dict(input_shape=(2, 9, 7), channels=(3, 4), kernel=3, padding=1, pool="avg", hidden=(5,)),
    dict(input_shape=(1, 8, 8), channels=(3,), kernel=5, padding=2, pool="none"),
    dict(input_shape=(3, 11, 10), channels=(2, 3), kernel=3, padding=1, stride=2,
         pool=("max", "avg"), pool_size=(2, 1)),
    dict(input_shape=(2, 16, 14), channels=(2, 2), kernel=3, padding=1, pool="max",
         pool_size=3),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_phi_grad_closed_form_equals_autograd(case):
    e = ConvHopfield(n_out=4, seed=3, dtype=F64, **case)
    x, _ = _inputs(e.input_shape, 3, 1)
    r = _rand_states(e, 3, 2, -1.0, 1.0)
    assert max_diff(e.phi_grad(x, r), e.phi_grad_autograd(x, r)) < 1e-12


def test_resnet_phi_grad_closed_form_equals_autograd():
    for shape in [(2, 9, 7), (1, 8, 8), (3, 6, 5)]:
        e = HopfieldResNet(shape, (3, 2), 4, seed=1, dtype=F64)
        with torch.no_grad():
            for b in e.biases:
                b.uniform_(-1, 1, generator=torch.Generator().manual_seed(4))
        x, _ = _inputs(shape, 2, 5)
        r = _rand_states(e, 2, 6, 0.0, 6.0)
        assert max_diff(e.phi_grad(x, r), e.phi_grad_autograd(x, r)) < 1e-12


@pytest.mark.parametrize("name", ["conv", "hopfield-resnet"])
@pytest.mark.parametrize("form", ["primitive", "classical"])
def test_drive_and_grad_states_equal_autograd(name, form):
    e, shape = small_instance(name, seed=2, form=form, activation="tanh")
    x, y = _inputs(shape, 3, 7)
    s = _rand_states(e, 3, 8, -0.9, 0.9)
    field = VectorField(e)
    auto = VectorField(e, gradient="autograd")
    for beta in (0.0, 0.3):
        assert max_diff(field.bind(x, y, beta).drive(s), auto.bind(x, y, beta).drive(s)) < 1e-12
    ss = tuple(t.clone().requires_grad_(True) for t in s)
    grads = torch.autograd.grad(e.energy(x, ss).sum(), ss)
    assert max_diff(e.grad_states(x, s), grads) < 1e-12


def test_transposed_conv_is_the_adjoint():
    """⟨g, w ⋆ r⟩ = ⟨w ⋆ᵀ g, r⟩ for strided, padded, odd-sized convolutions."""
    gen = torch.Generator().manual_seed(0)
    for h, w, k, stride, pad in [(7, 6, 3, 2, 1), (8, 8, 1, 2, 0), (9, 5, 4, 3, 2)]:
        c = ConvCoupling(0, 1, (2, h, w), 3, k, stride=stride, padding=pad,
                         weight=torch.randn(3, 2, k, k, generator=gen, dtype=F64))
        r = torch.randn(2, 2, h, w, generator=gen, dtype=F64)
        z = c.conv(r)
        g = torch.randn(z.shape, generator=gen, dtype=F64)
        assert c.conv_adjoint(g).shape == r.shape
        with torch.no_grad():
            gap = float((g * z).sum() - (c.conv_adjoint(g) * r).sum())
        assert gap == pytest.approx(0, abs=1e-12)


def test_max_pool_primitive_is_piecewise_bilinear():
    """Inside a region of fixed arg-maxes Φ is linear along r_src; across a switch the
    directional derivative jumps (Φ is continuous but not differentiable on ties)."""
    e = ConvHopfield((1, 4, 4), (1, 1), 2, kernel=1, padding=0, pool=("none", "max"),
                     activation="identity", dtype=F64)
    with torch.no_grad():
        e.couplings[1].weight.fill_(1.0)
    x = torch.zeros(1, 1, 4, 4, dtype=F64)
    # window (0, 0) holds 0, 0.5, 2, 2.5: arg-max at (1, 1), runner-up (1, 0), gap 0.5
    s1 = 0.5 * torch.arange(16, dtype=F64).reshape(1, 1, 4, 4)
    s1[0, 0, 1, 0], s1[0, 0, 1, 1] = 2.0, 2.5
    top = torch.ones(1, 1, 2, 2, dtype=F64)
    out = torch.zeros(1, 2, dtype=F64)
    direction = torch.zeros_like(s1)
    direction[0, 0, 1, 0] = 1.0  # raise the runner-up

    def phi(t: float) -> float:
        with torch.no_grad():
            return float(e.phi(x, (s1 + t * direction, top, out)))

    assert phi(0.3) - phi(0.2) == pytest.approx(0.0, abs=1e-14)  # not the arg-max: flat
    assert phi(0.7) - phi(0.6) == pytest.approx(0.1, abs=1e-14)  # now the arg-max: slope 1
    states = (s1, top, out)
    assert float(active_set_margin(e, x, states)) == pytest.approx(0.5, abs=1e-14)
    moved = (s1 + 0.7 * direction, top, out)
    assert not torch.equal(active_set(e, x, states), active_set(e, x, moved))


@pytest.mark.parametrize("name", ["conv", "hopfield-resnet", "dendritic"])
def test_phi_grad_takes_the_input_term_explicitly(name):
    """phi_grad uses the input term it is given, bit for bit the one it computes itself when
    given none; the term it computes follows in-place changes of the weight and the input (no
    memo), and equals autograd."""
    e, shape = small_instance(name, 0)
    x, _ = _inputs(shape, 2, 3)
    r = tuple(0.5 * t + 0.1 for t in e.init_states(2, dtype=F64))
    with torch.no_grad():
        term = e.input_term(x)
        assert max_diff(e.phi_grad(x, r, input_term=term), e.phi_grad(x, r)) == 0
        assert max_diff(e.phi_grad(x, r), e.phi_grad_autograd(x, r)) < 1e-13
        x.mul_(0.5)
        assert max_diff(e.phi_grad(x, r), e.phi_grad_autograd(x, r)) < 1e-13
        next(e.parameters()).mul_(3.0)
        assert max_diff(e.phi_grad(x, r), e.phi_grad_autograd(x, r)) < 1e-13
        assert max_diff(e.phi_grad(x, r, input_term=term), e.phi_grad(x, r)) > 1e-3


# --- EP vs the implicit reference -----------------------------------------------------------------
def _ep_vs_implicit(energy, shape, seed: int, form: str, beta: float = 1e-3):
    x, y = _inputs(shape, 2, seed + 50, energy.state_shapes[-1][0])
    field = VectorField(energy)
    cfg = TIGHT.replace(damping=0.5 if form == "classical" else 1.0)
    free = relax(field.bind(x), config=cfg)
    assert bool(free.converged.all())
    est = CenteredEP(beta, relax=cfg)(field, x, y, free=free)
    codes = active_set(energy, x, free.states)
    # EP needs a locally constant active set: the same arg-maxes and clip regions at ±β
    assume(all(torch.equal(codes, active_set(energy, x, n.states)) for n in est.nudged))
    assume(nudge_keeps_output_clip(field, x, y, est))  # the codes do not see the nudge
    ref = implicit_gradient(field, x, y, free.states)
    assume(float(torch.cat([g.reshape(-1) for g in ref]).norm()) > 1e-8)
    return compare(est.grads, ref)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(channels=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       kernel=st.sampled_from([1, 2, 3]), pool=st.sampled_from(["max", "avg", "none"]),
       activation=st.sampled_from(["hard_sigmoid", "tanh", "sigmoid"]),
       form=st.sampled_from(["primitive", "classical"]), size=st.integers(5, 7),
       seed=st.integers(0, 10_000))
def test_conv_centered_ep_matches_implicit(channels, kernel, pool, activation, form, size, seed):
    e, shape = small_instance("conv", seed, channels=tuple(channels), kernel=kernel,
                              padding=kernel // 2, pool=pool, activation=activation, form=form,
                              input_shape=(2, size, size))
    m = _ep_vs_implicit(e, shape, seed, form)
    assert m["rel_error"] < 1e-5, m
    assert m["cosine"] > 1 - 1e-9


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(channels=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       activation=st.sampled_from(["relu6", "relu_alpha", "tanh"]),
       form=st.sampled_from(["primitive", "classical"]), size=st.integers(5, 8),
       seed=st.integers(0, 10_000))
def test_resnet_centered_ep_matches_implicit(channels, activation, form, size, seed):
    extra = {"alpha": 5.0} if activation == "relu_alpha" else {}
    e, shape = small_instance("hopfield-resnet", seed, channels=tuple(channels),
                              activation=activation, form=form, input_shape=(1, size, size),
                              **extra)
    m = _ep_vs_implicit(e, shape, seed, form)
    assert m["rel_error"] < 1e-5, m
    assert m["cosine"] > 1 - 1e-9


def test_holomorphic_ep_on_avg_pool_conv_and_clear_error_for_max_pool():
    e, shape = small_instance("conv", 4, activation="tanh", pool="avg")
    x, y = _inputs(shape, 2, 9)
    field = VectorField(e)
    free = relax(field.bind(x), config=TIGHT)
    ref = implicit_gradient(field, x, y, free.states)
    est = HolomorphicEP(1e-2, points=6, relax=TIGHT)(field, x, y, free=free)
    assert compare(est.grads, ref)["rel_error"] < 1e-8
    e, _ = small_instance("conv", 4, activation="tanh", pool="max")
    with pytest.raises(ValueError, match="max pooling is not holomorphic"):
        HolomorphicEP(1e-2, points=4, relax=TIGHT)(VectorField(e), x, y)


def test_resnet_energy_decreases_along_the_flow_and_solvers_agree():
    e, shape = small_instance("hopfield-resnet", 3)
    x, _ = _inputs(shape, 2, 11)
    field = VectorField(e)
    ref = relax(field.bind(x), config=TIGHT)
    eq = relax(field.bind(x), method="exp_euler", tol=1e-10, dt=0.3, check_every=4,
               record=True)
    assert max_diff(eq.states, ref.states) < 1e-9
    traj = eq.trajectory
    with torch.no_grad():
        energies = torch.stack([e.energy(x, tuple(s[i] for s in traj.states))
                                for i in range(traj.times.numel())])
    # Lyapunov for any τ, up to rounding of energies of size ~1e3
    assert (energies[1:] - energies[:-1] <= 1e-14 * energies.abs().max()).all()


# --- shapes, presets and errors -------------------------------------------------------------------
def test_vgg5_and_resnet13_shapes():
    v = vgg5("cifar10")
    assert v.state_shapes == ((128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2), (10,))
    assert len(v.couplings) == 5 and v.activations[0].name == "relu6"
    assert vgg5("fmnist").state_shapes[:4] == ((128, 14, 14), (256, 7, 7), (512, 3, 3),
                                              (512, 1, 1))
    r = hopfield_resnet13("cifar10")
    assert [s[1] for s in r.state_shapes[:-1]] == [32, 16, 16, 8, 8, 4, 4, 2]
    assert len(r.couplings) == 13 and r.activations[-1].name == "identity"
    f = hopfield_resnet13("fmnist")
    assert [s[1] for s in f.state_shapes[:-1]] == [28, 14, 14, 7, 7, 4, 4, 2]
    assert f.state_shapes[-1] == (10,) and f.input_shape == (1, 28, 28)
    assert hopfield_resnet13("cifar100").state_shapes[-1] == (100,)
    # Laborieux et al. 2021: 128-256-512-512, hard sigmoid
    lab = build_model("conv", dataset="cifar10")
    assert lab.channels == (128, 256, 512, 512) and lab.activations[0].name == "hard_sigmoid"


def test_shape_and_configuration_errors():
    with pytest.raises(ValueError, match="kernel 5 .* does not fit the 3x3 input"):
        ConvHopfield((1, 3, 3), (2,), 2, kernel=5, padding=0)
    with pytest.raises(ValueError, match="pooling does not fit"):
        ConvHopfield((1, 4, 4), (2, 2), 2, pool_size=3)
    with pytest.raises(ValueError, match="unknown pooling 'min'"):
        ConvHopfield((1, 4, 4), (2,), 2, pool="min")
    with pytest.raises(ValueError, match="kernel: 3 values given for 2 layers"):
        ConvHopfield((1, 8, 8), (2, 2), 2, kernel=(3, 3, 3))
    with pytest.raises(ValueError, match="channels must be"):
        ConvHopfield((1, 8, 8), (), 2)
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\)"):
        ConvHopfield((8, 8), (2,), 2)
    with pytest.raises(ValueError, match="too many blocks"):
        HopfieldResNet((1, 4, 4), (2, 2, 2, 2), 3)
    with pytest.raises(ValueError, match="Hopfield-ResNet13 has 4 blocks"):
        hopfield_resnet13("cifar10", channels=(8, 8))
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        vgg5("svhn")
    e = ConvHopfield((2, 6, 6), (3,), 2, dtype=F64)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 2, 6, 6\)"):
        VectorField(e).bind(torch.zeros(3, 1, 6, 6, dtype=F64))
    with pytest.raises(ValueError, match="state 0 has shape"):
        relax(VectorField(e).bind(torch.zeros(3, 2, 6, 6, dtype=F64)),
              (torch.zeros(3, 3, 6, 6, dtype=F64), torch.zeros(3, 2, dtype=F64)))


def test_registry():
    assert {"dense", "conv", "hopfield-resnet", "dendritic", "vgg5",
            "hopfield-resnet13"} <= set(MODELS)
    with pytest.raises(ValueError, match="unknown model 'transformer'; known: dense"):
        build_model("transformer")
    with pytest.raises(ValueError, match="model 'conv' has no option.*'chanels'"):
        build_model("conv", chanels=(2,), input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="give dataset="):
        build_model("conv", channels=(2,))
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        build_model("dense", sizes=(3, 2), dtype="float8")
    with pytest.raises(ValueError, match="unknown model 'vgg5'"):
        small_instance("vgg5")
    e = build_model("hopfield_resnet", channels=[4, 4], input_shape=[1, 8, 8], n_out=3,
                    dtype="float64", seed=2)
    assert isinstance(e, HopfieldResNet) and e.biases[0].dtype == F64
    assert "channels" in model_options("conv") and "sizes" in model_options("dense")
    a, _ = small_instance("conv", 5)
    b, _ = small_instance("conv", 5)
    c, _ = small_instance("conv", 6)
    params = [list(m.parameters()) for m in (a, b, c)]
    assert max_diff(params[0], params[1]) == 0 and max_diff(params[0], params[2]) > 0
    for name in ("dense", "conv", "hopfield-resnet", "dendritic"):
        energy, shape = small_instance(name, 0)
        x, _ = _inputs(shape, 2, 0)
        assert energy.energy(x, energy.init_states(2, dtype=F64)).shape == (2,)


@pytest.mark.parametrize("form", ["primitive", "classical"])
def test_nudge_guard_sees_a_clip_the_nudge_crosses(form):
    """conftest.nudge_keeps_output_clip compares the output's σ argument u_L − β∂ℓ/∂s_L at the
    nudged states with u_L at the free ones: it holds for β = 0 and fails once β∂ℓ/∂s_L moves
    an in-box argument out of the box (the same states, so only the nudge can change it)."""
    from types import SimpleNamespace

    from conftest import problem

    field, x, y = problem(activation="hard_sigmoid", form=form, seed=1)
    free = relax(field.bind(x), method="fixed_point", tol=1e-12, max_steps=5000)
    u = field.energy.phi_grad(x, field.energy._activities(tuple(free.states)))[-1]
    act = field.energy.activations[-1]
    assert bool(((u > act.low) & (u < act.high)).any())  # some output unit inside the box

    def est(beta):
        return SimpleNamespace(free=free, nudged=[free, free], betas=[beta, -beta])

    assert nudge_keeps_output_clip(field, x, y, est(0.0))
    assert not nudge_keeps_output_clip(field, x, y, est(1e3))
