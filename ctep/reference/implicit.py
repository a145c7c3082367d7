"""Implicit differentiation at the free fixed point (recurrent backprop, Almeida–Pineda).

At an equilibrium g(s*, θ) = 0 of the stationarity map g (= −∂E/∂s for gradient fields; τ
cancels), with Jacobian J = ∂g/∂s per sample:

    ds*/dθ = −J⁻¹ ∂g/∂θ,     dL/dθ = ∂ℓ/∂θ − μᵀ ∂g/∂θ,     Jᵀ μ = ∂ℓ/∂s.

For a gradient field J = −∂²E/∂s², so dL/dθ = ∂ℓ/∂θ − vᵀ ∂²E/∂s∂θ with H v = ∂ℓ/∂s. The last
step is one backward pass of ``ℓ(s*, θ) − μᵀ g(s*, θ)`` in θ with s* and μ held fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._linalg import batched_jacobian, checked_solve
from .._states import States, flatten_states, unflatten_states
from ..dynamics import VectorField

SOLVERS = ("dense", "iterative")


def implicit_gradient(field: VectorField, x: Tensor, y: Tensor, states: States, *,
                      solver: str = "dense", step: float = 0.5, tol: float = 1e-12,
                      max_iter: int = 100_000) -> tuple[Tensor, ...]:
    """dL/dθ of the batch-mean loss at the equilibrium ``states``, for
    ``field.learnable_parameters()``.

    Args:
        solver: ``"dense"`` (per-sample Jacobian and LU solve: small nets) or ``"iterative"``
            (matrix-free Richardson iteration μ ← μ + h(Jᵀμ − ∂ℓ/∂s), which converges when
            the equilibrium is stable and h is small enough; each step is one vector-Jacobian
            product).
        step, tol, max_iter: the iterative solver's h, tolerance on ‖Jᵀμ − ∂ℓ/∂s‖∞, cap.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown implicit solver {solver!r}; known: {', '.join(SOLVERS)}")
    with torch.enable_grad():  # the bound input term carries its graph to θ
        bound = field.bind(x, y, 0.0)
    states = tuple(s.detach() for s in states)
    batch = x.shape[0]
    with torch.enable_grad():
        s = tuple(t.clone().requires_grad_(True) for t in states)
        loss = field.loss(s, y)
        dl = torch.autograd.grad(loss.sum(), s, allow_unused=True)
    dl = tuple(torch.zeros_like(t) if d is None else d for t, d in zip(states, dl, strict=True))
    rhs = flatten_states(dl) / batch  # ∂(mean loss)/∂s
    if solver == "dense":
        jac = batched_jacobian(bound.stationarity, states)
        mu = checked_solve(jac.transpose(1, 2), rhs.unsqueeze(-1)).squeeze(-1)
    else:
        mu = _richardson(bound.stationarity, states, rhs, step, tol, max_iter)
    mu_states = unflatten_states(mu.detach(), field.energy.state_shapes)
    params = tuple(field.learnable_parameters())
    with torch.enable_grad():
        g = bound.stationarity(states)
        objective = field.loss(states, y).mean() - sum(
            (m * gi).sum() for m, gi in zip(mu_states, g, strict=True))
        grads = torch.autograd.grad(objective, params, allow_unused=True)
    return tuple(torch.zeros_like(p) if gr is None else gr.detach()
                 for p, gr in zip(params, grads, strict=True))


def _richardson(fn, states: States, rhs: Tensor, step: float, tol: float,
                max_iter: int) -> Tensor:
    with torch.enable_grad():
        s = tuple(t.detach().requires_grad_(True) for t in states)
        g = fn(s)
        mu = torch.zeros_like(rhs)
        shapes = tuple(t.shape[1:] for t in states)
        for _ in range(max_iter):
            vjp = torch.autograd.grad(g, s, grad_outputs=unflatten_states(mu, shapes),
                                      retain_graph=True)
            r = flatten_states(vjp) - rhs
            if float(r.abs().max()) <= tol:
                return mu
            mu = mu + step * r
    raise RuntimeError(f"implicit gradient: Richardson iteration did not reach {tol:g} in "
                       f"{max_iter} steps (residual {float(r.abs().max()):.3g}); the equilibrium "
                       "may be unstable or the step too large: use solver='dense'")
