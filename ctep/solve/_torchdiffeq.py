"""The torchdiffeq adapter: every torchdiffeq method as a ctep relaxation method.

The only module of ctep that imports torchdiffeq's private names (its method table
``_impl.odeint.SOLVERS`` and ``FixedGridODESolver``, to tell fixed-grid methods, which take a
step size, from adaptive ones). A relaxation runs ``torchdiffeq.odeint`` over check windows,
taking converged samples out of the working batch between them (torchdiffeq shares one step
size across a batch, see docs/solvers.md); a recording on a time grid runs it once over the
whole batch.
"""

from __future__ import annotations

import math

import torch
import torchdiffeq
from torch import Tensor
from torchdiffeq._impl.odeint import SOLVERS  # the method table of odeint (no public name)
from torchdiffeq._impl.solvers import FixedGridODESolver

from .._states import States, per_sample_max_abs
from ..dynamics import BoundField
from ._book import Book, finish_samples, initial_states, restrict_field
from .config import RelaxConfig, default_tolerances
from .equilibrium import Equilibrium, GridPath, RelaxationError, Status

#: every method of torchdiffeq.odeint
TORCHDIFFEQ_METHODS = tuple(sorted(SOLVERS))
#: torchdiffeq's fixed-grid methods take a step size (dt) instead of tolerances
FIXED_GRID = tuple(m for m, cls in SOLVERS.items() if issubclass(cls, FixedGridODESolver))


def odeint_options(cfg: RelaxConfig, tau_min: float) -> dict:
    """torchdiffeq's ``options`` for ``cfg.method``: the step (default 0.5·τ_min) of a
    fixed-grid method; else the max norm over all states and samples and the step cap
    ``max_steps``."""
    if cfg.method in FIXED_GRID:
        if cfg.dt is not None and not (cfg.dt > 0 and math.isfinite(cfg.dt)):
            raise ValueError(f"{cfg.method} dt (its step) must be positive and finite, got "
                             f"{cfg.dt}")
        return {"step_size": cfg.dt if cfg.dt is not None else 0.5 * tau_min}
    if cfg.method == "scipy_solver":
        return {}
    return {"norm": max_norm, "max_num_steps": cfg.max_steps}


def relax_torchdiffeq(field: BoundField, s0: States, cfg: RelaxConfig) -> Equilibrium:
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
    book = Book(s0, cfg.record)
    idx = torch.arange(batch, device=s0[0].device)
    s = s0
    f = field
    t_now = 0.0
    message = ""
    # residual at the start: samples already at equilibrium stop here
    r = f.residual(s)
    book.nfe[idx] += 1
    keep = finish_samples(book, idx, s, r, cfg.tol, limit, 0.0)
    if cfg.record:
        book.write(idx[keep], tuple(x[keep] for x in s), r[keep], 0.0)
        book.snapshot(0.0)
    while True:
        if not bool(keep.all()):
            idx, s, r = idx[keep], tuple(x[keep] for x in s), r[keep]
            f = restrict_field(field, idx, batch)
        if not idx.numel() or t_now >= max_time:
            break
        t_next = min(t_now + window, max_time)
        if "step_size" in options:  # whole steps only
            n = max(1, math.ceil((t_next - t_now) / options["step_size"] - 1e-9))
            t_next = t_now + n * options["step_size"]
        func = Guarded(f, limit)
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
        keep = finish_samples(book, idx, s, r, cfg.tol, limit, t_now)
        if cfg.record:
            book.write(idx[keep], tuple(x[keep] for x in s), r[keep], t_now)
            book.snapshot(t_now)
        window *= cfg.window_growth
    if idx.numel():  # time cap reached: write what is left, status MAX_STEPS
        book.write(idx, s, r, t_now)
    return book.result(cfg.method, cfg.tol, message)


class Guarded:
    """ds/dt with samples beyond the divergence threshold frozen (so one exploding sample cannot
    break the shared step size); they are reported as diverged at the next check."""

    def __init__(self, field: BoundField, limit: float) -> None:
        self.field = field
        self.limit = limit

    def __call__(self, t: Tensor, states: States) -> States:
        out = self.field(t, states)
        ok = (per_sample_max_abs(states) <= self.limit).to(out[0].dtype)
        return tuple(o * ok.reshape(-1, *([1] * (o.dim() - 1))) for o in out)


def max_norm(tensors: States) -> Tensor:
    return torch.stack([t.abs().max() for t in tensors]).max()


def odeint_on_grid(bound: BoundField, s0: States | None, cfg: RelaxConfig,
                   grid: Tensor) -> GridPath:
    """``torchdiffeq.odeint`` over the whole batch with output at the grid times (the states
    clamped to the energy's box); a sample that diverges is frozen by :class:`Guarded`."""
    energy = bound.energy
    s0 = initial_states(bound, s0)
    tau_min = min(float((1 / it).min()) for it in bound.inv_tau)
    rtol, atol = default_tolerances(cfg)
    options = odeint_options(cfg, tau_min)
    prepend = float(grid[0]) > 0
    span = torch.cat([grid.new_zeros(1), grid]) if prepend else grid
    func = Guarded(bound, cfg.diverge_at)  # relax's guard: beyond diverge_at, frozen
    try:
        with torch.no_grad():
            sol = torchdiffeq.odeint(func, s0, span.to(s0[0].device), method=cfg.method,
                                     rtol=rtol, atol=atol, options=options)
    except (AssertionError, RuntimeError) as err:
        raise RelaxationError(f"torchdiffeq ({cfg.method}) failed on the time grid "
                              f"[0, {float(grid[-1]):g}]: {err}") from err
    states = tuple(s[1:] if prepend else s for s in sol)
    k, b = grid.numel(), s0[0].shape[0]
    flat = tuple(energy.clamp(tuple(s.reshape(k * b, *s.shape[2:]) for s in states)))
    states = tuple(s.reshape(k, b, *s.shape[1:]) for s in flat)
    nfe = torch.full((b,), bound.nfe, dtype=torch.int64)
    return GridPath(states, nfe, torch.full((b,), k, dtype=torch.int64))
