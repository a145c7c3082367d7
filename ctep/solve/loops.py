"""ctep's fixed-step loops: the map s ← clamp(s + h ⊙ drive(s)) (``fixed_point``), its
Anderson acceleration (``anderson``) and exponential Euler (``exp_euler``), each sample stopped on
its own residual at the checks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._states import States, per_sample_max_abs
from ..dynamics import BoundField
from ._book import Book, finish_samples, initial_states, restrict_field
from .anderson import AndersonStep
from .config import RelaxConfig
from .equilibrium import Equilibrium, GridPath, RelaxationError
from .map_step import is_unit, map_step, map_step_sizes


def map_steps(field: BoundField, cfg: RelaxConfig) -> tuple[tuple, float]:
    """(h per layer, time per iteration) of the map that ``fixed_point`` iterates and
    ``anderson`` accelerates: :func:`~ctep.solve.map_step.map_step_sizes` of the config's
    damping and dt."""
    return map_step_sizes(field.field.tau, cfg.damping, cfg.dt, cfg.method)


def exp_euler_steps(field: BoundField, cfg: RelaxConfig) -> tuple[tuple, float]:
    """(h per layer, time per iteration) of exponential Euler: h = 1 − exp(−dt/τ), exact for
    the unit leak −s/τ, and time dt (default τ_min)."""
    tau_min = min(float((1 / it).min()) for it in field.inv_tau)
    dt = cfg.dt if cfg.dt is not None else tau_min
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    return tuple(-torch.expm1(-dt * it) for it in field.inv_tau), dt


#: how a loop method sizes its steps: ``(field, cfg) -> (h per layer, time per iteration)``
StepSizes = Callable[[BoundField, RelaxConfig], tuple[tuple, float]]


def relax_loop(field: BoundField, s0: States, cfg: RelaxConfig, *, steps: StepSizes,
               accelerate: bool = False) -> Equilibrium:
    """ctep's loops: s ← clamp(s + h ⊙ drive(s)) with (h, time per iteration) from ``steps``
    (``accelerate``: that map's Anderson-accelerated iteration), checked every
    ``check_every`` iterations."""
    energy = field.energy
    batch = s0[0].shape[0]
    h, time_per_step = steps(field, cfg)
    mixer = (AndersonStep(energy, h, s0, cfg.memory, cfg.anderson_reg, cfg.anderson_restart)
             if accelerate else None)
    # unit steps of the primitive form: each iteration is the plain map p = σ(∂Φ/∂s − n) and
    # the drive, needed at the checks only, is p − s (bit for bit the energy's drive)
    plain = mixer is None and is_unit(h) and field.has_plain_map
    book = Book(s0, cfg.record)
    idx = torch.arange(batch, device=s0[0].device)
    s = s0
    f = field
    check = cfg.check_every if cfg.check_every > 0 else cfg.max_steps + 1
    step = 0
    while True:
        # the map (or drive) at the state after `step` iterations (step + 1 evaluations)
        if plain:
            p = f.plain_map(s)
        else:
            d = f.drive(s)
        if step % check == 0 or step == cfg.max_steps:
            if plain:
                d = tuple(a - b for a, b in zip(p, s, strict=True))
            r = per_sample_max_abs(d)
            t = step * time_per_step
            keep = finish_samples(book, idx, s, r, cfg.tol, cfg.diverge_at, t, (step, step + 1))
            if step == cfg.max_steps:  # budget spent: whatever is left is written as it is
                book.write(idx[keep], tuple(x[keep] for x in s), r[keep], t, (step, step + 1))
                idx = idx[:0]
            else:
                if cfg.record:
                    book.write(idx[keep], tuple(x[keep] for x in s), r[keep], t)
                    book.snapshot(t)
                if not bool(keep.all()):
                    idx, s, d = idx[keep], tuple(x[keep] for x in s), tuple(x[keep] for x in d)
                    if plain:
                        p = tuple(x[keep] for x in p)
                    f = restrict_field(field, idx, batch)
                    if mixer is not None:
                        mixer.keep(keep)
            if not idx.numel():
                break
        if plain:
            s = p
        elif mixer is not None:
            s = mixer(s, d)
        else:
            s = map_step(energy, s, d, h)
        step += 1
    t_end = step * time_per_step
    if cfg.record and (not book.rec_t or book.rec_t[-1] != t_end):  # not already at a check
        book.snapshot(t_end)
    eq = book.result(cfg.method, cfg.tol)
    if mixer is not None:
        eq.extra["anderson_restarts"] = mixer.restarts()
    return eq


def loop_on_grid(bound: BoundField, s0: States | None, cfg: RelaxConfig, grid: Tensor, *,
                 steps: StepSizes, accelerate: bool = False) -> GridPath:
    """A loop method at tolerance 0 up to the last grid time, checked every iteration; its
    iterates at the grid times (each must be a whole number of iterations)."""
    step = steps(bound, cfg)[1]
    n = torch.round(grid / step)
    if not bool(torch.allclose(n * step, grid, rtol=1e-9, atol=1e-12)):
        raise ValueError(f"method {cfg.method!r} steps by {step:g}: every requested time must "
                         f"be a whole number of steps (got {grid.tolist()[:5]}...)")
    run = cfg.replace(tol=0.0, max_steps=max(int(n[-1]), 1), check_every=1, record=True)
    with torch.no_grad():
        eq = relax_loop(bound, initial_states(bound, s0), run, steps=steps, accelerate=accelerate)
    times, states = eq.trajectory.times, eq.trajectory.states
    pick = []
    for t in grid.tolist():
        hit = torch.nonzero(torch.isclose(times, torch.tensor(t, dtype=torch.float64),
                                          rtol=1e-9, atol=1e-12)).flatten()
        if hit.numel() == 0:
            raise RelaxationError(f"the {cfg.method} loop recorded no state at t = {t:g} "
                                  "(did the step size differ from the one assumed?)")
        pick.append(int(hit[-1]))
    return GridPath(tuple(s[pick] for s in states), eq.nfe, eq.steps, eq.t)
