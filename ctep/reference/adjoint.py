"""Adjoint reference: torchdiffeq ``odeint_adjoint`` of the loss at the end of a long horizon.

The relaxation ds/dt = f(s, θ) = τ⁻¹ ⊙ drive(s, θ) is integrated from a θ-independent start
s(0) (the detached free equilibrium in the registered reference) to a horizon T, and the
gradient of the batch-mean loss ℓ̄(s(T)) is taken by the continuous adjoint method
(Pontryagin; Chen et al. 2018):

    a(T) = ∂ℓ̄/∂s(T),    da/dt = −(∂f/∂s)ᵀ a,    dL/dθ = ∫₀ᵀ aᵀ ∂f/∂θ dt,

all integrated backward in time by ``odeint_adjoint``. From the equilibrium (f(s*) = 0) the
integral equals ∂ℓ̄/∂s · ∫₀ᵀ e^{Jt} dt · ∂f/∂θ → −∂ℓ̄/∂s J⁻¹ ∂f/∂θ, the implicit gradient, with
a truncation error of order e^{−λ_min T}, where λ_min = min Re(−eig J) is the slowest decay rate
of the Jacobian J = ∂f/∂s at the fixed point (THEORY.md §4.1c). The default horizon is therefore
T = ``decay_times``/λ_min (20 e-folds: e^{−20} ≈ 2e-9).

**Windows.** ``odeint_adjoint`` reconstructs s(t) by integrating the forward field backward in
time from s(T). For a contracting flow that is expanding: any error (round-off, the residual of
s*, the local error of the solver) grows like e^{λ_max (T − t)}, with λ_max the fastest rate
(|eig J| up to (1 + ‖DW‖)/τ_min). One call over [0, T] is hopeless once λ_max·T ≫ 36 (measured
below: relative errors 0.1–0.3 on a tanh net with log-normal τ). So the horizon is cut into
windows of length Δ = ``window_factor``/λ_max: one ``odeint_adjoint`` call per window, chained
by autograd (each window's backward starts from its own saved end state), which bounds the
reconstruction blow-up by e^{window_factor} while the adjoint itself is still computed by
``odeint_adjoint``. ``windows=1`` gives the plain single call.

Measured (float64, 5-7-6-3 nets, batch 4, dopri5, seminorm, rtol = 100·atol; see
docs/verification.md): relative error to implicit differentiation 2e-9 (tanh, log-normal τ)
and 1e-10 (sigmoid, classical form) with the defaults, in about 2-3 s per call on one core.

The field must be smooth: clipped activations (hard sigmoid, ReLU6, ReLU-α) make f
non-differentiable at the box and the adjoint meaningless there; they are refused.
"""

from __future__ import annotations

import math

import torch
import torchdiffeq
from torch import Tensor

from .._linalg import batched_jacobian, checked_eigvals
from .._states import States
from ..dynamics import VectorField


def check_smooth(field: VectorField, what: str = "the adjoint reference") -> None:
    """Raise ``ValueError`` when the energy has clipped (non-smooth) activations."""
    bad = sorted({a.name for a in getattr(field.energy, "activations", ()) if not a.smooth})
    if bad:
        raise ValueError(f"{what} needs a smooth vector field; activation(s) {bad} are clipped "
                         "(non-differentiable at the box: reverse-time integration blows up). "
                         "Use tanh, sigmoid or identity, or the 'implicit' or 'bptt' reference")


def relaxation_rates(field: VectorField, x: Tensor, states: States) -> tuple[float, float]:
    """(λ_min, λ_max) of J = ∂(ds/dt)/∂s at ``states`` over the batch.

    λ_min = min over samples and eigenvalues of −Re λ (the slowest decay rate); λ_max = max |λ|
    (the fastest rate, which sets the stiffness). Raises ``ValueError`` when λ_min ≤ 0 (the
    point is not an asymptotically stable equilibrium, so no horizon converges).
    """
    bound = field.bind(x)
    jac = batched_jacobian(lambda s: bound(0.0, s), states)
    eig = checked_eigvals(jac.to(torch.complex128 if jac.dtype == torch.float64
                                 else torch.complex64))
    lam_min = float((-eig.real).min())
    lam_max = float(eig.abs().max())
    if not lam_min > 0:
        raise ValueError(f"the equilibrium is not asymptotically stable (slowest rate "
                         f"{lam_min:.3g} ≤ 0): no finite horizon gives the adjoint gradient")
    return lam_min, lam_max


def adjoint_gradient(field: VectorField, x: Tensor, y: Tensor, start: States, *,
                     horizon: float | None = None, decay_times: float = 20.0,
                     windows: int | None = None, window_factor: float = 8.0,
                     method: str = "dopri5", rtol: float = 1e-9, atol: float = 1e-11,
                     seminorm: bool = True, max_num_steps: int = 1_000_000,
                     rates: tuple[float, float] | None = None) -> tuple[Tensor, ...]:
    """∇θ ℓ̄(s(T)) of the batch-mean loss by ``torchdiffeq.odeint_adjoint`` from ``start``.

    Args:
        start: θ-independent initial states (detached here), e.g. the free equilibrium.
        horizon: T; default ``decay_times``/λ_min with λ_min from the Jacobian at ``start``
            (pass ``start`` = an equilibrium for that estimate to mean anything).
        windows: number of ``odeint_adjoint`` calls the horizon is cut into; default
            ⌈T·λ_max/``window_factor``⌉ (module docstring). 1 is the plain adjoint.
        method, rtol, atol: forward and adjoint solver settings (torchdiffeq's names).
        seminorm: leave the parameter integrals out of the adjoint's error control
            (``adjoint_options={"norm": "seminorm"}``: fewer steps, same accuracy measured).
        max_num_steps: step cap per call (never torchdiffeq's unbounded default).
        rates: (λ_min, λ_max) if already known (skips the eigenvalue computation).

    Returns:
        gradients aligned with ``field.learnable_parameters()`` (zeros where unused).
    """
    check_smooth(field)
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    start = tuple(s.detach() for s in start)
    if horizon is None or windows is None:
        lam_min, lam_max = rates if rates is not None else relaxation_rates(field, x, start)
        if horizon is None:
            horizon = decay_times / lam_min
        if windows is None:
            windows = max(1, math.ceil(horizon * lam_max / window_factor))
    if not (math.isfinite(horizon) and horizon > 0):
        raise ValueError(f"horizon must be positive and finite, got {horizon}")
    if int(windows) != windows or windows < 1:
        raise ValueError(f"windows must be a positive integer, got {windows}")
    with torch.enable_grad():  # the bound input term carries its graph to θ (the adjoint's
        bound = field.bind(x)  # vector-Jacobian products retain it)
    params = tuple(field.learnable_parameters())
    edges = torch.linspace(0.0, float(horizon), int(windows) + 1, dtype=torch.float64,
                           device=x.device)
    options = {"max_num_steps": max_num_steps}
    adjoint_options = {"max_num_steps": max_num_steps}
    if seminorm:
        adjoint_options["norm"] = "seminorm"
    with torch.enable_grad():  # the field may take autograd derivatives (phi_grad_autograd)
        s = start
        for k in range(int(windows)):
            sol = torchdiffeq.odeint_adjoint(
                bound, s, edges[k:k + 2], rtol=rtol, atol=atol, method=method,
                options=dict(options), adjoint_params=params, adjoint_rtol=rtol,
                adjoint_atol=atol, adjoint_method=method, adjoint_options=dict(adjoint_options))
            s = tuple(v[-1] for v in sol)
        loss = field.loss(s, y).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g.detach()
                 for p, g in zip(params, grads, strict=True))
