"""One map step convention (ctep.solve.map_step): the relaxation's ``fixed_point``, the BPTT
baseline, the BPTT reference and the GDU check take the same steps h_i = min(1, damping·dt/τ_i)
(float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import problem

from ctep import RelaxConfig, relax
from ctep.reference import REFERENCES, bptt_gradient, compare, gdu_check
from ctep.solve.map_step import map_step, map_step_sizes, per_neuron_steps
from ctep.train.baselines import unrolled

DAMPING, DT, K = 0.7, 1.0, 9


def _problem():
    """A tanh net with log-normal τ (spread 1) on which damping·dt/τ_i exceeds 1 for some
    neurons (clipped to the step 1) and not for others."""
    field, x, y = problem(activation="tanh", tau="lognormal", tau_spread=1.0, seed=1)
    ratio = torch.cat([DAMPING * DT / t.reshape(-1) for t in field.tau()])
    assert bool((ratio > 1.2).any()) and bool((ratio < 0.8).any())
    return field, x, y


def _start(field, x):
    """A state inside the box, far from the equilibrium (so every step moves it)."""
    g = torch.Generator().manual_seed(5)
    return tuple(torch.rand(s.shape, generator=g, dtype=torch.float64) * 1.6 - 0.8
                 for s in field.energy.init_states(x.shape[0], dtype=torch.float64))


def _relaxed_loss(field, x, y, start) -> float:
    """Batch-mean ℓ after K steps of ``relax(method="fixed_point", dt, damping)`` from start."""
    eq = relax(field.bind(x), start, method="fixed_point", dt=DT, damping=DAMPING,
               max_steps=K, check_every=0, tol=0.0)
    assert bool((eq.steps == K).all())
    return float(field.loss(eq.states, y).mean())


def _directional_fd(field, x, y, start, params, v, eps=1e-6) -> float:
    """Central difference along v of the loss of the relaxation's K steps in ``params``."""
    out = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, vp in zip(params, v, strict=True):
                p.add_(sign * eps * vp)
        out.append(_relaxed_loss(field, x, y, start))
        with torch.no_grad():
            for p, vp in zip(params, v, strict=True):
                p.sub_(sign * eps * vp)
    return (out[0] - out[1]) / (2 * eps)


def _directions(params, n=3):
    g = torch.Generator().manual_seed(11)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
            for _ in range(n)]


def _dot(grads, v) -> float:
    return float(sum((g * vp).sum() for g, vp in zip(grads, v, strict=True)))


def test_bptt_baseline_states_equal_the_relaxation_bit_for_bit():
    field, x, _ = _problem()
    with torch.no_grad():
        graph = unrolled(field, x, K, damping=DAMPING, dt=DT)
    loop = relax(field.bind(x), method="fixed_point", dt=DT, damping=DAMPING, tol=0.0,
                 max_steps=K, check_every=0)
    for a, b in zip(graph, loop.states, strict=True):
        assert torch.equal(a, b)


def test_bptt_reference_differentiates_the_relaxations_steps():
    """bptt_gradient(dt, damping) is the derivative of ℓ after K steps of
    relax(fixed_point, dt, damping): central differences of the relaxed loss agree along random
    directions (with the old unclipped, undamped h = dt/τ they differ at O(1))."""
    field, x, y = _problem()
    start = _start(field, x)
    params = tuple(field.learnable_parameters())
    grads = bptt_gradient(field, x, y, start, steps=K, damping=DAMPING, dt=DT)
    for v in _directions(params):
        fd = _directional_fd(field, x, y, start, params, v)
        assert abs(fd) > 1e-3
        assert _dot(grads, v) == pytest.approx(fd, rel=1e-7)


def test_gdu_free_trajectory_takes_the_relaxations_steps():
    """Summed over the K steps, the GDU check's BPTT parameter gradients (through its free
    trajectory) are the derivative of ℓ after K steps of relax(fixed_point, dt, damping)."""
    field, x, y = _problem()
    start = _start(field, x)
    r = gdu_check(field, x, y, start, beta=1e-5, steps=K, damping=DAMPING, dt=DT)
    summed = [-b.sum(0) for b, kind in zip(r.bptt, r.kinds, strict=True)
              if kind == "parameters"]
    params = tuple(field.energy.parameters())
    assert len(summed) == len(params)
    for v in _directions(params):
        fd = _directional_fd(field, x, y, start, params, v)
        assert abs(fd) > 1e-3
        assert _dot(summed, v) == pytest.approx(fd, rel=1e-7)
    assert r.step == f"min(1, damping*dt/tau) (dt={DT:g}, damping={DAMPING:g})"


def test_gdu_identity_holds_with_clipped_damped_steps():
    """The GDU identities need only a diagonal step matrix: with some steps clipped at 1 and the
    others damped, EP and BPTT still agree on every resolved step (measured ≤ 2.5e-4; the old
    unclipped h = dt/τ, up to 5 here, gave 0.54–1.28)."""
    field, x, y = _problem()
    free = relax(field.bind(x), method="fixed_point", dt=DT, damping=DAMPING, tol=1e-13,
                 max_steps=100_000)
    assert bool(free.converged.all())
    r = gdu_check(field, x, y, free.states, beta=1e-5, steps=20, damping=DAMPING, dt=DT)
    worst = r.max_rel_rmse()
    assert max(worst.values()) < 1e-3, worst


def test_bptt_reference_uses_the_relaxations_dt_for_map_methods():
    field, x, y = _problem()
    free = relax(field.bind(x), method="fixed_point", dt=DT, damping=DAMPING, tol=1e-13,
                 max_steps=100_000)
    ref = REFERENCES["bptt"]
    by_map = ref(field, x, y, free, RelaxConfig(method="fixed_point", dt=DT, damping=DAMPING))
    direct = bptt_gradient(field, x, y, free.states, steps=500, damping=DAMPING, dt=DT)
    assert all(torch.equal(a, b) for a, b in zip(by_map, direct, strict=True))
    # rk23's dt is its first step, not a map step: the τ-free map with the damping
    by_rk = ref(field, x, y, free, RelaxConfig(method="rk23", dt=DT, damping=DAMPING))
    tau_free = bptt_gradient(field, x, y, free.states, steps=500, damping=DAMPING)
    assert all(torch.equal(a, b) for a, b in zip(by_rk, tau_free, strict=True))
    assert compare(by_map, tau_free)["rel_error"] < 1e-8  # both converged: the same gradient


def test_step_sizes_tau_free_and_per_neuron():
    field, _, _ = _problem()
    h, time = map_step_sizes(field.tau, damping=0.4)
    assert h == (0.4, 0.4, 0.4) and time == 1.0
    h, time = map_step_sizes(field.tau, damping=DAMPING, dt=DT)
    assert time == DAMPING * DT
    for hh, t in zip(h, field.tau(), strict=True):
        assert torch.equal(hh, torch.clamp(DT / t * DAMPING, max=1.0))
        assert torch.equal(hh, per_neuron_steps((t,), DT, DAMPING)[0])
    assert any(bool((hh == 1).any()) for hh in h) and any(bool((hh < 1).any()) for hh in h)


def test_unit_step_is_the_plain_map():
    """h = 1 (the float, which skips the product, or a tensor of ones) gives s + drive(s) bit
    for bit, and in the primitive form that is the plain map s ← σ(∂Φ/∂s) to rounding."""
    field, x, _ = _problem()
    energy = field.energy
    s = _start(field, x)
    d = field.bind(x).drive(s)
    unit = map_step(energy, s, d, (1.0,) * len(s))
    ones = map_step(energy, s, d, tuple(torch.ones(t.shape[1:], dtype=t.dtype) for t in s))
    with torch.no_grad():
        u = energy.phi_grad(x, energy._activities(s))
    plain = tuple(a(ui) for a, ui in zip(energy.activations, u, strict=True))
    for a, b, c, si, di in zip(unit, ones, plain, s, d, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, si + di)
        assert torch.allclose(a, c, rtol=0, atol=4e-16)
    half = map_step(energy, s, d, (0.5,) * len(s))
    for a, si, di in zip(half, s, d, strict=True):
        assert torch.equal(a, si + 0.5 * di)


@pytest.mark.parametrize("damping", [0.0, -0.5, 1.5, float("nan")])
def test_bad_damping_is_refused_everywhere(damping):
    field, x, y = _problem()
    start = _start(field, x)
    with pytest.raises(ValueError, match=r"fixed_point damping must lie in \(0, 1\]"):
        map_step_sizes(field.tau, damping)
    with pytest.raises(ValueError, match="fixed_point damping"):
        relax(field.bind(x), method="fixed_point", damping=damping)
    with pytest.raises(ValueError, match="bptt damping"):
        bptt_gradient(field, x, y, start, steps=2, damping=damping)
    with pytest.raises(ValueError, match="bptt damping"):
        unrolled(field, x, 2, damping=damping, dt=DT)
    with pytest.raises(ValueError, match="gdu damping"):
        gdu_check(field, x, y, start, steps=2, damping=damping)


@pytest.mark.parametrize("dt", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_dt_is_refused_everywhere(dt):
    field, x, y = _problem()
    start = _start(field, x)
    with pytest.raises(ValueError, match="anderson dt must be positive and finite"):
        map_step_sizes(field.tau, 1.0, dt, "anderson")
    with pytest.raises(ValueError, match="bptt dt must be positive and finite"):
        bptt_gradient(field, x, y, start, steps=2, dt=dt)
    with pytest.raises(ValueError, match="bptt dt must be positive and finite"):
        unrolled(field, x, 2, dt=dt)
    with pytest.raises(ValueError, match="gdu dt must be positive and finite"):
        gdu_check(field, x, y, start, steps=2, dt=dt)


@pytest.mark.parametrize("activation", ["hard_sigmoid", "tanh"])
def test_the_plain_map_is_the_unit_step_and_its_drive_is_exact(activation):
    """Primitive form, unit steps: relax iterates s ← σ(∂Φ/∂s − n) (BoundField.plain_map);
    the drive it reads at the checks is plain_map(s) − s, bit for bit the energy's drive;
    the iterates agree with s + drive(s) projected to an ulp per step, and the BPTT unroll
    takes the same steps bit for bit."""
    field, x, y = problem(activation=activation, tau="lognormal", tau_spread=0.5)
    bound = field.bind(x, y, 0.3)
    assert bound.has_plain_map and field.bind(x).nudged(y, 0.3).has_plain_map
    s = field.energy.clamp(_start(field, x))  # relax projects its start onto the box
    mapped = bound.plain_map(s)
    for m, a, d in zip(mapped, s, bound.drive(s), strict=True):
        assert torch.equal(m - a, d)
    plain = relax(bound, s, method="fixed_point", max_steps=K, check_every=0, tol=0.0).states
    by_drive = s
    with torch.no_grad():
        for _ in range(K):
            by_drive = map_step(field.energy, by_drive, bound.drive(by_drive), (1.0,) * len(s))
    # s + (σ(u) − s) rounds to σ(u) within an ulp of |s| ≤ 1 per step, and the map does not
    # amplify it here (measured: 0 for hard sigmoid, 0.25 ε for tanh after K = 9 steps)
    eps = torch.finfo(torch.float64).eps
    for a, b in zip(plain, by_drive, strict=True):
        assert float((a - b).abs().max()) <= K * eps
    free = relax(field.bind(x), None, method="fixed_point", max_steps=K, check_every=0,
                 tol=0.0).states
    for a, b in zip(free, unrolled(field, x, K), strict=True):
        assert torch.equal(a, b)


def test_classical_form_and_autograd_mode_have_no_plain_map():
    field, x, _ = problem(activation="tanh", form="classical")
    assert not field.bind(x).has_plain_map
    with pytest.raises(ValueError, match="no closed-form plain map"):
        field.bind(x).plain_map(field.energy.init_states(x.shape[0], dtype=torch.float64))


def test_all_unit_per_neuron_steps_become_the_float_one():
    field, _, _ = problem(activation="tanh", tau="constant")
    tau = float(next(iter(field.tau())).reshape(-1)[0])
    h, t = map_step_sizes(field.tau, 1.0, tau)
    assert h == (1.0,) * len(h) and t == tau
    h, _ = map_step_sizes(field.tau, 0.5, tau)
    assert all(torch.is_tensor(hh) for hh in h)
