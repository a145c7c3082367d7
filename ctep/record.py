"""Relaxation trajectories as ``xarray.Dataset``s, saved to and loaded from netCDF.

:func:`record_relaxation` relaxes a batch and returns the path in one of two modes:

* **check times** (``times=None``): :func:`ctep.solve.relax` with ``record=True``. The states
  are those at the solver's residual checks: every iteration of a loop method with
  ``check_every=1``, every ``check_every`` iterations otherwise, and the ends of the check
  windows for torchdiffeq methods. A sample that stops (converged or diverged) leaves the
  working batch, so its recorded values are frozen from its ``t_stop`` on.
* **time grid** (``times`` given): the states at exactly those times, integrated from t = 0 with
  no sample stopping early. torchdiffeq methods call ``odeint(f, s0, times)`` over the whole
  batch (one shared step size; the fixed-grid methods interpolate linearly between their own
  steps); the loop methods (``fixed_point``, ``anderson``, ``exp_euler``) run with tolerance 0 up
  to the last time and keep the iterates at those times, which must be whole multiples of the
  step (for ``fixed_point`` and ``anderson`` without ``dt``, times count iterations); the
  per-sample adaptive methods (``rk23``, ``etd2``) integrate every sample with its own step
  sizes from one grid time to the next (:func:`ctep.solve.adaptive.integrate_adaptive`). They
  have no common check times, so they can only record on a grid.

The ``sample`` coordinate holds the indices of the recorded samples in the batch that was
passed (``0..B−1``, or ``samples``).

Layout of the Dataset (``L`` state layers, ``l = 1..L``):

============== ============================ ==================================================
variable       dims                         meaning
============== ============================ ==================================================
``s_l``        time, sample, neuron_l       states of layer l (conv layers flattened; the
                                            per-sample shape is in attr ``shape_l``)
``drive_l``    time, sample, neuron_l       τ ⊙ ds/dt (−∂F/∂s in the classical form,
                                            σ(u) − s in the primitive form)
``residual``   time, sample                 ‖τ ⊙ ds/dt‖∞ over all layers (float64)
``energy``     time, sample                 F = E + β·ℓ (float64)
``tau_l``      neuron_l                     time constants of layer l (float64)
``status``     sample                       :class:`ctep.solve.Status` code (int8)
``nfe``        sample                       vector-field evaluations (int64)
``steps``      sample                       iterations (loops), check windows (torchdiffeq),
                                            grid times (torchdiffeq on a time grid) or
                                            attempted steps of the batch (rk23/etd2 on a grid)
``t_stop``     sample                       time at which the sample stopped
``x``          sample, input                inputs, flattened
``target``     sample                       targets (when given)
============== ============================ ==================================================

Attributes: ``mode``, ``method``, ``tol``, ``beta``, ``dtype``, ``ctep_version``, ``energy``,
``form`` (layered energies), ``cost``, ``layers``, ``shape_l`` (JSON lists), ``input_shape``,
``relax_config`` (JSON), ``status_names`` (JSON) and ``message``.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import pathlib
from collections.abc import Sequence

import torch
from torch import Tensor

from ._io import atomic_write
from ._nudge import real_beta
from ._states import States, per_sample_all_finite, per_sample_max_abs
from .dynamics import BoundField, VectorField
from .solve import RelaxConfig, Status, get_method, relax

#: (drive τ ⊙ ds/dt per layer, residual ‖drive‖∞, F = E + β·ℓ) at every stored state
#: ``(K, B, ...)``: what :func:`path_quantities` returns
PathQuantities = tuple[States, Tensor, Tensor]


def record_relaxation(field: VectorField, x: Tensor, y: Tensor | None = None,
                      beta: float = 0.0, *, config: RelaxConfig,
                      times: Sequence[float] | Tensor | None = None, s0: States | None = None,
                      samples: Sequence[int] | Tensor | None = None):
    """Relax ``field`` on inputs ``x`` (targets ``y``, nudge ``beta``) and record the path.

    Args:
        field: the network (energy, cost, τ).
        x, y: a batch of inputs and, for ``beta != 0`` or to store them, targets.
        beta: real nudge strength β of F = E + β·ℓ: a finite real number or one-element real
            tensor (:func:`ctep._nudge.real_beta`; complex β is refused).
        config: how to relax (method, tol, step, ...); ``record`` and ``polish`` are set here
            (recording on, no Newton polish: the polished states are not on the path).
        times: ``None`` to record at the solver's check times, or a strictly increasing grid
            of times ≥ 0 (see the module docstring for what each method does with it).
        s0: initial states (default: the energy's zero states).
        samples: distinct indices into the batch to relax (default: all); they become the
            ``sample`` coordinate.

    Returns:
        An ``xarray.Dataset`` laid out as in the module docstring.
    """
    beta = real_beta(beta)
    if not isinstance(config, RelaxConfig):
        raise TypeError(f"config must be a RelaxConfig, got {type(config).__name__}")
    if s0 is not None:
        s0 = tuple(s0)
        if any(s.shape[0] != x.shape[0] for s in s0):
            raise ValueError(f"s0 has batch {[int(s.shape[0]) for s in s0]}, x has "
                             f"{x.shape[0]}")
    ids = list(range(x.shape[0]))
    if samples is not None:
        ids = _check_samples(samples, x.shape[0])
        idx = torch.tensor(ids, dtype=torch.int64, device=x.device)
        x = x[idx]
        y = None if y is None else y[idx]
        s0 = None if s0 is None else tuple(s[idx] for s in s0)
    if y is not None:  # stored even at β = 0, so checked even then
        field.cost.check_targets(y, x.shape[0])
    bound = field.bind(x, y, beta)
    cfg = config.replace(record=True, polish=0)
    method = get_method(cfg.method)  # before torchdiffeq's own message on a grid
    if times is None and not method.records_check_times:
        raise ValueError(f"method {cfg.method!r} steps every sample with its own step size, so "
                         "there are no common check times to record: pass a time grid "
                         "(times=...) or use exp_euler or a torchdiffeq method")
    if times is None:
        eq = relax(bound, s0, cfg)
        t, states = eq.trajectory.times, eq.trajectory.states
        quantities = _path_quantities(bound, states)
        stats = {"status": eq.status, "nfe": eq.nfe, "steps": eq.steps, "t_stop": eq.t}
        mode, message = "check_times", eq.message
    else:
        t = _check_times(times)
        path = method.on_grid(bound, s0, cfg, t)
        states = path.states
        quantities = _path_quantities(bound, states)
        status = _grid_status(states, quantities[1][-1], cfg)
        t_stop = (_stop_times(states, status, t, cfg.diverge_at) if path.t_diverged is None
                  else torch.where(status == int(Status.DIVERGED), path.t_diverged, t[-1]))
        stats = {"status": status, "nfe": path.nfe, "steps": path.steps, "t_stop": t_stop}
        mode, message = "time_grid", ""
    return _to_dataset(bound, t, states, quantities, stats, cfg, mode, message, ids)


def _check_samples(samples: Sequence[int] | Tensor, batch: int) -> list[int]:
    ids = samples.tolist() if torch.is_tensor(samples) else list(samples)
    ok = bool(ids) and all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                           and 0 <= i < batch for i in ids)
    if not ok or len(set(ids)) != len(ids):
        raise ValueError(f"samples must be a non-empty list of distinct integer indices in "
                         f"[0, {batch}), got {ids}")
    return [int(i) for i in ids]


def _check_times(times: Sequence[float] | Tensor) -> Tensor:
    try:
        t = torch.as_tensor(times, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"times must be a 1-D sequence of numbers: {err}") from None
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"times must be a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    bad = ~torch.isfinite(t) | (t < 0)
    if bool(bad.any()):
        raise ValueError(f"times must be finite and ≥ 0, got {float(t[bad][0])!r}")
    if t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        raise ValueError("times must be strictly increasing")
    return t


def _stop_times(states: States, status: Tensor, grid: Tensor, limit: float) -> Tensor:
    """The last grid time, or for a DIVERGED sample the first grid time at which its states are
    non-finite or beyond ``limit``."""
    k, b = states[0].shape[:2]
    m = per_sample_max_abs(tuple(s.reshape(k * b, *s.shape[2:]) for s in states)).reshape(k, b)
    bad = ~(m <= limit).cpu()  # NaN counts as beyond
    first = torch.argmax(bad.to(torch.int8), dim=0)
    t = torch.full((b,), float(grid[-1]), dtype=torch.float64)
    hit = (status == int(Status.DIVERGED)).cpu() & bad.any(dim=0)
    t[hit] = grid[first[hit]]
    return t


def _grid_status(states: States, residual: Tensor, cfg: RelaxConfig) -> Tensor:
    """Status at the last grid time from the states there and their ``residual`` ‖drive‖∞
    (the path's, :func:`path_quantities`): CONVERGED when the residual is ≤ tol, DIVERGED when
    the states or the residual are non-finite or the states beyond ``diverge_at``, else
    MAX_STEPS."""
    last = tuple(s[-1] for s in states)
    r = residual
    bad = ~per_sample_all_finite(last) | ~torch.isfinite(r) | (
        per_sample_max_abs(last) > cfg.diverge_at)
    status = torch.full(r.shape, int(Status.MAX_STEPS), dtype=torch.int8)
    status[(r <= cfg.tol) & ~bad] = int(Status.CONVERGED)
    status[bad] = int(Status.DIVERGED)
    return status


def path_quantities(field: VectorField, x: Tensor, y: Tensor | None, beta: float,
                    states: States, *, rows: int = 4096) -> PathQuantities:
    """The drive τ ⊙ ds/dt, the residual ‖drive‖∞ and F = E + β·ℓ at states of shape
    ``(K, B, *shape_l)``, evaluated in batches of about ``rows`` (time, sample) points."""
    k, b = states[0].shape[:2]
    step = max(1, rows // max(b, 1))
    drives, residuals, energies = [], [], []
    for start in range(0, k, step):
        n = min(step, k - start)
        flat = tuple(s[start:start + n].reshape(n * b, *s.shape[2:]) for s in states)
        xs = x.unsqueeze(0).expand(n, *x.shape).reshape(n * b, *x.shape[1:])
        ys = None if y is None else y.unsqueeze(0).expand(n, *y.shape).reshape(n * b,
                                                                             *y.shape[1:])
        bound = BoundField(field, xs, ys, beta)
        with torch.no_grad():
            d = bound.drive(flat)
            energies.append(field.total_energy(xs, flat, ys, beta).to(torch.float64)
                            .reshape(n, b))
        residuals.append(per_sample_max_abs(d).to(torch.float64).reshape(n, b))
        drives.append(tuple(v.reshape(n, b, -1) for v in d))
    drive = tuple(torch.cat([d[i] for d in drives]) for i in range(len(states)))
    return drive, torch.cat(residuals), torch.cat(energies)


def _path_quantities(bound: BoundField, states: States) -> PathQuantities:
    """:func:`path_quantities` of ``states`` under the field, inputs, targets and β of
    ``bound`` (a fresh bound field: ``bound.nfe`` keeps counting the relaxation only)."""
    return path_quantities(bound.field, bound.x, bound.y, float(bound.beta), states)


def _to_dataset(bound: BoundField, times: Tensor, states: States, quantities: PathQuantities,
                stats: dict, cfg: RelaxConfig, mode: str, message: str, sample_ids: list[int]):
    import xarray as xr

    from . import __version__

    field, x, y, beta = bound.field, bound.x, bound.y, float(bound.beta)
    drive, residual, energy = quantities
    k, b = states[0].shape[:2]
    data: dict = {}
    coords: dict = {"time": times.double().numpy(), "sample": sample_ids}
    attrs: dict = {}
    taus = field.tau()
    for i, (s, d, t) in enumerate(zip(states, drive, taus, strict=True), start=1):
        dim = f"neuron_{i}"
        coords[dim] = list(range(int(t.numel())))
        data[f"s_{i}"] = (("time", "sample", dim), _np(s.reshape(k, b, -1)))
        data[f"drive_{i}"] = (("time", "sample", dim), _np(d))
        data[f"tau_{i}"] = ((dim,), _np(t.detach().reshape(-1).double()))
        attrs[f"shape_{i}"] = json.dumps([int(v) for v in t.shape])
    data["residual"] = (("time", "sample"), _np(residual))
    data["energy"] = (("time", "sample"), _np(energy))
    data["status"] = (("sample",), _np(stats["status"].to(torch.int8)))
    data["nfe"] = (("sample",), _np(stats["nfe"].to(torch.int64)))
    data["steps"] = (("sample",), _np(stats["steps"].to(torch.int64)))
    data["t_stop"] = (("sample",), _np(stats["t_stop"].to(torch.float64)))
    data["x"] = (("sample", "input"), _np(x.reshape(b, -1)))
    if y is not None:
        data["target"] = (("sample",) + tuple(f"target_{j}" for j in range(y.dim() - 1)),
                          _np(y))
    energy_mod = field.energy
    attrs.update(
        mode=mode, method=cfg.method, tol=float(cfg.tol), beta=beta,
        dtype=str(states[0].dtype).removeprefix("torch."), ctep_version=__version__,
        energy=type(energy_mod).__name__, form=str(getattr(energy_mod, "form", "")),
        cost=type(field.cost).__name__, layers=len(states),
        input_shape=json.dumps([int(v) for v in x.shape[1:]]),
        relax_config=json.dumps(dataclasses.asdict(cfg)),
        status_names=json.dumps({s.name: int(s) for s in Status}), message=str(message))
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _np(t: Tensor):
    return t.detach().cpu().numpy()


def layer_states(ds, layer: int) -> Tensor:
    """States of ``layer`` (1-based) as a tensor ``(time, sample, *shape_l)``."""
    check_layer(ds, layer)
    shape = json.loads(ds.attrs[f"shape_{layer}"])
    v = torch.from_numpy(ds[f"s_{layer}"].values.copy())
    return v.reshape(v.shape[0], v.shape[1], *shape)


def check_layer(ds, layer: int) -> None:
    """Raise a clear error unless ``layer`` is a state layer of the recorded Dataset."""
    n = int(ds.attrs.get("layers", 0))
    if not (isinstance(layer, int) and 1 <= layer <= n):
        raise ValueError(f"layer must be one of 1..{n} (state layers, input excluded), "
                         f"got {layer!r}")


def save_dataset(ds, path: str | os.PathLike) -> pathlib.Path:
    """Write ``ds`` to netCDF (netCDF4 engine) at ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def load_dataset(path: str | os.PathLike):
    """Read a Dataset written by :func:`save_dataset` fully into memory (the file is closed
    again); dtypes are as written (float64 stays float64, ``status`` int8)."""
    import xarray as xr

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recorded dynamics at {path}")
    return xr.load_dataset(path, engine="netcdf4", decode_times=False)
