"""BPTT: differentiate the loss through an unrolled fixed-step relaxation.

The unroll starts from a θ-independent state (the detached free equilibrium in the registered
reference), so the gradient of ℓ(s_K) converges to the implicit one as K grows, like
ρ(I + h·J)^K (THEORY.md §4.1b). Measured: 2.8e-13 relative to implicit after 400 steps of the
map on a tanh net with log-normal τ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._states import States
from ..dynamics import VectorField
from ..solve.map_step import map_step_sizes, unroll


def bptt_gradient(field: VectorField, x: Tensor, y: Tensor, start: States, *, steps: int = 500,
                  damping: float = 1.0, dt: float | None = None) -> tuple[Tensor, ...]:
    """∇θ of the batch-mean ℓ(s_K) through K steps of s ← clamp(s + h ⊙ drive(s)) from
    ``start`` (detached), the steps of ``relax(method="fixed_point", dt=dt, damping=damping)``
    (:func:`~ctep.solve.map_step.map_step_sizes`): ``h = damping`` (the τ-free map; 1 is
    s ← σ(∂Φ/∂s)) or, with ``dt``, h_i = min(1, damping·dt/τ_i) (forward Euler of
    τ ds/dt = drive with step damping·dt, each neuron's step clipped at 1).
    """
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    h, _ = map_step_sizes(field.tau, damping, dt, "bptt")
    params = tuple(field.learnable_parameters())
    with torch.enable_grad():  # the bound input term carries its graph to θ, shared by all steps
        s = unroll(field.bind(x), tuple(t.detach() for t in start), h, steps)
        loss = field.loss(s, y).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g.detach()
                 for p, g in zip(params, grads, strict=True))

