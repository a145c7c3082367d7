"""CUDA checks: relaxation, estimators and training on a GPU against the same work on the CPU,
and no device synchronisation per step. Skipped without CUDA (the development machine has
none); run them on a GPU machine with ``python -m pytest -q tests/test_gpu.py``."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from conftest import max_diff, problem

from ctep import VectorField, relax
from ctep.estimators import get_estimator
from ctep.models import small_instance
from ctep.solve import RelaxConfig
from ctep.train import Trainer, load_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")
METHODS = ("fixed_point", "anderson", "exp_euler", "rk23", "etd2", "dopri5")
#: etd2 at its default rtol = tol = 1e-10 runs out of its 20 000 steps on this problem (t ≈ 4
#: of the ~900 the slowest sample needs), so both devices would compare unconverged states
SETTINGS = {"etd2": dict(rtol=1e-4, atol=1e-12, max_time=math.inf)}


def _on(field, x, y, device):
    return copy.deepcopy(field).to(device), x.to(device), y.to(device)


@pytest.mark.parametrize("method", METHODS)
def test_relaxation_on_the_gpu_matches_the_cpu(method):
    """float64: the same equilibria, statuses and (for the loops) step counts."""
    field, x, y = problem(tau="lognormal", tau_spread=0.8, batch=6)
    cfg = RelaxConfig(method=method, tol=1e-10, max_steps=20_000, check_every=2,
                      **SETTINGS.get(method, {}))
    cpu = relax(field.bind(x, y, 0.3), config=cfg)
    assert bool(cpu.converged.all()), cpu.status  # equilibria, not states on the way
    gf, gx, gy = _on(field, x, y, CUDA)
    gpu = relax(gf.bind(gx, gy, 0.3), config=cfg)
    assert gpu.states[0].device.type == "cuda" and gpu.status.device.type == "cuda"
    assert torch.equal(gpu.status.cpu(), cpu.status)
    assert max_diff(tuple(s.cpu() for s in gpu.states), cpu.states) < 1e-9
    if method in ("fixed_point", "anderson", "exp_euler"):
        assert torch.equal(gpu.steps.cpu(), cpu.steps)


@pytest.mark.parametrize("name", ["conv", "hopfield-resnet", "dendritic"])
def test_registry_models_relax_on_the_gpu(name):
    energy, shape = small_instance(name)
    field = VectorField(energy)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, *shape, generator=gen, dtype=torch.float64)
    cfg = RelaxConfig(method="fixed_point", tol=1e-10, max_steps=5000)
    cpu = relax(field.bind(x), config=cfg)
    gpu = relax(copy.deepcopy(field).to(CUDA).bind(x.to(CUDA)), config=cfg)
    assert bool(gpu.converged.all())
    assert max_diff(tuple(s.cpu() for s in gpu.states), cpu.states) < 1e-9


@pytest.mark.parametrize("estimator", ["one-sided", "centered", "holomorphic"])
def test_estimators_on_the_gpu_match_the_cpu(estimator):
    field, x, y = problem(tau="gamma", tau_spread=0.5, batch=4)
    cfg = RelaxConfig(method="fixed_point", tol=1e-12, max_steps=20_000)
    est = get_estimator(estimator, 0.05, relax=cfg)
    cpu = est(field, x, y).grads
    gf, gx, gy = _on(field, x, y, CUDA)
    gpu = est(gf, gx, gy).grads
    assert max_diff(tuple(g.cpu() for g in gpu), cpu) < 1e-9


@pytest.mark.parametrize("method", ["fixed_point", "anderson", "rk23", "etd2"])
def test_no_synchronisation_between_checks(method):
    """CUDA's sync debug mode warns at every synchronising call: 60 steps with one check at
    the end warn as often as 6 steps."""
    field, x, y = problem(tau="lognormal", tau_spread=0.5, batch=8)
    gf, gx, gy = _on(field, x, y, CUDA)
    bound = gf.bind(gx, gy, 0.2)
    counts = []
    for steps in (6, 6, 60):  # the first run warms up (lazy initialisation may sync)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                relax(bound, method=method, tol=0.0, max_steps=steps, check_every=0, dt=0.05,
                      max_time=float("inf"))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    # the checks themselves read the residual on the host: zero would mean that the warnings
    # were not caught at all, and the comparison below would pass whatever the steps do
    assert counts[1] > 0, counts
    assert counts[1] == counts[2], counts


def test_trainer_learns_on_the_gpu(tmp_path):
    cfg = load_config(None, [
        'data.name="synthetic"', "data.synthetic_features=20", "data.synthetic_classes=4",
        "data.synthetic_train=192", "data.synthetic_test=96", "data.batch_size=16",
        "model.hidden=[16]", 'model.activation="sigmoid"', 'model.dtype="float32"',
        'model.device="cuda"', "model.init_scale=0.5", "relax.free_steps=15",
        "relax.nudged_steps=6", "estimator.beta=0.5", "optimizer.lr=0.2", "train.epochs=2",
        "train.progress=false"])
    trainer = Trainer(cfg, tmp_path / "run")
    history = trainer.run()
    assert next(trainer.field.parameters()).device.type == "cuda"
    assert history[-1]["test_acc"] >= 0.95, history


def test_diagnostics_on_the_gpu_match_the_cpu():
    """Jacobian spectra, skew-gradient stability reports and Lagrangian Hessian diagnostics
    filled result tensors made on the CPU with rows indexed on the GPU (a device error)."""
    from test_lagrangian import theory_problem
    from test_skew import theory_network

    from ctep.diagnostics import jacobian_spectrum
    from ctep.lagrangian import solve_trajectory

    field, x, y = problem(tau="lognormal", tau_spread=0.5, batch=3)
    eq = relax(field.bind(x), method="fixed_point", tol=1e-12, max_steps=20_000)
    gf, gx, _ = _on(field, x, y, CUDA)
    cpu = jacobian_spectrum(field, x, eq.states)
    gpu = jacobian_spectrum(gf, gx, tuple(s.to(CUDA) for s in eq.states))
    assert gpu.eigenvalues.device.type == "cuda"
    assert torch.allclose(gpu.eigenvalues.cpu(), cpu.eigenvalues, rtol=1e-9, atol=1e-12)

    skew, sx, _ = theory_network()
    seq = relax(skew.bind(sx), method="dopri5", tol=1e-9)
    rep = skew.stability(sx, seq)
    gskew = copy.deepcopy(skew).to(CUDA)
    grep = gskew.stability(sx.to(CUDA), relax(gskew.bind(sx.to(CUDA)), method="dopri5",
                                                   tol=1e-9))
    assert torch.equal(grep.status.cpu(), rep.status)
    assert torch.equal(grep.hessian_negative.cpu(), rep.hessian_negative)
    assert torch.allclose(grep.max_real.cpu(), rep.max_real, rtol=1e-6)

    prob = theory_problem()
    free = solve_trajectory(prob.action, prob.x)
    gpu_free = solve_trajectory(copy.deepcopy(prob.action).to(CUDA), prob.x.to(CUDA))
    assert bool(free.converged.all()) and bool(gpu_free.converged.all())
    assert torch.equal(gpu_free.hessian_negative.cpu(), free.hessian_negative)
    assert torch.allclose(gpu_free.condition.cpu(), free.condition, rtol=1e-6)
