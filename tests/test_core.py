"""Energies, activations, costs, time constants, vector field and relaxation (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import diverging_problem, max_diff, problem

import ctep
from ctep import RelaxConfig, Status, TimeConstants, VectorField, relax
from ctep.activations import get_activation
from ctep.losses import CrossEntropy, SquaredError
from ctep.solve import available_methods

ACTIVATIONS = ["tanh", "sigmoid", "hard_sigmoid", "relu6", "identity"]


# --- activations and costs -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "identity"])
def test_activation_derivative_and_primitive_match_autograd(name):
    a = get_activation(name)
    u = torch.linspace(-3, 3, 41, dtype=torch.float64, requires_grad=True)
    (du,) = torch.autograd.grad(a(u).sum(), u)
    assert torch.allclose(a.derivative(u.detach()), du, atol=1e-14)
    s = a(u.detach()).clone().requires_grad_(True)  # G' = σ⁻¹ on the range
    (dg,) = torch.autograd.grad(a.primitive(s).sum(), s)
    assert torch.allclose(dg, u.detach(), atol=1e-9)


def test_clip_activations_and_unknown_names():
    assert get_activation("relu6").high == 6.0
    assert get_activation("relu_alpha", alpha=2.5).high == 2.5
    with pytest.raises(ValueError, match="alpha"):
        get_activation("relu_alpha")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        get_activation("swish")


@pytest.mark.parametrize("cost", [SquaredError(), CrossEntropy(), CrossEntropy((6, 4), seed=1,
                                                                             dtype=torch.float64)])
def test_cost_closed_form_gradient_matches_autograd(cost):
    g = torch.Generator().manual_seed(0)
    out = torch.rand(5, 6, generator=g, dtype=torch.float64)
    width = 4 if getattr(cost, "readout", None) is not None else 6
    y = torch.randint(0, width, (5,), generator=g)
    o = out.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(cost(o, y).sum(), o)
    assert torch.allclose(cost.grad_output(out, y), d, atol=1e-14)


def test_cost_rejects_bad_targets():
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\)"):
        SquaredError()(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        SquaredError()(torch.zeros(2, 3), torch.zeros(2, 4))


# --- energies -------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["primitive", "classical"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_closed_form_drive_equals_autograd(form, activation):
    field, x, y = problem(activation=activation, form=form, sizes=(5, 7, 6, 3))
    g = torch.Generator().manual_seed(5)
    lo, hi = (0.05, 0.95) if activation in ("sigmoid", "hard_sigmoid") else (-0.9, 0.9)
    s = tuple(lo + (hi - lo) * torch.rand(4, *sh, generator=g, dtype=torch.float64)
              for sh in field.energy.state_shapes)
    for beta in (0.0, 0.3):
        closed = field.bind(x, y, beta).drive(s)
        auto = VectorField(field.energy, field.cost, field.tau, gradient="autograd").bind(
            x, y, beta).drive(s)
        assert max_diff(closed, auto) < 1e-13


@pytest.mark.parametrize("form", ["primitive", "classical"])
def test_grad_states_is_the_gradient_of_the_energy(form):
    field, x, _ = problem(activation="tanh", form=form)
    e = field.energy
    s = tuple(0.5 * torch.rand(4, *sh, dtype=torch.float64, generator=torch.Generator()
                               .manual_seed(2)) for sh in e.state_shapes)
    ss = tuple(t.clone().requires_grad_(True) for t in s)
    auto = torch.autograd.grad(e.energy(x, ss).sum(), ss)
    assert max_diff(e.grad_states(x, s), auto) < 1e-13


def test_primitive_form_euler_step_one_is_the_discrete_map():
    field, x, _ = problem(activation="hard_sigmoid")
    e = field.energy
    s = e.init_states(4, dtype=torch.float64)
    eq = relax(field.bind(x), s, method="fixed_point", max_steps=1, check_every=0)
    expected = tuple(a(u) for a, u in zip(e.activations, e.phi_grad(x, s), strict=True))
    assert max_diff(eq.states, expected) < 1e-15


def test_energy_shapes_and_input_errors():
    e = ctep.DenseHopfield([4, 3, 2], "tanh", dtype=torch.float64)
    assert e.state_shapes == ((3,), (2,))
    assert e.energy(torch.zeros(5, 4, dtype=torch.float64),
                    e.init_states(5, dtype=torch.float64)).shape == (5,)
    field = VectorField(e)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 4\)"):
        field.bind(torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        field.bind(torch.full((5, 4), math.nan, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs targets"):
        field.bind(torch.zeros(5, 4, dtype=torch.float64), None, 0.1)
    with pytest.raises(ValueError, match="batch size"):
        field.bind(torch.zeros(5, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="sizes"):
        ctep.DenseHopfield([4], "tanh")
    with pytest.raises(ValueError, match="unknown energy form"):
        ctep.DenseHopfield([4, 2], "tanh", form="lagrangian")
    with pytest.raises(ValueError, match="state 0 has shape"):
        relax(field.bind(torch.zeros(5, 4, dtype=torch.float64)),
              (torch.zeros(5, 2, dtype=torch.float64), torch.zeros(5, 2, dtype=torch.float64)))


# --- time constants -------------------------------------------------------------------------
@pytest.mark.parametrize("dist,spread", [("constant", 0.0), ("uniform", 0.3), ("lognormal", 0.5),
                                         ("gamma", 0.5), ("gamma", 2.0)])
def test_tau_distributions_mean_and_spread(dist, spread):
    tau = TimeConstants.sample(((200_000,),), dist, mean=2.0, spread=spread, seed=3,
                               dtype=torch.float64)()[0]
    assert (tau > 0).all() and torch.isfinite(tau).all()
    assert float(tau.mean()) == pytest.approx(2.0, rel=0.02)
    assert float(tau.std() / tau.mean()) == pytest.approx(spread, abs=0.02 + 0.02 * spread)


def test_tau_seeded_shaped_and_validated():
    shapes = ((3,), (2, 4))
    a = TimeConstants.sample(shapes, "lognormal", 1.0, 1.0, seed=7)()
    b = TimeConstants.sample(shapes, "lognormal", 1.0, 1.0, seed=7)()
    c = TimeConstants.sample(shapes, "lognormal", 1.0, 1.0, seed=8)()
    assert [t.shape for t in a] == [torch.Size(s) for s in shapes]
    assert max_diff(a, b) == 0 and max_diff(a, c) > 0
    learn = TimeConstants.sample(shapes, "gamma", 1.0, 0.5, seed=7, learnable=True)
    assert len(list(learn.parameters())) == 2 and all((t > 0).all() for t in learn())
    with pytest.raises(ValueError, match="≤ 0"):
        TimeConstants([torch.tensor([1.0, -1.0])])
    with pytest.raises(ValueError, match="NaN"):
        TimeConstants([torch.tensor([1.0, math.nan])])
    with pytest.raises(ValueError, match="unknown τ distribution"):
        TimeConstants.sample(shapes, "cauchy")
    with pytest.raises(ValueError, match="1/√3"):
        TimeConstants.sample(shapes, "uniform", 1.0, 0.7)
    e = ctep.DenseHopfield([4, 3, 2], "tanh")
    with pytest.raises(ValueError, match="shape"):
        VectorField(e, tau=TimeConstants.sample(((3,), (3,))))


# --- relaxation -----------------------------------------------------------------------------
# (method, residual tolerance): low-order adaptive methods get a looser one (rtol follows tol)
FAST_METHODS = [("fixed_point", 1e-9), ("exp_euler", 1e-9), ("dopri5", 1e-9), ("bosh3", 1e-9),
                ("adaptive_heun", 1e-6), ("euler", 1e-9), ("rk4", 1e-9), ("midpoint", 1e-9),
                ("heun3", 1e-9), ("fixed_adams", 1e-9)]
# Adams–Bashforth–Moulton's stability interval is small: at dt = 0.5·τmin (the default) it
# diverges here (and says so: status DIVERGED); at 0.1·τmin it converges.
STEP = {"fixed_adams": 0.1}


def test_all_methods_reach_the_same_equilibrium():
    field, x, _ = problem(activation="tanh", tau="lognormal", tau_spread=0.5)
    bound = field.bind(x)
    ref = relax(bound, method="fixed_point", tol=1e-12, max_steps=10_000)
    assert bool(ref.converged.all())
    tau_min = min(float(t.min()) for t in field.tau())
    for method, tol in FAST_METHODS:
        dt = STEP[method] * tau_min if method in STEP else None
        eq = relax(bound, method=method, tol=tol, max_steps=20_000, dt=dt)
        assert bool(eq.converged.all()), (method, eq.status, eq.message)
        assert float(eq.residual.max()) <= tol
        assert max_diff(eq.states, ref.states) < 100 * tol, method
    assert {m for m, _ in FAST_METHODS} <= set(available_methods())


def test_equilibrium_does_not_depend_on_tau_but_path_does():
    field, x, _ = problem(activation="sigmoid", tau="constant", tau_spread=0.0)
    hetero = VectorField(field.energy, field.cost,
                         TimeConstants.sample(field.energy.state_shapes, "lognormal", 1.0, 1.0,
                                              seed=4, dtype=torch.float64))
    a = relax(field.bind(x), method="dopri5", tol=1e-10, polish=2)
    b = relax(hetero.bind(x), method="dopri5", tol=1e-10, polish=2)
    assert max_diff(a.states, b.states) < 1e-12
    assert not torch.equal(a.nfe, b.nfe)
    ra = relax(field.bind(x), method="exp_euler", tol=1e-6, record=True).trajectory
    rb = relax(hetero.bind(x), method="exp_euler", tol=1e-6, record=True, dt=1.0).trajectory
    assert max_diff((ra.states[0][1],), (rb.states[0][1],)) > 1e-3  # the paths differ


# ctep's loops treat samples independently (agreement to rounding); torchdiffeq shares one step
# size among the samples still being integrated, so there agreement is to the tolerance.
@pytest.mark.parametrize("method,bound", [("fixed_point", 1e-14), ("dopri5", 1e-9)])
def test_sample_equilibrium_independent_of_batch(method, bound):
    field, x, _ = problem(activation="tanh", batch=6)
    cfg = RelaxConfig(method=method, tol=1e-10)
    whole = relax(field.bind(x), config=cfg)
    for i in (0, 3):
        alone = relax(field.bind(x[i:i + 1]), config=cfg)
        assert max_diff(tuple(s[i:i + 1] for s in whole.states), alone.states) < bound
    # a stiff neighbour does not change a sample's result
    x2 = x.clone()
    x2[1:] *= 50.0
    mixed = relax(field.bind(x2), config=cfg)
    assert max_diff(tuple(s[:1] for s in mixed.states), tuple(s[:1] for s in whole.states)) < bound


def test_statuses_max_steps_and_diverged():
    field, x, _ = problem(activation="tanh")
    eq = relax(field.bind(x), method="fixed_point", tol=1e-14, max_steps=3)
    assert (eq.status == Status.MAX_STEPS).all()
    with pytest.raises(ctep.RelaxationError, match="MAX_STEPS"):
        eq.check(allow_max_steps=False)
    # the time cap of an ODE method: status MAX_STEPS, and the residual of the states returned
    capped = relax(field.bind(x), method="dopri5", tol=1e-12, max_time=0.5)
    assert (capped.status == Status.MAX_STEPS).all() and (capped.t == 0.5).all()
    assert torch.allclose(capped.residual, field.bind(x).residual(capped.states), rtol=0,
                          atol=1e-15)
    f, xx = diverging_problem()
    for method in ("fixed_point", "dopri5", "euler"):
        eq = relax(f.bind(xx), method=method, tol=1e-8, max_steps=2000, max_time=200)
        assert int(eq.status[0]) == Status.DIVERGED, method
        assert int(eq.status[1]) == Status.CONVERGED, method  # x = 0 sits at s = 0
        with pytest.raises(ctep.RelaxationError, match="DIVERGED"):
            eq.check()


def test_relax_config_errors():
    field, x, _ = problem()
    with pytest.raises(ValueError, match="unknown relaxation method 'newton'"):
        relax(field.bind(x), method="newton")
    with pytest.raises(ValueError, match="damping"):
        relax(field.bind(x), method="fixed_point", damping=1.5)
    with pytest.raises(ValueError, match="tol"):
        relax(field.bind(x), tol=math.nan)


def test_trajectory_and_energy_decrease_along_the_flow():
    field, x, _ = problem(activation="tanh", tau="lognormal", tau_spread=0.8)
    eq = relax(field.bind(x), method="exp_euler", tol=1e-8, dt=0.1, check_every=5, record=True)
    traj = eq.trajectory
    k = traj.times.numel()
    assert traj.states[0].shape[:2] == (k, 4) and traj.residual.shape == (k, 4)
    energies = torch.stack([field.energy.energy(x, tuple(s[i] for s in traj.states))
                            for i in range(k)])
    assert (energies[1:] - energies[:-1] <= 1e-12).all()  # Lyapunov for any τ


def test_recorded_times_are_distinct_whether_the_loop_stops_at_a_check_or_its_budget():
    field, x, _ = problem(activation="tanh")
    for cfg in (dict(tol=1e-8, check_every=5), dict(tol=0.0, max_steps=12, check_every=5)):
        traj = relax(field.bind(x), method="fixed_point", record=True, **cfg).trajectory
        assert bool((traj.times[1:] > traj.times[:-1]).all()), traj.times
    assert float(traj.times[-1]) == 12.0  # the budget's end is recorded once


def test_newton_polish_reaches_machine_precision():
    field, x, _ = problem(activation="sigmoid", tau="gamma", tau_spread=0.5)
    eq = relax(field.bind(x), method="exp_euler", tol=1e-5, polish=3)
    assert float(eq.residual.max()) < 1e-13 and bool(eq.converged.all())
