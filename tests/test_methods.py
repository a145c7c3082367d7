"""The registry of relaxation methods (ctep.solve.methods): a new method is one registry entry,
and relax, recording on a grid, plots and the sweep summary ask the entry, not the name."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from conftest import max_diff, problem

from ctep.plot import _time_label
from ctep.record import record_relaxation
from ctep.solve import (
    FAMILIES,
    TORCHDIFFEQ_METHODS,
    Method,
    RelaxConfig,
    available_methods,
    get_method,
    loops,
    methods_of,
    register_method,
    relax,
    unregister_method,
)


def forward_euler_steps(field, cfg):
    """Plain forward Euler on τ ⊙ ds/dt = drive: h = dt/τ (unclipped), time dt."""
    dt = cfg.dt if cfg.dt is not None else min(float((1 / it).min()) for it in field.inv_tau)
    return tuple(dt / t.detach() for t in field.field.tau()), dt


@pytest.fixture
def forward_euler():
    """The whole diff of adding a method: this one entry."""
    method = register_method(Method(
        "forward_euler", "loop",
        partial(loops.relax_loop, steps=forward_euler_steps),
        partial(loops.loop_on_grid, steps=forward_euler_steps),
        forward_euler_steps, "forward Euler, h = dt/τ"))
    yield method
    unregister_method("forward_euler")


def test_the_builtin_methods_in_order():
    names = available_methods()
    assert names[:5] == ("fixed_point", "anderson", "exp_euler", "rk23", "etd2")
    assert names[5:] == TORCHDIFFEQ_METHODS == tuple(sorted(TORCHDIFFEQ_METHODS))
    assert {"dopri5", "bosh3", "euler", "rk4", "implicit_adams"} <= set(TORCHDIFFEQ_METHODS)
    assert methods_of("map") == ("fixed_point", "anderson")
    assert methods_of("loop") == ("exp_euler",)
    assert methods_of("adaptive") == ("rk23", "etd2")
    assert set(FAMILIES) == {get_method(n).family for n in names}
    assert not get_method("rk23").records_check_times and get_method("dopri5").records_check_times
    assert get_method("fixed_point").counts_iterations(RelaxConfig())
    assert not get_method("fixed_point").counts_iterations(RelaxConfig(dt=0.5))
    assert not get_method("exp_euler").counts_iterations(RelaxConfig())


def test_a_registered_method_relaxes_records_and_plots(forward_euler):
    assert "forward_euler" in available_methods() and methods_of("loop")[-1] == "forward_euler"
    field, x, y = problem(activation="tanh", tau="lognormal", tau_spread=0.5)
    tau_min = min(float(t.min()) for t in field.tau())
    dt = 0.5 * tau_min  # dt/τ ≤ 1: the same steps as the map with per-neuron steps
    eq = relax(field.bind(x, y, 0.3), method="forward_euler", dt=dt, tol=1e-9, max_steps=50_000)
    assert bool(eq.converged.all()) and eq.method == "forward_euler"
    ref = relax(field.bind(x, y, 0.3), method="fixed_point", dt=dt, tol=1e-9, max_steps=50_000)
    assert max_diff(eq.states, ref.states) == 0.0  # same batch, same arithmetic: bit for bit
    assert torch.allclose(eq.t, ref.t)
    grid = torch.arange(0, 21, dtype=torch.float64) * dt
    ds = record_relaxation(field, x, y, 0.3, config=RelaxConfig(method="forward_euler", dt=dt),
                           times=grid)
    assert ds.attrs["method"] == "forward_euler" and ds.sizes["time"] == 21
    assert _time_label(ds) == "time t"
    with pytest.raises(ValueError, match="whole number of steps"):
        record_relaxation(field, x, y, 0.3, config=RelaxConfig(method="forward_euler", dt=dt),
                          times=grid + 0.3 * dt)


def test_registry_refuses_bad_entries_and_names(forward_euler):
    with pytest.raises(ValueError, match="already registered"):
        register_method(forward_euler)
    with pytest.raises(ValueError, match="unknown method family 'ode'"):
        Method("x", "ode", forward_euler.relax, forward_euler.on_grid)
    with pytest.raises(ValueError, match="step_sizes is required"):
        Method("x", "map", forward_euler.relax, forward_euler.on_grid)
    with pytest.raises(ValueError, match="meaningless"):
        Method("x", "adaptive", forward_euler.relax, forward_euler.on_grid, forward_euler_steps)
    with pytest.raises(ValueError, match="unknown relaxation method 'nope'; known: fixed_point"):
        get_method("nope")
    field, x, _ = problem()
    with pytest.raises(ValueError, match="unknown relaxation method 'nope'"):
        relax(field.bind(x), method="nope")
    with pytest.raises(ValueError, match="unknown method family"):
        methods_of("ode")
    replaced = register_method(Method("forward_euler", "loop", forward_euler.relax,
                                      forward_euler.on_grid, forward_euler_steps, "again"),
                               replace=True)
    assert get_method("forward_euler") is replaced


def test_unregistered_method_is_gone():
    assert "forward_euler" not in available_methods()
    with pytest.raises(ValueError, match="unknown relaxation method"):
        unregister_method("forward_euler")
    assert math.isfinite(get_method("exp_euler").step_sizes(
        problem()[0].bind(problem()[1]), RelaxConfig())[1])


@pytest.mark.parametrize("field,value", [
    ("check_every", -1), ("max_steps", 2.5), ("max_steps", 0), ("max_steps", True),
    ("polish", -1), ("tol", -1e-6), ("tol", math.nan), ("diverge_at", -1.0),
    ("diverge_at", math.nan), ("diverge_at", 0.0), ("rtol", -1e-3), ("atol", math.inf),
])
def test_relax_config_refuses_bad_values_naming_the_field(field, value):
    """Checked once, where the config is made (and by replace), with the field's name."""
    with pytest.raises(ValueError, match=rf"RelaxConfig\.{field} must"):
        RelaxConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"RelaxConfig\.{field} must"):
        RelaxConfig().replace(**{field: value})


def test_relax_config_keeps_the_allowed_edges():
    cfg = RelaxConfig(tol=0.0, check_every=0, polish=0, diverge_at=math.inf, rtol=0.0, atol=0.0,
                      max_time=math.inf)
    assert cfg.diverge_at == math.inf and cfg.tol == 0.0


def test_an_empty_batch_and_a_zero_fixed_grid_step_are_named():
    """Were a reshape error and a ZeroDivisionError (issue 20)."""
    field, x, _ = problem()
    with pytest.raises(ValueError, match="at least one input"):
        field.bind(x[:0])
    with pytest.raises(ValueError, match="at least one input"):
        field.bind(x[0, 0])
    for dt in (0.0, -0.5, math.inf):
        with pytest.raises(ValueError, match=r"rk4 dt \(its step\) must be positive"):
            relax(field.bind(x), method="rk4", dt=dt)
