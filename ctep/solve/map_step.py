"""The discrete relaxation map s ← clamp(s + h ⊙ drive(s)), with its one step convention.

``fixed_point`` and ``anderson`` (:mod:`ctep.solve.relax`), the BPTT baseline
(:func:`ctep.train.baselines.unrolled`), the BPTT reference
(:func:`ctep.reference.bptt_gradient`) and the GDU check (:func:`ctep.reference.gdu_check`) all
step with the sizes of :func:`map_step_sizes` and the step of :func:`map_step`, so they iterate
the same map bit for bit:

* τ-free (``dt`` None): h = damping for every neuron, one unit of time per iteration;
* per neuron (``dt`` set): h_i = min(1, damping·dt/τ_i), forward Euler with step damping·dt on
  τ ⊙ ds/dt = drive, each neuron's step clipped at its plain-map update (docs/solvers.md).

This module imports nothing from :mod:`ctep.solve.relax`, so the references and the trainer can
use it without the solver loops.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._states import States
from ..dynamics import BoundField
from ..energies.base import Energy
from ..timeconstants import TimeConstants

#: the step of one layer: a float for every neuron, or a tensor shaped like its per-sample state
Step = float | Tensor


def per_neuron_steps(taus: tuple[Tensor, ...], dt: float, damping: float = 1.0
                     ) -> tuple[Tensor, ...]:
    """Steps of the discrete map with per-neuron time constants: h_i = min(1, damping·dt/τ_i).

    The map s ← s + h ⊙ drive(s) is then forward Euler with step damping·dt on
    τ ⊙ ds/dt = drive, clipped at h_i = 1: in the primitive form a unit step is the plain map
    s_i ← σ(∂Φ/∂s_i) for that neuron, and beyond 1 the step overshoots it. The clip comes after
    the damping, so neurons with damping·dt/τ_i ≥ 1 take the undamped step 1. Its fixed points
    are those of the flow for every τ; its stability needs λ_max(D_h^{1/2} H D_h^{1/2}) < 2
    (docs/solvers.md).
    """
    return tuple(torch.clamp((dt / t.detach()) * damping, max=1.0) for t in taus)


def map_step_sizes(tau: TimeConstants, damping: float = 1.0, dt: float | None = None,
                   method: str = "fixed_point") -> tuple[tuple[Step, ...], float]:
    """(h per layer, time per iteration) of the map: h = damping and time 1 when ``dt`` is None
    (τ-free), else h_i = min(1, damping·dt/τ_i) (:func:`per_neuron_steps`) and time damping·dt.

    Raises:
        ValueError: damping outside (0, 1], or ``dt`` not positive and finite; ``method`` names
            the caller in the message.
    """
    if not 0 < damping <= 1:
        raise ValueError(f"{method} damping must lie in (0, 1], got {damping}")
    if dt is None:  # τ-free: one scalar step for every neuron
        return (damping,) * tau.n_layers, 1.0
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"{method} dt must be positive and finite, got {dt}")
    h = per_neuron_steps(tuple(tau()), dt, damping)
    # every step exactly 1 (homogeneous τ with damping·dt ≥ τ): the plain map, as without dt
    h = tuple(1.0 if bool((hh == 1).all()) else hh for hh in h)
    return h, damping * dt


def is_unit(h: tuple[Step, ...]) -> bool:
    """Whether every layer's step is the float 1 (the plain map)."""
    return all(not torch.is_tensor(hh) and hh == 1 for hh in h)


def map_step(energy: Energy, s: States, d: States, h: tuple[Step, ...]) -> States:
    """One step of the map, clamp(s + h ⊙ d) with d = drive(s); a layer whose h is the float 1
    takes s + d (1·d is d: the product is skipped, the result is the same bit for bit)."""
    return energy.clamp(tuple(x + dd if not torch.is_tensor(hh) and hh == 1 else x + hh * dd
                              for x, hh, dd in zip(s, h, d, strict=True)))


def unroll(field: BoundField, s: States, h: tuple[Step, ...], steps: int) -> States:
    """The states after ``steps`` steps of the map from ``s`` (differentiable when the caller
    enables autograd: nothing is detached); with unit steps and a closed-form plain map
    (:meth:`~ctep.dynamics.BoundField.plain_map`) that map, as ``fixed_point`` iterates it."""
    plain = is_unit(h) and field.has_plain_map
    for _ in range(steps):
        s = field.plain_map(s) if plain else map_step(field.energy, s, field.drive(s), h)
    return s
