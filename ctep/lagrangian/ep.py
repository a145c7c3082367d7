"""EP on the action (Lagrangian EP) and the implicit-differentiation reference of the same cost.

Objective: 𝓛(θ) = mean_b C[q_0(θ)], the cost of the free stationary trajectory. With
F = S + βC and q_β the stationary trajectory of F, the EP theorem (THEORY §0, §5) gives

    d𝓛/dθ = d/dβ|₀ ∂F/∂θ(θ, q_β, β),

so every finite-difference formula ĝ = Σ_k c_k ∂F/∂θ(q_{β_k}, β_k) of
:mod:`ctep.estimators` (one-sided: c = ±1/β; centered: ±1/(2β) at ±β) applies unchanged; the
phases and coefficients are taken from those estimator classes, and the relaxation is replaced
by Newton's method on ∂F/∂Q = 0 (:func:`ctep.lagrangian.solve.solve_trajectory`). Nudging
*adds* βC to the action, which for L = T − V is the potential V − βc: the nudge repels from the
target at β > 0, and attracts at β < 0; both are fine for a derivative in β.

Reference: with the Hessian H = ∂²S/∂Q² at q_0 and H λ = ∂C/∂Q,

    d𝓛/dθ = ∂C/∂θ − λᵀ ∂²S/∂Q∂θ = ∂_θ [C(Q, θ) − λᵀ ∂S/∂Q(Q, θ)]   (Q, λ held fixed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._linalg import batched_jacobian, checked_solve
from ..estimators import Estimate, Estimator, get_estimator
from .action import DiscreteAction
from .krylov import minres
from .solve import NewtonConfig, NewtonError, StationaryTrajectory, solve_trajectory

IMPLICIT_SOLVERS = ("dense", "minres")


class ActionEstimate(Estimate):
    """An :class:`~ctep.estimators.Estimate` of :func:`action_ep`: ``free`` and ``nudged`` hold
    :class:`StationaryTrajectory` results instead of equilibria."""


def action_loss(action: DiscreteAction, Q: Tensor, y: Tensor,
                ends: Tensor | None = None) -> Tensor:
    """C[q] per sample (no gradient)."""
    with torch.no_grad():
        return action.cost_value(Q, y, ends)


def action_ep(action: DiscreteAction, x: Tensor | None, y: Tensor, *,
              estimator: str | Estimator = "centered", beta: float = 1e-3,
              ends: Tensor | None = None, config: NewtonConfig | None = None,
              free: StationaryTrajectory | None = None, Q0: Tensor | None = None,
              on_failure: str = "raise") -> ActionEstimate:
    """EP estimate of d𝓛/dθ for the batch-mean cost of the free stationary trajectory.

    Args:
        estimator: a name (``"one-sided"``, ``"centered"``; aliases as in
            :func:`ctep.estimators.get_estimator`) or an Estimator instance, whose ``phases()``
            give the β_k and c_k (its relaxation settings are not used). Complex (holomorphic)
            phases are not supported.
        beta: β when ``estimator`` is a name.
        config: Newton settings of every phase.
        free: the free trajectory, when already solved; otherwise solved from ``Q0``.
        on_failure: ``"raise"`` (:class:`NewtonError` when a phase of any sample fails) or
            ``"mask"`` (those samples are left out of the batch average; see ``used``).
    """
    if on_failure not in ("raise", "mask"):
        raise ValueError(f"on_failure must be 'raise' or 'mask', got {on_failure!r}")
    est = get_estimator(estimator, beta) if isinstance(estimator, str) else estimator
    phases = est.phases()
    if any(isinstance(b, complex) or isinstance(c, complex) for b, c in phases):
        raise ValueError("complex (holomorphic) nudges are not supported on actions")
    cfg = config or NewtonConfig()
    if free is None:
        free = solve_trajectory(action, x, None, 0.0, ends=ends, Q0=Q0,
                                batch=None if x is not None else y.shape[0], config=cfg)
    action.check_targets(y, free.Q.shape[0])
    nudged = tuple(solve_trajectory(action, x, y, b, ends=ends, Q0=free.Q, config=cfg)
                   for b, _ in phases)
    ok = free.converged.clone()
    for ph in nudged:
        ok &= ph.converged
    if on_failure == "raise" and not bool(ok.all()):
        for ph in (free, *nudged):
            ph.check()
    if not bool(ok.any()):
        raise NewtonError("no sample has a stationary trajectory in every phase")
    used = ok.to(free.Q.dtype)
    params = tuple(action.learnable_parameters())
    c0 = -sum(c for _, c in phases)

    def fixed(Q: Tensor) -> Tensor:
        keep = ok.reshape(-1, 1, 1)
        return torch.where(keep, Q.detach(), torch.zeros_like(Q))

    with torch.enable_grad():
        total = c0 * action.total(fixed(free.Q), x, None, 0.0, ends) if abs(c0) > 1e-12 * max(
            abs(c) for _, c in phases) else 0.0
        for (b, c), ph in zip(phases, nudged, strict=True):
            total = total + c * action.total(fixed(ph.Q), x, y, b, ends)
        objective = (total * used).sum() / used.sum()
        grads = torch.autograd.grad(objective, params, allow_unused=True)
    grads = tuple(torch.zeros_like(p) if g is None else g.detach()
                  for p, g in zip(params, grads, strict=True))
    loss = action_loss(action, free.Q, y, ends)
    return ActionEstimate(grads, params, free, nudged, tuple(b for b, _ in phases), loss,
                          ok, {"estimator": est.name, "beta": est.beta})


def implicit_action_gradient(action: DiscreteAction, x: Tensor | None, y: Tensor,
                             free: StationaryTrajectory | Tensor, *, ends: Tensor | None = None,
                             solver: str = "dense", tol: float = 1e-13,
                             max_iter: int | None = None) -> tuple[Tensor, ...]:
    """d𝓛/dθ of the batch-mean cost at the free stationary trajectory, by implicit
    differentiation (aligned with ``action.learnable_parameters()``).

    Args:
        free: the free trajectory (or its unknowns Q).
        solver: ``"dense"`` (LU of each sample's Hessian) or ``"minres"`` (Hessian-vector
            products; ``tol`` relative, ``max_iter`` cap).
    """
    if solver not in IMPLICIT_SOLVERS:
        raise ValueError(f"unknown implicit solver {solver!r}; known: "
                         f"{', '.join(IMPLICIT_SOLVERS)}")
    Q = (free.Q if isinstance(free, StationaryTrajectory) else free).detach()
    action.check_unknowns(Q)
    b = Q.shape[0]
    action.check_drive(x, b)
    action.check_targets(y, b)
    e = action._ends(ends, b, Q)
    with torch.enable_grad():
        q = Q.clone().requires_grad_(True)
        dc, = torch.autograd.grad(action.cost_value(q, y, e).sum(), q)
    rhs = dc.reshape(b, -1) / b  # ∂(mean cost)/∂Q
    if solver == "dense":
        hes = batched_jacobian(
            lambda s: (action.stationarity(s[0].reshape(Q.shape), x, None, 0.0, e)
                       .reshape(b, -1),), (Q.reshape(b, -1),))
        lam = checked_solve(hes, rhs.unsqueeze(-1)).squeeze(-1)
    else:
        with torch.enable_grad():
            q = Q.clone().requires_grad_(True)
            g = action.stationarity(q, x, None, 0.0, e, create_graph=True).reshape(b, -1)

            def matvec(v: Tensor) -> Tensor:
                out, = torch.autograd.grad(g, q, grad_outputs=v, retain_graph=True)
                return out.reshape(b, -1)

            res = minres(matvec, rhs, tol=tol, max_iter=max_iter)
        if not bool(res.converged.all()):
            raise RuntimeError(f"implicit gradient: MINRES reached relative residual "
                               f"{float(res.residual.max()):.3g} > {tol:g}; the Hessian may "
                               "be singular (resonance): try solver='dense'")
        lam = res.solution
    lam = lam.detach().reshape(Q.shape)
    params = tuple(action.learnable_parameters())
    with torch.enable_grad():
        gs = action.stationarity(Q, x, None, 0.0, e, create_graph=True)
        objective = action.cost_value(Q, y, e).mean() - (lam * gs).sum()
        grads = torch.autograd.grad(objective, params, allow_unused=True)
    return tuple(torch.zeros_like(p) if gr is None else gr.detach()
                 for p, gr in zip(params, grads, strict=True))

