"""Per-neuron steps h_i = min(1, damping·dt/τ_i) of the discrete map (THEORY §2.1), and the
heterogeneous-τ keys of the training config."""

from __future__ import annotations

import pytest
import torch

from ctep import DenseHopfield, Status, TimeConstants, VectorField, relax
from ctep._linalg import checked_eigvalsh
from ctep.solve.map_step import per_neuron_steps
from ctep.train import load_config
from ctep.train.build import build_tau, relax_configs


def _net(activation: str = "hard_sigmoid", dtype=torch.float64, sizes=(8, 12, 4),
         init_scale: float = 1.0) -> DenseHopfield:
    return DenseHopfield(sizes, activation=activation, seed=3, dtype=dtype,
                         init_scale=init_scale)


def _inputs(n: int = 5, width: int = 8, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.rand(n, width, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g)


def test_per_neuron_steps_formula_and_clip():
    taus = (torch.tensor([0.25, 0.5, 1.0, 4.0]),)
    (h,) = per_neuron_steps(taus, dt=0.5, damping=0.8)
    assert torch.equal(h, torch.tensor([1.0, 0.8, 0.4, 0.1]))


@pytest.mark.parametrize("tau", [1.0, 0.3, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_homogeneous_tau_with_dt_equal_tau_is_the_plain_map_bit_for_bit(tau, dtype):
    energy = _net(dtype=dtype)
    field = VectorField(energy, "squared_error",
                        TimeConstants.constant(energy.state_shapes, tau, dtype=dtype))
    x, y = _inputs(dtype=dtype)
    for beta in (0.0, 0.5):
        bound = field.bind(x, y, beta) if beta else field.bind(x)
        plain = relax(bound, method="fixed_point", tol=1e-5, max_steps=37, check_every=3)
        stepped = relax(bound, method="fixed_point", tol=1e-5, max_steps=37, check_every=3,
                        dt=tau)
        for a, b in zip(plain.states, stepped.states, strict=True):
            assert torch.equal(a, b)
        assert torch.equal(plain.steps, stepped.steps)
        assert torch.equal(plain.status, stepped.status)
        assert torch.allclose(stepped.t, plain.t.to(torch.float64) * tau)


def test_damping_and_dt_give_the_same_euler_step_and_the_same_time():
    """h_i = damping·dt/τ_i is an Euler step of damping·dt: (dt 1, damping 0.5) and (dt 0.5,
    damping 1) are the same map, and must report the same time."""
    energy = _net(activation="tanh")
    field = VectorField(energy, "squared_error", TimeConstants.sample(
        energy.state_shapes, "lognormal", 2.0, 0.5, seed=4, dtype=torch.float64))
    x, _ = _inputs()
    damped = relax(field.bind(x), method="fixed_point", tol=1e-9, dt=1.0, damping=0.5)
    short = relax(field.bind(x), method="fixed_point", tol=1e-9, dt=0.5)
    assert bool(short.converged.all())
    for a, b in zip(damped.states, short.states, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(damped.t, short.t)
    assert torch.allclose(short.t, short.steps.to(torch.float64) * 0.5)


def test_heterogeneous_steps_reach_the_same_equilibrium():
    energy = _net(activation="tanh")
    x, y = _inputs()
    plain_field = VectorField(energy, "squared_error", TimeConstants.constant(
        energy.state_shapes, 1.0, dtype=torch.float64))
    hetero = VectorField(energy, "squared_error", TimeConstants.sample(
        energy.state_shapes, "lognormal", 1.0, 1.0, seed=2, dtype=torch.float64))
    assert hetero.tau.stats()["ratio"] > 5
    for beta in (0.0, 0.3):
        ref = relax(plain_field.bind(x, y, beta), method="fixed_point", tol=1e-13,
                    max_steps=20_000)
        eq = relax(hetero.bind(x, y, beta), method="fixed_point", tol=1e-13, max_steps=20_000,
                   dt=0.5)
        assert bool(ref.converged.all()) and bool(eq.converged.all())
        diff = max(float((a - b).abs().max()) for a, b in zip(ref.states, eq.states,
                                                                strict=True))
        assert diff < 1e-11
        # the path differs: the per-neuron map takes another number of steps
        assert not torch.equal(ref.steps, eq.steps)


def _hessian(bound, states) -> torch.Tensor:
    """H = −∂drive/∂s of one sample (flattened over layers), by autograd."""
    sizes = [s.shape[1] for s in states]

    def drive(flat):
        parts = torch.split(flat.unsqueeze(0), sizes, dim=1)
        return torch.cat(bound.drive(tuple(parts)), dim=1).squeeze(0)

    flat = torch.cat([s[0] for s in states])
    return -torch.autograd.functional.jacobian(drive, flat)


def test_stability_condition_of_the_per_neuron_map():
    """THEORY §2.1: for H ≻ 0, s ← s − D_h ∇F converges iff λ_max(D_h^½ H D_h^½) < 2.

    A linear net (identity activation) nudged with squared error at β = 2 has the constant
    Hessian H = I − W + β·P_out: H ≻ 0, with eigenvalues near 1 + β = 3 on the output layer,
    so the plain map (h ≡ 1) diverges. Slower output neurons (τ_out > dt) shrink their steps;
    each τ_out's outcome (converged or diverged) must be the one the condition predicts.
    """
    energy = _net(activation="identity", sizes=(6, 10, 4), init_scale=0.3)
    x, y = _inputs(n=1, width=6)
    shapes = energy.state_shapes
    beta, dt = 2.0, 1.0
    outcomes = []
    for tau_out in (1.0, 1.2, 1.4, 1.6, 1.8, 2.0):
        taus = [torch.full(shapes[0], 1.0, dtype=torch.float64),
                torch.full(shapes[1], tau_out, dtype=torch.float64)]
        field = VectorField(energy, "squared_error", TimeConstants(taus))
        bound = field.bind(x, y, beta)
        hess = _hessian(bound, energy.init_states(1, dtype=torch.float64))
        assert torch.allclose(hess, hess.T, atol=1e-12)
        assert float(checked_eigvalsh(hess).min()) > 0.2  # a strict minimum
        h = torch.cat([t.reshape(-1) for t in per_neuron_steps(tuple(taus), dt)])
        lam = float(checked_eigvalsh(h.sqrt()[:, None] * hess * h.sqrt()[None, :]).max())
        assert abs(lam - 2) > 0.05, f"τ_out {tau_out} too close to the boundary (λ {lam})"
        eq = relax(bound, method="fixed_point", dt=dt, tol=1e-10, max_steps=3000,
                   diverge_at=1e6)
        status = Status(int(eq.status[0]))
        outcomes.append((tau_out, lam, status))
        assert status == (Status.CONVERGED if lam < 2 else Status.DIVERGED), outcomes
    assert {s for *_, s in outcomes} == {Status.CONVERGED, Status.DIVERGED}


def test_fixed_point_rejects_bad_dt():
    energy = _net()
    field = VectorField(energy, "squared_error", TimeConstants.constant(
        energy.state_shapes, 1.0, dtype=torch.float64))
    x, _ = _inputs()
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="fixed_point dt must be positive"):
            relax(field.bind(x), method="fixed_point", dt=bad)


def test_training_config_tau_normalize_and_relax_dt():
    cfg = load_config(None, ["tau.distribution=\"lognormal\"", "tau.spread=1.0",
                             "tau.normalize=\"rate\"", "tau.mean=0.5", "relax.dt=0.25"])
    tau = build_tau(cfg, ((300,), (10,)), torch.float64)
    for t in tau():
        assert float((1.0 / t).mean()) == pytest.approx(2.0, rel=1e-12)
        assert float(t.std() / t.mean()) > 0.5
    free, nudged, evaluation = relax_configs(cfg)
    assert free.dt == nudged.dt == evaluation.dt == 0.25
    # "tau" keeps the draw as it comes (E[τ] = mean); a homogeneous draw is exact either way
    plain = build_tau(load_config(None, ["tau.distribution=\"lognormal\"", "tau.spread=1.0",
                                         "tau.mean=0.5"]), ((300,), (10,)), torch.float64)
    assert not torch.allclose(plain()[0], tau()[0])
    const = build_tau(load_config(None, ["tau.mean=0.3", "tau.normalize=\"rate\""]),
                      ((5,),), torch.float64)
    assert torch.equal(const()[0], torch.full((5,), 0.3, dtype=torch.float64))
    with pytest.raises(ValueError, match="tau.normalize must be one of"):
        load_config(None, ["tau.normalize=\"median\""])
    with pytest.raises(ValueError, match="relax.dt must be ≥ 0"):
        load_config(None, ["relax.dt=-0.1"])


def test_bptt_training_unrolls_the_per_neuron_map():
    """``[relax] dt`` reaches the trainer's BPTT baseline: with τ ≡ dt the run equals the τ-free
    map's bit for bit; heterogeneous τ changes the loss of the first epoch, which BPTT measures
    on its own unrolled states."""
    from ctep.train import train

    common = ['data.name="synthetic"', "data.synthetic_features=6", "data.synthetic_classes=3",
              "data.synthetic_train=24", "data.synthetic_test=12", "data.batch_size=8",
              "model.hidden=[5]", 'model.activation="sigmoid"', 'model.dtype="float64"',
              'train.mode="bptt"', "train.bptt_steps=6", "relax.free_steps=6",
              "train.epochs=1", "train.progress=false", "optimizer.lr=0.1"]

    def loss(*extra: str) -> float:
        return train(load_config(None, [*common, *extra]))[-1]["loss"]

    free = loss()
    assert loss("tau.mean=0.5", "relax.dt=0.5") == free
    assert loss('tau.distribution="lognormal"', "tau.spread=1.0", 'tau.normalize="rate"',
                "relax.dt=1.0") != free
