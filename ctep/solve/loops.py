"""ctep's fixed-step loops: the map s ← clamp(s + h ⊙ drive(s)) (``fixed_point``), its
Anderson acceleration (``anderson``) and exponential Euler (``exp_euler``), each sample stopped on
its own residual at the checks."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._states import States, per_sample_max_abs
from ..dynamics import BoundField
from ._book import Book, finish_samples, initial_states, restrict_field
from .anderson import AndersonStep
from .config import RelaxConfig
from .equilibrium import Equilibrium, GridPath, RelaxationError


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


def map_steps(field: BoundField, cfg: RelaxConfig) -> tuple[tuple, float]:
    """(h per layer, time per iteration) of the map s ← clamp(s + h ⊙ drive(s)) that
    ``fixed_point`` iterates and ``anderson`` accelerates: h = damping and time 1 (τ-free), or
    with ``dt`` h_i = min(1, damping·dt/τ_i) and time damping·dt (an Euler step of damping·dt
    on τ ⊙ ds/dt = drive, THEORY §2.1)."""
    if not 0 < cfg.damping <= 1:
        raise ValueError(f"{cfg.method} damping must lie in (0, 1], got {cfg.damping}")
    if cfg.dt is None:  # τ-free: one scalar step for every neuron
        return (cfg.damping,) * len(field.inv_tau), 1.0
    if not (cfg.dt > 0 and math.isfinite(cfg.dt)):
        raise ValueError(f"{cfg.method} dt must be positive and finite, got {cfg.dt}")
    return (per_neuron_steps(tuple(field.field.tau()), cfg.dt, cfg.damping),
            cfg.damping * cfg.dt)


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
    unit_step = tuple(not torch.is_tensor(hh) and hh == 1 for hh in h)
    mixer = (AndersonStep(energy, h, s0, cfg.memory, cfg.anderson_reg, cfg.anderson_restart)
             if accelerate else None)
    book = Book(s0, cfg.record)
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
                keep = finish_samples(book, idx, s, r, cfg.tol, cfg.diverge_at, t, (step, step + 1))
                book.write(idx[keep], tuple(x[keep] for x in s), r[keep], t, (step, step + 1))
                idx = idx[:0]
            else:
                keep = finish_samples(book, idx, s, r, cfg.tol, cfg.diverge_at, t, (step, step + 1))
                if cfg.record:
                    book.write(idx[keep], tuple(x[keep] for x in s), r[keep], t)
                    book.snapshot(t)
                if not bool(keep.all()):
                    idx, s, d = idx[keep], tuple(x[keep] for x in s), tuple(x[keep] for x in d)
                    f = restrict_field(field, idx, batch)
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
