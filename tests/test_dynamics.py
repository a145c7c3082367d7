"""Dynamics: recorded trajectories (netCDF round trip, time grids), convergence diagnostics
(energy descent, time to tolerance, Jacobian spectrum), headless plots and ``ctep dynamics``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import problem

from ctep import DenseHopfield, RelaxConfig, TimeConstants, VectorField, relax
from ctep.cli import main
from ctep.diagnostics import (
    energy_monotone,
    jacobian_spectrum,
    measured_decay_rate,
    time_to_tolerance,
)
from ctep.models import small_instance
from ctep.plot import (
    plot_error_vs_beta,
    plot_residual_energy,
    plot_tau_histogram,
    plot_time_to_convergence_vs_tau,
    plot_trajectories,
)
from ctep.record import layer_states, load_dataset, record_relaxation, save_dataset
from ctep.solve import Status

EPS = float(np.finfo(np.float64).eps)


def net(activation="tanh", form="classical", tau="lognormal", spread=0.8, mean=1.0, seed=0,
        sizes=(6, 10, 3)):
    e = DenseHopfield(list(sizes), activation, form=form, seed=seed, dtype=torch.float64)
    t = TimeConstants.sample(e.state_shapes, tau, mean, spread, seed=seed + 1,
                             dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, sizes[0], generator=gen, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (4,), generator=gen)
    return VectorField(e, "squared_error", t), x, y


# ----------------------------------------------------------------------------- recording


def test_netcdf_round_trip_is_exact(tmp_path):
    field, x, y = net()
    ds = record_relaxation(field, x, y, 0.1, config=RelaxConfig(method="exp_euler", dt=0.2,
                                                                  tol=1e-8))
    assert ds["s_1"].dims == ("time", "sample", "neuron_1")
    assert ds["residual"].dims == ("time", "sample") and ds["tau_2"].dims == ("neuron_2",)
    path = save_dataset(ds, tmp_path / "sub" / "traj.nc")
    assert [p.name for p in path.parent.iterdir()] == ["traj.nc"]  # no temporary file left
    back = load_dataset(path)
    assert back.identical(ds)
    assert back["s_1"].dtype == np.float64 and back["energy"].dtype == np.float64
    assert back["status"].dtype == np.int8 and back["nfe"].dtype == np.int64
    assert (back["status"].values == int(Status.CONVERGED)).all()
    assert back.attrs["beta"] == 0.1 and back.attrs["method"] == "exp_euler"
    with pytest.raises(FileNotFoundError, match="no recorded dynamics"):
        load_dataset(tmp_path / "missing.nc")


def test_path_quantities_do_not_depend_on_the_chunking():
    from ctep.record import path_quantities

    field, x, y = net()
    gen = torch.Generator().manual_seed(2)
    s = tuple(0.5 * torch.rand(37, 4, *shape, generator=gen, dtype=torch.float64)
              for shape in field.energy.state_shapes)
    whole = path_quantities(field, x, y, 0.3, s)
    pieces = path_quantities(field, x, y, 0.3, s, rows=9)  # 2 times per evaluation
    # equal up to the batch-size dependence of BLAS round-off
    assert all(torch.allclose(a, b, rtol=1e-13, atol=1e-15)
               for a, b in zip(whole[0], pieces[0], strict=True))
    assert torch.allclose(whole[1], pieces[1], rtol=1e-13, atol=1e-15)
    assert torch.allclose(whole[2], pieces[2], rtol=1e-13, atol=1e-15)
    bound = field.bind(x[1:2], y[1:2], 0.3)
    point = tuple(v[20, 1:2] for v in s)
    assert torch.allclose(whole[0][0][20, 1], bound.drive(point)[0][0], rtol=1e-13, atol=1e-15)
    with torch.no_grad():
        one = field.total_energy(x[1:2], point, y[1:2], 0.3)[0]
    assert float(whole[2][20, 1]) == pytest.approx(float(one), rel=1e-13, abs=1e-15)
    d = s[1][20, 1] - s[1][20, 2]
    assert float(d.abs().max()) > 0.01  # the points differ, so a mixed-up index would show


@pytest.mark.parametrize(("method", "times"), [
    ("exp_euler", None), ("exp_euler", [0.0, 0.4, 1.0]), ("dopri5", [0.5, 1.0, 3.0]),
    ("rk23", [0.5, 1.0, 3.0]), ("fixed_point", [0.0, 2.0, 5.0])])
def test_recording_evaluates_the_field_once_per_stored_state(monkeypatch, method, times):
    """The field is evaluated by the relaxation (its NFE) and once for the stored path (the
    drive, residual and status come from that one pass); the status at the last grid time used
    to evaluate the field once more."""
    field, x, y = net()
    calls = []
    real = field.energy.drive

    def counting(x_, states, nudge, **kwargs):
        calls.append(int(states[0].shape[0]))
        return real(x_, states, nudge, **kwargs)

    monkeypatch.setattr(field.energy, "drive", counting)
    ds = record_relaxation(field, x, y, 0.1, times=times,
                           config=RelaxConfig(method=method, dt=0.2, tol=1e-6, max_steps=500))
    k, b = ds.sizes["time"], ds.sizes["sample"]
    assert calls[-1] == k * b  # the path, in one chunk (k·b ≤ 4096 rows)
    assert len(calls) - 1 == int(ds["nfe"].max()), (len(calls), int(ds["nfe"].max()))
    status = np.where(ds["residual"].values[-1] <= 1e-6, int(Status.CONVERGED),
                      int(Status.MAX_STEPS))
    assert (ds["status"].values == status).all()  # the status reads the stored residual


def test_conv_states_are_flattened_with_their_shape_kept(tmp_path):
    energy, in_shape = small_instance("conv", seed=0, dtype=torch.float32)
    field = VectorField(energy)
    x = torch.rand(2, *in_shape, generator=torch.Generator().manual_seed(0))
    ds = record_relaxation(field, x, config=RelaxConfig(method="fixed_point", tol=1e-4,
                                                        max_steps=200))
    back = load_dataset(save_dataset(ds, tmp_path / "conv.nc"))
    assert back.identical(ds) and back["s_1"].dtype == np.float32
    s1 = layer_states(back, 1)
    assert tuple(s1.shape[2:]) == tuple(energy.state_shapes[0]) and len(energy.state_shapes[0]) == 3
    eq = relax(field.bind(x), config=RelaxConfig(method="fixed_point", tol=1e-4, max_steps=200))
    assert torch.equal(s1[-1], eq.states[0])


def test_loop_records_every_step_and_freezes_stopped_samples():
    field, x, _ = net()
    ds = record_relaxation(field, x, config=RelaxConfig(method="exp_euler", dt=0.1, tol=1e-6))
    t = ds["time"].values
    assert np.allclose(np.diff(t), 0.1) and t[0] == 0  # every step, no repeated final time
    t_stop = ds["t_stop"].values
    assert t_stop.min() < t_stop.max()  # samples stop at different times
    first = int(np.argmin(t_stop))
    after = t >= t_stop[first] - 1e-12
    s = ds["s_1"].values[after, first]
    assert (s == s[0]).all()  # frozen from its stop on


def test_time_grid_matches_relax():
    field, x, y = net(activation="sigmoid", form="primitive")
    cfg = RelaxConfig(method="dopri5", tol=1e-10)
    grid = torch.linspace(0.0, 80.0, 41)
    ds = record_relaxation(field, x, y, 0.0, config=cfg, times=grid)
    assert ds.attrs["mode"] == "time_grid" and np.allclose(ds["time"].values, grid.numpy())
    eq = relax(field.bind(x), config=cfg)
    for i, s in enumerate(eq.states, start=1):
        assert np.abs(ds[f"s_{i}"].values[-1] - s.numpy()).max() < 1e-9
    assert (ds["status"].values == int(Status.CONVERGED)).all()
    # loops on a grid: the iterates at those steps, equal to the check-time record
    loop = RelaxConfig(method="exp_euler", dt=0.25, tol=1e-8)
    every = record_relaxation(field, x, config=loop)
    some = record_relaxation(field, x, config=loop, times=[0.0, 0.5, 2.0, 5.0])
    assert every.sel(time=[0.0, 0.5, 2.0, 5.0], method="nearest")["s_2"].equals(some["s_2"])
    with pytest.raises(ValueError, match="whole number of steps"):
        record_relaxation(field, x, config=loop, times=[0.0, 0.3])
    # damped fixed_point with dt steps by damping·dt in time (was taken as dt: no state at t=2)
    damped = RelaxConfig(method="fixed_point", dt=0.5, damping=0.5, tol=1e-8)
    every = record_relaxation(field, x, config=damped)
    some = record_relaxation(field, x, config=damped, times=[0.0, 0.5, 2.0])
    assert np.allclose(np.diff(every["time"].values[:3]), 0.25)
    assert every.sel(time=[0.0, 0.5, 2.0], method="nearest")["s_2"].equals(some["s_2"])
    with pytest.raises(ValueError, match="strictly increasing"):
        record_relaxation(field, x, config=cfg, times=[0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="samples"):
        record_relaxation(field, x, config=cfg, samples=[7])
    with pytest.raises(ValueError, match="real"):
        record_relaxation(field, x, y, 0.1j, config=cfg)


@pytest.mark.parametrize("method", ["rk23", "etd2"])
def test_per_sample_adaptive_methods_record_on_a_time_grid(method):
    # rk23/etd2 have no common check times; on a grid they integrate between the grid times
    field, x, y = net(activation="sigmoid", form="primitive")
    grid = torch.linspace(0.0, 40.0, 21)
    ref = record_relaxation(field, x, y, 0.3, config=RelaxConfig(method="dopri5", tol=1e-10),
                            times=grid)
    ds = record_relaxation(field, x, y, 0.3, config=RelaxConfig(method=method, tol=1e-6),
                           times=grid)
    assert ds.attrs["mode"] == "time_grid" and ds.attrs["method"] == method
    for i in (1, 2):  # local error control at rtol 1e-6, atol 1e-7
        assert np.abs(ds[f"s_{i}"].values - ref[f"s_{i}"].values).max() < 1e-5
    assert (ds["status"].values == int(Status.CONVERGED)).all()
    assert (ds["nfe"].values > 0).all()
    with pytest.raises(ValueError, match="no common check times"):
        record_relaxation(field, x, config=RelaxConfig(method=method))


@pytest.mark.parametrize("method", ["dopri5", "rk23"])
def test_time_grid_reports_when_a_sample_diverged(method):
    # β < 0 makes the squared error concave: the identity net runs away (was: t_stop = t_end)
    field, x, y = net(activation="identity", form="primitive")
    grid = torch.linspace(0.0, 2.0, 41)
    ds = record_relaxation(field, x, y, -5.0, times=grid,
                           config=RelaxConfig(method=method, tol=1e-6, diverge_at=10.0))
    assert (ds["status"].values == int(Status.DIVERGED)).all()
    m = np.maximum(np.abs(ds["s_1"].values).max(-1), np.abs(ds["s_2"].values).max(-1))
    first = np.argmax(m > 10.0, axis=0)
    assert (first > 0).all() and (ds["t_stop"].values < 2.0).all()
    assert np.array_equal(ds["t_stop"].values, grid.numpy()[first].astype(np.float64))

def test_samples_keep_their_batch_index_and_bad_arguments_are_refused():
    field, x, y = net()
    cfg = RelaxConfig(method="exp_euler", dt=0.2, tol=1e-8)
    full = record_relaxation(field, x, y, 0.2, config=cfg)
    part = record_relaxation(field, x, y, 0.2, config=cfg, samples=torch.tensor([3, 1]))
    assert part["sample"].values.tolist() == [3, 1]
    a, b = full.sel(sample=[3, 1]), part
    n = min(a.sizes["time"], b.sizes["time"])  # the batch stops when its last sample does
    # a batch of 2, not 4: BLAS may sum the products in another order, so the states agree to
    # a few ulps, not bit for bit (measured: 1.8 ulps of the states' scale with every product
    # of the batch of 2 jittered by ±1 ulp; the bound is 16 ulps)
    for key in ("s_1", "s_2"):
        scale = np.abs(a[key].values).max()
        assert np.abs(a[key].values[:n] - b[key].values[:n]).max() <= 16 * EPS * scale
    assert np.array_equal(a["target"].values, b["target"].values)
    # t_tol is equal: at its check the residual is 4.5% below tol and at the check before 10%
    # above it, margins no rounding can cross
    res = a["residual"].sel(sample=3).values[:n] / cfg.tol
    k = int(np.argmax(res <= 1.0))
    assert res[k] < 0.96 and res[k - 1] > 1.05
    assert time_to_tolerance(part)["t_tol"].sel(sample=3) == time_to_tolerance(full)[
        "t_tol"].sel(sample=3)
    s0 = tuple(torch.zeros(2, *shape, dtype=torch.float64) for shape in field.energy.state_shapes)
    for kwargs, message in [
        ({"samples": [1.7]}, "integer indices"),  # was silently truncated to sample 1
        ({"samples": [1, 1]}, "distinct"),
        ({"samples": []}, "non-empty"),
        ({"times": [[0.0, 1.0], [2.0, 3.0]]}, "1-D"),  # was silently flattened
        ({"times": [0.0, math.nan]}, "got nan"),
        ({"s0": s0, "times": [0.0, 1.0]}, "s0 has batch"),  # was a torchdiffeq shape error
        ({"method": "tsit5", "times": [0.0, 1.0]}, "unknown relaxation method"),
    ]:
        method = kwargs.pop("method", "dopri5")
        with pytest.raises(ValueError, match=message):
            record_relaxation(field, x, y, 0.2, config=cfg.replace(method=method), **kwargs)
    with pytest.raises(ValueError, match="real"):
        record_relaxation(field, x, y, "0.2", config=cfg)  # was read as 0.2
    with pytest.raises(ValueError, match="targets have batch size 2"):
        record_relaxation(field, x, y[:2], 0.0, config=cfg)  # was an xarray error at the end

# ----------------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("form", ["classical", "primitive"])
def test_energy_non_increasing_under_small_steps(form):
    field, x, y = net(form=form)
    ds = record_relaxation(field, x, y, 0.5, config=RelaxConfig(method="exp_euler", dt=0.05,
                                                                  tol=1e-8))
    mono = energy_monotone(ds, rtol=1e-12)
    assert bool(mono["monotone"].all()) and ds.sizes["time"] > 100
    assert float(mono["max_increase"].max()) <= 1e-12 * float(mono["scale"].max())


def test_energy_increase_is_detected_for_large_steps():
    # the undamped map (h = 1) 2-cycles in a strongly nudged phase: F goes up and down
    field, x, y = net(activation="tanh", form="primitive")
    big = record_relaxation(field, x, y, 1.0, config=RelaxConfig(method="fixed_point",
                                                                   tol=1e-8, max_steps=200))
    mono = energy_monotone(big)
    assert not bool(mono["monotone"].any()) and float(mono["max_increase"].min()) > 1e-2
    assert (big["status"].values == int(Status.MAX_STEPS)).all()
    small = record_relaxation(field, x, y, 1.0, config=RelaxConfig(
        method="fixed_point", damping=0.5, tol=1e-8, max_steps=200))
    assert bool(energy_monotone(small)["monotone"].all())


def test_energy_monotone_allows_the_round_off_of_the_dtype():
    f = np.array([[2.0], [1.0], [1.0 + 1e-7], [0.5]])
    ds = xr.Dataset({"energy": (("time", "sample"), f)}, coords={"time": [0, 1, 2, 3],
                                                                  "sample": [0]})
    ds.attrs["dtype"] = "float32"  # 100 ε = 1.2e-5 relative to max |F| = 2
    assert bool(energy_monotone(ds)["monotone"].all())
    ds.attrs["dtype"] = "float64"
    mono = energy_monotone(ds)
    assert not bool(mono["monotone"].any())
    assert mono["max_increase"].values[0] == pytest.approx(1e-7, rel=1e-6)
    assert bool(energy_monotone(ds, atol=2e-7)["monotone"].all())


def test_time_to_tolerance_definition():
    t = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    r = np.array([[1.0, 1.0], [0.1, 1e-7], [2e-7, 1e-7], [5e-7, 1e-7], [1e-8, np.nan]])
    d = np.stack([r, r / 2], axis=-1)  # two neurons: the second at half the residual
    ds = xr.Dataset({"residual": (("time", "sample"), r),
                     "drive_1": (("time", "sample", "neuron_1"), d)},
                    coords={"time": t, "sample": [0, 1], "neuron_1": [0, 1]},
                    attrs={"tol": 1e-6, "layers": 1})
    tt = time_to_tolerance(ds)
    assert tt["t_tol"].values.tolist() == [2.0, math.inf]  # NaN at the end counts as above
    assert tt["t_tol_1"].values[0].tolist() == [2.0, 2.0]
    assert time_to_tolerance(ds, 1e-7)["t_tol"].values[0] == 4.0
    assert time_to_tolerance(ds, 0.3)["t_tol_1"].values[0].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="tol"):
        time_to_tolerance(ds, -1.0)


@pytest.mark.parametrize("form,activation", [("classical", "tanh"), ("primitive", "sigmoid")])
def test_spectrum_scales_with_constant_tau(form, activation):
    field, x, y = net(activation, form, tau="constant", spread=0.0)
    eq = relax(field.bind(x), config=RelaxConfig(method="dopri5", tol=1e-10))
    slow, _, _ = net(activation, form, tau="constant", spread=0.0, mean=4.0)
    a = jacobian_spectrum(field, x, eq.states)
    b = jacobian_spectrum(slow, x, eq.states)
    assert a.symmetric == (form == "classical") and b.symmetric == a.symmetric
    assert torch.allclose(b.eigenvalues, a.eigenvalues / 4.0, rtol=1e-9, atol=1e-12)
    assert torch.allclose(b.slowest_rate(), a.slowest_rate() / 4.0, rtol=1e-9)
    assert torch.allclose(b.stiffness_ratio(), a.stiffness_ratio(), rtol=1e-9)
    assert bool((a.slowest_rate() > 0).all())  # a stable fixed point
    assert a.eigenvalues.shape == (4, 13) and not bool(a.pinned.any())


def test_inertia_does_not_depend_on_tau_for_gradient_fields():
    # large couplings and states away from equilibrium: H(s) is indefinite
    e = DenseHopfield([4, 8, 6], "tanh", form="classical", seed=3, dtype=torch.float64,
                      init_scale=6.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 4, generator=gen, dtype=torch.float64)
    s = tuple(0.6 * torch.rand(5, *shape, generator=gen, dtype=torch.float64) - 0.3
              for shape in e.state_shapes)
    inertias, slow = [], []
    for dist, spread in [("constant", 0.0), ("lognormal", 2.0), ("gamma", 1.0)]:
        tau = TimeConstants.sample(e.state_shapes, dist, 1.0, spread, seed=1,
                                   dtype=torch.float64)
        sp = jacobian_spectrum(VectorField(e, tau=tau), x, s)
        assert sp.symmetric
        inertias.append(sp.inertia())
        slow.append(sp.slowest_rate())
    neg, pos = inertias[0][:, 0], inertias[0][:, 2]
    assert bool((neg > 0).all()) and bool((pos > 0).any())  # saddles: a real test of signs
    assert all(torch.equal(i, inertias[0]) for i in inertias[1:])
    assert not torch.allclose(slow[0], slow[1])  # while the sizes do change with τ


def test_rates_and_stiffness_obey_the_bounds_of_theory_2_1():
    # λ_slow ≥ λ_min(H)/τ_max, max|λ| ≤ λ_max(H)/τ_min, stiffness ≤ κ(H)·τ_max/τ_min
    from ctep._linalg import batched_jacobian, checked_eigvalsh

    field, x, _ = net("tanh", "classical", spread=2.0)
    eq = relax(field.bind(x), config=RelaxConfig(method="dopri5", tol=1e-11))
    sp = jacobian_spectrum(field, x, eq.states)
    h = -batched_jacobian(field.bind(x).drive, eq.states)
    lam = checked_eigvalsh(0.5 * (h + h.transpose(1, 2)))
    tau = torch.cat([t.reshape(-1) for t in field.tau()])
    t_min, t_max = float(tau.min()), float(tau.max())
    assert t_max / t_min > 5  # a real spread, so the bounds are not those of τ ≡ 1
    slack = 1 + 1e-9
    assert bool((sp.slowest_rate() * slack >= lam[:, 0] / t_max).all())
    assert bool((sp.fastest_rate() <= slack * lam[:, -1] / t_min).all())
    assert bool((sp.stiffness_ratio() <= slack * lam[:, -1] / lam[:, 0] * t_max / t_min).all())
    # and the stiffness is not that of H alone: τ changes it
    assert bool((sp.stiffness_ratio() > 1.5 * lam[:, -1] / lam[:, 0]).all())

def test_pinned_clipped_units_are_left_out_of_the_spectrum():
    field, x, _ = net("hard_sigmoid", "classical")
    eq = relax(field.bind(x), config=RelaxConfig(method="dopri5", tol=1e-10))
    sp = jacobian_spectrum(field, x, eq.states)
    pinned = sp.pinned.sum(1)
    assert bool((pinned > 0).all())
    assert torch.equal(torch.isnan(sp.eigenvalues).sum(1), pinned)
    assert bool((sp.slowest_rate() > 0).all()) and bool(torch.isfinite(sp.stiffness_ratio()).all())


@pytest.mark.parametrize("activation", ["tanh", "hard_sigmoid"])
def test_spectrum_of_a_non_finite_sample_is_nan_and_leaves_the_others_alone(activation):
    # a diverged sample used to go through eigvals on NaN (LAPACK error, arbitrary numbers)
    field, x, y = net(activation, "classical")
    eq = relax(field.bind(x), config=RelaxConfig(method="dopri5", tol=1e-10))
    ref = jacobian_spectrum(field, x, eq.states)
    bad = tuple(s.clone() for s in eq.states)
    bad[0][2, 0] = float("nan")
    sp = jacobian_spectrum(field, x, bad)
    assert sp.symmetric == ref.symmetric and sp.symmetric
    assert bool(torch.isnan(sp.eigenvalues[2]).all()) and bool(torch.isnan(sp.slowest_rate()[2]))
    assert sp.inertia()[2].tolist() == [0, 0, 0] and not bool(sp.pinned[2].any())
    keep = [0, 1, 3]
    assert torch.allclose(sp.eigenvalues[keep], ref.eigenvalues[keep], rtol=1e-12, atol=1e-14,
                          equal_nan=True)
    with pytest.raises(ValueError, match="real"):
        jacobian_spectrum(field, x, eq.states, y, 0.1j)
    with pytest.raises(ValueError, match="batch"):
        jacobian_spectrum(field, x[:2], eq.states)


@pytest.mark.parametrize("beta", [torch.tensor(0.3, dtype=torch.float64),
                                  torch.tensor([0.3], dtype=torch.float64),
                                  np.float64(0.3)])
def test_record_and_spectrum_take_the_same_betas(beta):
    """One validator (ctep._nudge.real_beta) for both: a one-element real tensor β is 0.3 in
    each (jacobian_spectrum refused a 0-d tensor), and they refuse the same bad β."""
    field, x, y = net()
    cfg = RelaxConfig(method="exp_euler", dt=0.2, tol=1e-9)
    ds = record_relaxation(field, x, y, beta, config=cfg)
    assert ds.attrs["beta"] == 0.3
    assert ds.identical(record_relaxation(field, x, y, 0.3, config=cfg))
    states = tuple(layer_states(ds, i)[-1] for i in (1, 2))
    assert torch.equal(jacobian_spectrum(field, x, states, y, beta).eigenvalues,
                       jacobian_spectrum(field, x, states, y, 0.3).eigenvalues)
    for bad, says in [(True, "real number"), (0.1j, "real number"), ("0.2", "real number"),
                      (torch.tensor([0.1, 0.2]), "one-element"),
                      (torch.tensor(0.1j), "real number"), (math.nan, "finite"),
                      (torch.tensor(math.inf), "finite")]:
        with pytest.raises(ValueError, match=says):
            record_relaxation(field, x, y, bad, config=cfg)
        with pytest.raises(ValueError, match=says):
            jacobian_spectrum(field, x, states, y, bad)

def test_time_to_tolerance_follows_the_slowest_rate():
    field, x, y = net("sigmoid", "primitive", spread=1.0)
    eq = relax(field.bind(x), config=RelaxConfig(method="dopri5", tol=1e-11))
    rate = jacobian_spectrum(field, x, eq.states).slowest_rate().numpy()
    ds = record_relaxation(field, x, config=RelaxConfig(method="dopri5", tol=1e-11),
                           times=torch.linspace(0, 60, 1201))
    measured = measured_decay_rate(ds, 1e-4, 1e-8)
    assert np.all(np.abs(measured / rate - 1) < 0.05), (measured, rate)
    # the same weights and states with another τ draw would not match: τ sets the rate
    tau = TimeConstants.sample(field.energy.state_shapes, "lognormal", 1.0, 1.0, seed=2,
                               dtype=torch.float64)
    other = VectorField(field.energy, "squared_error", tau)
    wrong = jacobian_spectrum(other, x, eq.states).slowest_rate().numpy()
    assert np.all(np.abs(measured / wrong - 1) > 0.2)


# ----------------------------------------------------------------------------- plots


def test_plots_build_headless_and_write_png(tmp_path):
    from matplotlib.figure import Figure

    field, x, y = net()
    ds = record_relaxation(field, x, y, 0.0, config=RelaxConfig(method="exp_euler", dt=0.2,
                                                                  tol=1e-6))
    figs = {"traj": plot_trajectories(ds, 2, samples=[0, 3], neurons=[0, 2]),
            "res": plot_residual_energy(ds), "tau": plot_tau_histogram(ds),
            "tau_module": plot_tau_histogram(field.tau),
            "ttol": plot_time_to_convergence_vs_tau(ds)}
    report = {"results": [{"estimator": e, "reference": "implicit", "beta": b,
                           "rel_error": b ** (1 if e == "one-sided" else 2), "cosine": 1.0,
                           "sign_agreement": 1.0, "max_abs_error": b, "per_parameter": [b]}
                          for e in ("one-sided", "centered") for b in (0.1, 0.01)],
              "parameters": ["weights.0"], "equilibrium": {"residual_max": 1e-12},
              "config": {"seed": 0}}
    from ctep.verify import report_dataset

    figs["beta"] = plot_error_vs_beta(report_dataset(report))
    figs["beta_dict"] = plot_error_vs_beta(report)
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
    lines = figs["traj"].axes[0].get_lines()
    assert len(lines) == 3  # two neurons and the stop marker
    with pytest.raises(ValueError, match="layer must be one of 1..2"):
        plot_trajectories(ds, 3)
    with pytest.raises(ValueError, match="neurons"):
        plot_trajectories(ds, 1, neurons=[99])
    with pytest.raises(TypeError, match="tau must be"):
        plot_tau_histogram(3.0)
    with pytest.raises(ValueError, match="non-empty"):
        plot_tau_histogram([])  # was numpy's "need at least one array to concatenate"


def test_time_to_tolerance_plot_counts_the_neurons_it_cannot_draw():
    # clipped units pinned at 0 from the start have t_tol = 0: no place on a log axis
    field, x, _ = net("hard_sigmoid", "classical")
    ds = record_relaxation(field, x, config=RelaxConfig(method="exp_euler", dt=0.2, tol=1e-8))
    tt = time_to_tolerance(ds)
    zero = sum(int((np.median(tt[f"t_tol_{i}"].values, axis=0) == 0).sum()) for i in (1, 2))
    assert zero > 0
    fig = plot_time_to_convergence_vs_tau(ds)
    assert f"{zero} at it from t = 0" in fig.axes[0].get_title()
    drawn = sum(len(line.get_xdata()) for line in fig.axes[0].get_lines())
    assert drawn == 13 - zero

# ----------------------------------------------------------------------------- CLI


def test_cli_random_network(tmp_path, capsys):
    out = tmp_path / "dyn"
    assert main(["dynamics", "--out", str(out), "--samples", "3", "--sizes", "8,12,4",
                 "--tau-spread", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "CONVERGED" in text and "λ_slow" in text
    names = sorted(p.name for p in out.iterdir())
    assert names == ["diagnostics.json", "residual_energy.png", "tau_histogram.png",
                     "time_to_tolerance_vs_tau.png", "trajectories.nc", "trajectories.png"]
    ds = load_dataset(out / "trajectories.nc")
    assert ds.sizes["sample"] == 3 and ds.sizes["neuron_1"] == 12
    report = json.loads((out / "diagnostics.json").read_text())
    for row in report["samples"]:
        assert row["status"] == "CONVERGED" and row["energy_monotone"] and row["stable"]
        assert row["t_tol"] <= row["t_stop"] + 1e-12 and row["slowest_rate"] > 0


def write_config(tmp_path, name="synthetic.toml"):
    path = tmp_path / name
    path.write_text("""
[data]
name = "synthetic"
synthetic_features = 10
synthetic_classes = 3
synthetic_train = 48
synthetic_test = 24
batch_size = 16
[model]
hidden = [12]
activation = "sigmoid"
dtype = "float64"
init_scale = 0.5
[relax]
free_steps = 15
nudged_steps = 6
tol = 1e-6
[estimator]
beta = 0.5
[optimizer]
lr = 0.5
[train]
epochs = 1
progress = false
""")
    return path


def test_cli_with_config_and_checkpoint(tmp_path, capsys):
    config = write_config(tmp_path)
    a = tmp_path / "untrained"
    assert main(["dynamics", "--config", str(config), "--out", str(a), "--samples", "4",
                 "--seed", "1"]) == 0
    assert "untrained network of" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run)]) == 0
    b = tmp_path / "trained"
    assert main(["dynamics", "--checkpoint", str(run), "--out", str(b), "--samples", "4",
                 "--seed", "1", "--method", "dopri5", "--times", "0:30:61"]) == 0
    assert "trained network from" in capsys.readouterr().out
    da, db = load_dataset(a / "trajectories.nc"), load_dataset(b / "trajectories.nc")
    assert da.attrs["method"] == "fixed_point" and db.attrs["mode"] == "time_grid"
    assert np.array_equal(da["x"].values, db["x"].values)  # the same test samples
    assert np.array_equal(da["target"].values, db["target"].values)
    # trained weights: other equilibria than the untrained network's
    assert np.abs(da["s_2"].values[-1] - db["s_2"].values[-1]).max() > 1e-3
    assert db.sizes["neuron_1"] == 12 and db.sizes["neuron_2"] == 3


def test_cli_bad_options_exit_2(tmp_path, capsys):
    out = str(tmp_path / "o")
    config = write_config(tmp_path)
    for argv, message in [
        (["--samples", "0"], "--samples must be"),
        (["--method", "newton"], "unknown --method"),
        (["--config", str(config), "--sizes", "4,3"], "--sizes describe the random network"),
        (["--checkpoint", str(tmp_path / "nowhere")], "no checkpoint at"),
        (["--config", str(tmp_path / "none.toml")], "does not exist"),
        (["--config", str(config), "--samples", "100"], "exceeds the 24 test samples"),
        (["--method", "exp_euler", "--dt", "0.5", "--times", "0,0.3"], "whole number"),
        (["--method", "rk23"], "pass --times"),
        (["--max-jacobian", "-1"], "--max-jacobian must be"),
    ]:
        assert main(["dynamics", "--out", out, *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    for argv in (["--times", "0:1"], ["--config", "a", "--checkpoint", "b"]):
        with pytest.raises(SystemExit) as exc:
            main(["dynamics", "--out", out, *argv])
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # no default folder in the working directory
        main(["dynamics", "--samples", "2"])
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err


def test_conftest_problem_relaxes_the_same_with_recording():
    # recording changes nothing about the relaxation itself
    field, x, _ = problem(tau="lognormal", tau_spread=1.0)
    cfg = RelaxConfig(method="fixed_point", tol=1e-10)
    ds = record_relaxation(field, x, config=cfg)
    eq = relax(field.bind(x), config=cfg)
    for i, s in enumerate(eq.states, start=1):
        assert np.array_equal(ds[f"s_{i}"].values[-1], s.numpy())
    assert np.array_equal(ds["nfe"].values, eq.nfe.numpy())
    assert np.array_equal(ds["t_stop"].values, eq.t.numpy())
