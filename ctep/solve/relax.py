"""Relaxation to equilibrium: ctep's batched loops, torchdiffeq in check windows, Newton polish.

Every method stops each sample on its own residual ‖τ ⊙ ds/dt‖∞ ≤ tol: converged samples are
taken out of the working batch at each check, so a stiff sample costs only its own evaluations
and no sample's result depends on the others' (torchdiffeq shares one step size across a batch:
SOLVER_NOTES.md §1). Nothing here is differentiated: references unroll their own graphs.
"""

from __future__ import annotations

import math

import torch
import torchdiffeq
from torch import Tensor
from torchdiffeq._impl.odeint import SOLVERS  # the method table of odeint (no public name)
from torchdiffeq._impl.solvers import FixedGridODESolver

from .._linalg import batched_jacobian, checked_solve
from .._states import (
    States,
    flatten_states,
    per_sample_max_abs,
    unflatten_states,
)
from ..dynamics import BoundField
from .anderson import AndersonStep
from .config import ADAPTIVE_METHODS, LOOP_METHODS, MAP_METHODS, RelaxConfig
from .equilibrium import Equilibrium, Status, Trajectory

TORCHDIFFEQ_METHODS = tuple(sorted(SOLVERS))
#: torchdiffeq's fixed-grid methods take a step size (dt) instead of tolerances
_FIXED_GRID = tuple(m for m, cls in SOLVERS.items() if issubclass(cls, FixedGridODESolver))


def available_methods() -> tuple[str, ...]:
    """Every method name :func:`relax` accepts."""
    return LOOP_METHODS + TORCHDIFFEQ_METHODS


def relax(field: BoundField, s0: States | None = None, config: RelaxConfig | None = None,
          **overrides) -> Equilibrium:
    """Integrate ``field`` from ``s0`` (zeros by default) until every sample's residual is ≤ tol.

    Args:
        field: a vector field bound to a batch (``VectorField.bind(x, y, beta)``).
        s0: initial states (a warm start), or None for the energy's zero states.
        config: a :class:`RelaxConfig`; keyword ``overrides`` replace its fields.

    Returns:
        An :class:`Equilibrium` with a status per sample; it never raises for a sample that
        diverges or does not converge (call :meth:`Equilibrium.check` for that).
    """
    cfg = (config or RelaxConfig()).replace(**overrides)
    if cfg.method not in available_methods():
        raise ValueError(f"unknown relaxation method {cfg.method!r}; known: "
                         f"{', '.join(available_methods())}")
    if not (cfg.tol >= 0 and math.isfinite(cfg.tol)):
        raise ValueError(f"tol must be finite and ≥ 0, got {cfg.tol}")
    if cfg.max_steps < 1:
        raise ValueError(f"max_steps must be ≥ 1, got {cfg.max_steps}")
    s0 = initial_states(field, s0)
    with torch.no_grad():
        if cfg.method in ADAPTIVE_METHODS:
            from .adaptive import relax_adaptive  # adaptive.py imports this module's _Book

            eq = relax_adaptive(field, s0, cfg)
        elif cfg.method in LOOP_METHODS:
            eq = _relax_loop(field, s0, cfg)
        else:
            eq = _relax_torchdiffeq(field, s0, cfg)
    if cfg.polish > 0:
        eq = newton_polish(field, eq, cfg.polish)
    return eq


def initial_states(field: BoundField, s0: States | None = None) -> States:
    """The starting states of a relaxation: the energy's zero states (in its parameters' dtype,
    else the input's) when ``s0`` is None, else a checked copy of ``s0``; detached and projected
    onto the energy's box."""
    energy = field.energy
    batch = field.x.shape[0]
    if s0 is None:
        dtype = field.x.dtype if field.x.is_floating_point() else None
        p = next(iter(energy.parameters()), None)
        dtype = p.dtype if p is not None else dtype
        s0 = energy.init_states(batch, dtype=dtype, device=field.x.device)
    else:
        s0 = tuple(s0)
        energy.check_states(s0)
        if s0[0].shape[0] != batch:
            raise ValueError(f"initial states have batch {s0[0].shape[0]}, inputs have {batch}")
    with torch.no_grad():
        return energy.clamp(tuple(s.detach().clone() for s in s0))


def default_tolerances(cfg: RelaxConfig) -> tuple[float, float]:
    """(rtol, atol) of the error-controlled methods (torchdiffeq's, ``rk23``, ``etd2``): the
    config's, or rtol = min(1e-3, tol) and atol = tol/10, floored at 1e-13 and 1e-15."""
    rtol = cfg.rtol if cfg.rtol is not None else min(1e-3, max(cfg.tol, 1e-13))
    atol = cfg.atol if cfg.atol is not None else max(0.1 * cfg.tol, 1e-15)
    return rtol, atol


def odeint_options(cfg: RelaxConfig, tau_min: float) -> dict:
    """torchdiffeq's ``options`` for ``cfg.method``: the step (default 0.5·τ_min) of a
    fixed-grid method; else the max norm (SOLVER_NOTES §2) and the step cap ``max_steps``."""
    if cfg.method in _FIXED_GRID:
        return {"step_size": cfg.dt if cfg.dt is not None else 0.5 * tau_min}
    if cfg.method == "scipy_solver":
        return {}
    return {"norm": _max_norm, "max_num_steps": cfg.max_steps}


class _Book:
    """Per-sample bookkeeping shared by the loop and ODE paths (full-batch outputs)."""

    def __init__(self, s0: States, record: bool) -> None:
        batch = s0[0].shape[0]
        dev = s0[0].device
        self.states = tuple(s.clone() for s in s0)
        self.residual = torch.full((batch,), math.inf, dtype=torch.float64, device=dev)
        self.status = torch.full((batch,), int(Status.MAX_STEPS), dtype=torch.int8, device=dev)
        self.t = torch.zeros(batch, dtype=torch.float64, device=dev)
        self.nfe = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.steps = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.record = record
        self.rec_t: list[float] = []
        self.rec_s: list[States] = []
        self.rec_r: list[Tensor] = []

    def write(self, idx: Tensor, states: States, residual: Tensor, t: float,
              count: tuple[int, int] | None = None) -> None:
        """Store samples ``idx``; ``count = (steps, nfe)`` sets their counters (loops)."""
        for full, part in zip(self.states, states, strict=True):
            full[idx] = part
        self.residual[idx] = residual.to(torch.float64)
        self.t[idx] = t
        if count is not None:
            self.steps[idx] = count[0]
            self.nfe[idx] = count[1]

    def snapshot(self, t: float) -> None:
        if self.record:
            self.rec_t.append(t)
            self.rec_s.append(tuple(s.clone() for s in self.states))
            self.rec_r.append(self.residual.clone())

    def result(self, method: str, tol: float, message: str = "") -> Equilibrium:
        traj = None
        if self.record and self.rec_t:
            traj = Trajectory(
                times=torch.tensor(self.rec_t, dtype=torch.float64),
                states=tuple(torch.stack([s[k] for s in self.rec_s])
                             for k in range(len(self.states))),
                residual=torch.stack(self.rec_r))
        return Equilibrium(self.states, self.residual, self.status, self.t, self.nfe,
                           self.steps, method, tol, traj, message)


def _finish(book: _Book, idx: Tensor, states: States, r: Tensor, tol: float, limit: float,
            t: float | Tensor, count: tuple[int, int] | None = None) -> Tensor:
    """Classify the working samples; write the finished ones; return the mask of those left.
    ``t`` is one time for all, or one per working sample (the adaptive integrators)."""
    # max |s| per sample is NaN or ±inf when any entry is (amax propagates NaN), or it is
    # > limit anyway: one pass over the states decides both tests
    m = per_sample_max_abs(states)
    finite = torch.isfinite(r) & torch.isfinite(m)
    big = m > limit
    diverged = ~finite | big
    done = (r <= tol) & ~diverged
    finished = done | diverged
    if bool(finished.any()):
        fi = idx[finished]
        book.write(fi, tuple(s[finished] for s in states), r[finished],
                   t[finished] if torch.is_tensor(t) else t, count)
        book.status[idx[done]] = int(Status.CONVERGED)
        book.status[idx[diverged]] = int(Status.DIVERGED)
    return ~finished


def _sub_field(field: BoundField, idx: Tensor, full_batch: int) -> BoundField:
    """The same field restricted to samples ``idx`` (:meth:`BoundField.restrict`: its input term
    and targets cut to those rows, nothing recomputed or re-checked)."""
    return field if idx.numel() == full_batch else field.restrict(idx)


def per_neuron_steps(taus: tuple[Tensor, ...], dt: float, damping: float = 1.0
                     ) -> tuple[Tensor, ...]:
    """Steps of the discrete map with per-neuron time constants: h_i = min(1, damping·dt/τ_i).

    The map s ← s + h ⊙ drive(s) is then forward Euler with step damping·dt on
    τ ⊙ ds/dt = drive, clipped at h_i = 1: in the primitive form a unit step is the plain map
    s_i ← σ(∂Φ/∂s_i) for that neuron, and beyond 1 the step overshoots it. The clip comes after
    the damping, so neurons with damping·dt/τ_i ≥ 1 take the undamped step 1. Its fixed points
    are those of the flow for every τ; its stability needs λ_max(D_h^{1/2} H D_h^{1/2}) < 2
    (THEORY §2.1).
    """
    return tuple(torch.clamp((dt / t.detach()) * damping, max=1.0) for t in taus)


def loop_steps(field: BoundField, cfg: RelaxConfig) -> tuple[tuple, float]:
    """(h per layer, time per iteration) of a loop method: ``fixed_point`` (and the map that
    ``anderson`` accelerates) h = damping and time 1
    (τ-free), or with ``dt`` h_i = min(1, damping·dt/τ_i) and time damping·dt; ``exp_euler``
    h = 1 − exp(−dt/τ) and time dt (default τ_min)."""
    if cfg.method in MAP_METHODS:
        if not 0 < cfg.damping <= 1:
            raise ValueError(f"{cfg.method} damping must lie in (0, 1], got {cfg.damping}")
        if cfg.dt is None:  # τ-free: one scalar step for every neuron
            h: tuple = (cfg.damping,) * len(field.inv_tau)
            time_per_step = 1.0
        else:  # per-neuron steps h_i = min(1, damping·dt/τ_i) (THEORY §2.1)
            if not (cfg.dt > 0 and math.isfinite(cfg.dt)):
                raise ValueError(f"{cfg.method} dt must be positive and finite, got {cfg.dt}")
            h = per_neuron_steps(tuple(field.field.tau()), cfg.dt, cfg.damping)
            time_per_step = cfg.damping * cfg.dt  # an Euler step of damping·dt in time
    else:  # exp_euler: h = 1 − exp(−dt/τ), exact for the unit leak
        tau_min = min(float((1 / it).min()) for it in field.inv_tau)
        dt = cfg.dt if cfg.dt is not None else tau_min
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        h = tuple(-torch.expm1(-dt * it) for it in field.inv_tau)
        time_per_step = dt
    return h, time_per_step


def _relax_loop(field: BoundField, s0: States, cfg: RelaxConfig) -> Equilibrium:
    """ctep's loops: s ← clamp(s + h ⊙ drive(s)) (``anderson``: that map's Anderson-accelerated
    iteration), checked every ``check_every`` iterations."""
    energy = field.energy
    batch = s0[0].shape[0]
    h, time_per_step = loop_steps(field, cfg)
    unit_step = tuple(not torch.is_tensor(hh) and hh == 1 for hh in h)
    mixer = (AndersonStep(energy, h, s0, cfg.memory, cfg.anderson_reg, cfg.anderson_restart)
             if cfg.method == "anderson" else None)
    book = _Book(s0, cfg.record)
    idx = torch.arange(batch, device=s0[0].device)
    s = s0
    f = field
    check = cfg.check_every if cfg.check_every > 0 else cfg.max_steps + 1
    step = 0
    while True:
        d = f.drive(s)  # drive at the state after `step` iterations (step + 1 evaluations)
        if step % check == 0 or step == cfg.max_steps:
            r = per_sample_max_abs(d)
            t = step * time_per_step
            if step == cfg.max_steps:  # budget spent: whatever is left is written as it is
                keep = _finish(book, idx, s, r, cfg.tol, cfg.diverge_at, t, (step, step + 1))
                book.write(idx[keep], tuple(x[keep] for x in s), r[keep], t, (step, step + 1))
                idx = idx[:0]
            else:
                keep = _finish(book, idx, s, r, cfg.tol, cfg.diverge_at, t, (step, step + 1))
                if cfg.record:
                    book.write(idx[keep], tuple(x[keep] for x in s), r[keep], t)
                    book.snapshot(t)
                if not bool(keep.all()):
                    idx, s, d = idx[keep], tuple(x[keep] for x in s), tuple(x[keep] for x in d)
                    f = _sub_field(field, idx, batch)
                    if mixer is not None:
                        mixer.keep(keep)
            if not idx.numel():
                break
        if mixer is not None:
            s = mixer(s, d)
        else:
            s = energy.clamp(tuple(x + dd if unit else x + hh * dd  # 1·d is d: skip the product
                                   for x, hh, dd, unit in zip(s, h, d, unit_step, strict=True)))
        step += 1
    t_end = step * time_per_step
    if cfg.record and (not book.rec_t or book.rec_t[-1] != t_end):  # not already at a check
        book.snapshot(t_end)
    eq = book.result(cfg.method, cfg.tol)
    if mixer is not None:
        eq.extra["anderson_restarts"] = mixer.restarts()
    return eq


def _relax_torchdiffeq(field: BoundField, s0: States, cfg: RelaxConfig) -> Equilibrium:
    """torchdiffeq over check windows; converged samples leave the working batch between them."""
    energy = field.energy
    batch = s0[0].shape[0]
    taus = [1 / it for it in field.inv_tau]
    tau_max = max(float(t.max()) for t in taus)
    tau_min = min(float(t.min()) for t in taus)
    max_time = cfg.max_time if cfg.max_time is not None else 500.0 * tau_max
    window = cfg.window if cfg.window is not None else tau_max
    if not (max_time > 0 and window > 0 and cfg.window_growth >= 1):
        raise ValueError("max_time and window must be positive and window_growth ≥ 1")
    options = odeint_options(cfg, tau_min)
    rtol, atol = default_tolerances(cfg)
    limit = cfg.diverge_at
    book = _Book(s0, cfg.record)
    idx = torch.arange(batch, device=s0[0].device)
    s = s0
    f = field
    t_now = 0.0
    message = ""
    # residual at the start: samples already at equilibrium stop here
    r = f.residual(s)
    book.nfe[idx] += 1
    keep = _finish(book, idx, s, r, cfg.tol, limit, 0.0)
    if cfg.record:
        book.write(idx[keep], tuple(x[keep] for x in s), r[keep], 0.0)
        book.snapshot(0.0)
    while True:
        if not bool(keep.all()):
            idx, s, r = idx[keep], tuple(x[keep] for x in s), r[keep]
            f = _sub_field(field, idx, batch)
        if not idx.numel() or t_now >= max_time:
            break
        t_next = min(t_now + window, max_time)
        if "step_size" in options:  # whole steps only
            n = max(1, math.ceil((t_next - t_now) / options["step_size"] - 1e-9))
            t_next = t_now + n * options["step_size"]
        func = _Guarded(f, limit)
        nfe_before = f.nfe
        span = torch.tensor([t_now, t_next], dtype=torch.float64, device=s[0].device)
        try:
            sol = torchdiffeq.odeint(func, s, span, method=cfg.method, rtol=rtol,
                                     atol=atol, options=dict(options))
        except (AssertionError, RuntimeError) as err:
            message = f"torchdiffeq stopped in window [{t_now:g}, {t_next:g}]: {err}"
            book.write(idx, s, f.residual(s), t_now)
            book.status[idx] = int(Status.SOLVER_FAILED)
            idx = idx[:0]
            break
        s = energy.clamp(tuple(x[-1] for x in sol))
        r = f.residual(s)
        book.nfe[idx] += f.nfe - nfe_before
        book.steps[idx] += 1
        t_now = t_next
        keep = _finish(book, idx, s, r, cfg.tol, limit, t_now)
        if cfg.record:
            book.write(idx[keep], tuple(x[keep] for x in s), r[keep], t_now)
            book.snapshot(t_now)
        window *= cfg.window_growth
    if idx.numel():  # time cap reached: write what is left, status MAX_STEPS
        book.write(idx, s, r, t_now)
    return book.result(cfg.method, cfg.tol, message)


class _Guarded:
    """ds/dt with samples beyond the divergence threshold frozen (so one exploding sample cannot
    break the shared step size); they are reported as diverged at the next check."""

    def __init__(self, field: BoundField, limit: float) -> None:
        self.field = field
        self.limit = limit

    def __call__(self, t: Tensor, states: States) -> States:
        out = self.field(t, states)
        ok = (per_sample_max_abs(states) <= self.limit).to(out[0].dtype)
        return tuple(o * ok.reshape(-1, *([1] * (o.dim() - 1))) for o in out)


def _max_norm(tensors: States) -> Tensor:
    return torch.stack([t.abs().max() for t in tensors]).max()


def newton_polish(field: BoundField, eq: Equilibrium, steps: int) -> Equilibrium:
    """Newton steps s ← s − J⁻¹ g(s) on the stationarity map g, per sample (dense J).

    ``nfe`` grows by the field evaluations only (2 per step + 1); the n vector-Jacobian products
    that assemble each J are not counted.

    Samples that diverged or failed are left alone; the residual and status are recomputed
    (a sample whose residual falls below tol becomes CONVERGED).
    """
    ok = (eq.status == Status.CONVERGED) | (eq.status == Status.MAX_STEPS)
    if not bool(ok.any()):
        return eq
    idx = torch.nonzero(ok).flatten()
    f = _sub_field(field, idx, eq.status.numel())
    s = tuple(x[idx] for x in eq.states)
    shapes = field.energy.state_shapes
    for _ in range(steps):
        jac = batched_jacobian(f.stationarity, s)
        with torch.no_grad():
            g = flatten_states(f.stationarity(s))
            delta = checked_solve(jac, g.unsqueeze(-1)).squeeze(-1)
            s = field.energy.clamp(unflatten_states(flatten_states(s) - delta, shapes))
    with torch.no_grad():
        r = f.residual(s)
    states = tuple(x.clone() for x in eq.states)
    for full, part in zip(states, s, strict=True):
        full[idx] = part
    residual = eq.residual.clone()
    residual[idx] = r.to(residual.dtype)
    status = eq.status.clone()
    status[idx] = torch.where(r <= eq.tol, int(Status.CONVERGED), int(Status.MAX_STEPS)).to(
        status.dtype)
    nfe = eq.nfe.clone()
    nfe[idx] += 2 * steps + 1
    return Equilibrium(states, residual, status, eq.t, nfe, eq.steps, eq.method, eq.tol,
                       eq.trajectory, eq.message, {**eq.extra, "newton_steps": steps})
