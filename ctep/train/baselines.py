"""Backprop baselines on the same architecture: a feedforward pass, and BPTT through relaxation.

* **BP**: the network's layers as a feedforward net, r_l = σ_l(W_{l−1} r_{l−1} + b_{l−1}) with
  r_0 = x (no feedback from the layers above), trained by backprop on ℓ(r_L, y).
* **BPTT**: the loss ℓ(s_T, y) after T steps of the relaxation map s ← clamp(s + h·drive(s))
  from zero states (h = the damping, or h_i = min(1, damping·dt/τ_i) per neuron with ``dt``, as
  ``fixed_point`` does), differentiated through all T steps (Ernoult et al. 2019's
  BPTT baseline: what EP approximates with the same T).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._states import States
from ..dynamics import VectorField
from ..energies import DenseHopfield
from ..solve.map_step import map_step_sizes, unroll


def feedforward(field: VectorField, x: Tensor) -> States:
    """The feedforward pass of a dense net (a differentiable graph in θ)."""
    energy = field.energy
    if not isinstance(energy, DenseHopfield):
        raise ValueError(f"the BP baseline needs a dense model, got {type(energy).__name__}")
    r = x
    out = []
    for w, b, act in zip(energy.weights, energy.biases, energy.activations, strict=True):
        r = act(torch.addmm(b, r, w.T))  # one fused product and bias, as nn.Linear
        out.append(r)
    return tuple(out)


def unrolled(field: VectorField, x: Tensor, steps: int, damping: float = 1.0,
             dt: float | None = None) -> States:
    """States after ``steps`` steps of the free relaxation map from zeros, with the graph kept
    (the steps of :func:`~ctep.solve.map_step.map_step_sizes`: h = ``damping``, τ-free, or with
    ``dt`` the per-neuron h_i = min(1, damping·dt/τ_i), exactly as ``fixed_point`` steps)."""
    if steps < 1:
        raise ValueError(f"BPTT needs at least one step, got {steps}")
    h, _ = map_step_sizes(field.tau, damping, dt, "bptt")
    energy = field.energy
    p = next(iter(energy.parameters()))
    s = energy.init_states(x.shape[0], dtype=p.dtype, device=x.device)
    return unroll(field.bind(x), s, h, steps)
