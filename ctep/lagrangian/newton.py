"""Batched Newton root finding for per-sample maps g(z) = 0 (stationary points, not minima).

A stationary point of an action or of a skew-gradient H is usually a saddle, so it cannot be
found by descent. Newton's method finds it from a close enough start:

    z ← z − α J⁻¹ g(z),     J = ∂g/∂z,

with a backtracking line search on the merit ½‖g‖² (α = 1, ½, ¼, ... until
‖g(z − αδ)‖ < (1 − 10⁻⁴α)‖g(z)‖; the Newton direction δ = J⁻¹g is a descent direction of that
merit for any invertible J, definite or not). The linear solve is either dense (LU of the
per-sample Jacobian, built from n vector-Jacobian products) or matrix-free MINRES with
Jacobian-vector products (J must be symmetric then, e.g. a Hessian).

Every sample has its own status (:class:`ctep.solve.Status` codes):

- ``CONVERGED``: residual ‖g‖∞·scale ≤ tol;
- ``MAX_STEPS``: the iteration cap was reached first;
- ``DIVERGED``: non-finite values or |z| beyond ``diverge_at``;
- ``SOLVER_FAILED``: the linear solve failed (singular Jacobian, MINRES did not converge) or
  no step along the Newton direction decreased the residual (stalled).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._linalg import batched_jacobian, checked_solve_ex
from ..solve import Status
from .krylov import minres

#: g(z, idx): the map for the samples ``idx`` of the batch, ``(b, n) -> (b, n)``; it must be
#: differentiable in z when z requires grad (dense Jacobians and Jacobian-vector products).
RootMap = Callable[[Tensor, Tensor], Tensor]

LINEAR_SOLVERS = ("dense", "minres")


@dataclass
class NewtonResult:
    """Per-sample outcome of :func:`newton`."""

    z: Tensor
    residual: Tensor
    status: Tensor
    iterations: Tensor
    message: str = ""

    @property
    def converged(self) -> Tensor:
        return self.status == Status.CONVERGED


def newton(fn: RootMap, z0: Tensor, *, tol: float = 1e-10, max_iter: int = 50,
           linear_solver: str = "dense", krylov_tol: float = 1e-12,
           krylov_max_iter: int | None = None, backtrack: int = 12, diverge_at: float = 1e8,
           scale: float = 1.0) -> NewtonResult:
    """Solve ``fn(z) = 0`` per sample from ``z0`` (shape ``(B, n)``).

    Args:
        fn: the map, see :data:`RootMap`.
        tol: stop a sample when ``scale·‖fn(z)‖∞ ≤ tol``.
        max_iter: Newton iterations at most.
        linear_solver: ``"dense"`` or ``"minres"`` (symmetric Jacobians only).
        krylov_tol, krylov_max_iter: MINRES relative tolerance and cap (default 2n).
        backtrack: halvings of the step tried by the line search.
        diverge_at: |z| beyond this counts as diverged.
        scale: multiplies ‖fn‖∞ in the residual (e.g. 1/Δt for a discretised action).
    """
    if linear_solver not in LINEAR_SOLVERS:
        raise ValueError(f"unknown linear solver {linear_solver!r}; known: "
                         f"{', '.join(LINEAR_SOLVERS)}")
    if z0.dim() != 2:
        raise ValueError(f"z0 must have shape (B, n), got {tuple(z0.shape)}")
    if not (tol >= 0 and max_iter >= 0 and backtrack >= 0):
        raise ValueError("tol, max_iter and backtrack must be ≥ 0")
    batch = z0.shape[0]
    z = z0.detach().clone()
    residual = torch.full((batch,), float("inf"), dtype=torch.float64, device=z.device)
    status = torch.full((batch,), int(Status.MAX_STEPS), dtype=torch.int8, device=z.device)
    iterations = torch.zeros(batch, dtype=torch.int64, device=z.device)
    idx = torch.arange(batch, device=z.device)
    notes: list[str] = []
    with torch.no_grad():
        g = fn(z, idx)
    for it in range(max_iter + 1):
        zi = z[idx]
        gi = g
        r = gi.abs().amax(dim=1).to(torch.float64) * scale
        finite = torch.isfinite(r) & torch.isfinite(zi).all(dim=1)
        big = zi.abs().amax(dim=1) > diverge_at
        done = finite & ~big & (r <= tol)
        bad = ~finite | big
        residual[idx] = r
        status[idx[done]] = int(Status.CONVERGED)
        status[idx[bad]] = int(Status.DIVERGED)
        iterations[idx] = it
        keep = ~(done | bad)
        if it == max_iter or not bool(keep.any()):
            idx = idx[keep]
            break
        idx, zi, gi = idx[keep], zi[keep], gi[keep]
        delta, ok = _direction(fn, zi, gi, idx, linear_solver, krylov_tol, krylov_max_iter)
        if not bool(ok.all()):
            failed = idx[~ok]
            status[failed] = int(Status.SOLVER_FAILED)
            why = "singular Jacobian" + (" or MINRES did not converge"
                                         if linear_solver == "minres" else "")
            notes.append(f"linear solve failed for samples {failed[:10].tolist()} ({why})")
            idx, zi, gi, delta = idx[ok], zi[ok], gi[ok], delta[ok]
            if not idx.numel():
                break
        znew, gnew, accepted = _line_search(fn, zi, gi, delta, idx, backtrack)
        if not bool(accepted.all()):
            stalled = idx[~accepted]
            status[stalled] = int(Status.SOLVER_FAILED)
            notes.append(f"Newton stalled for samples {stalled[:10].tolist()}: no step along the "
                         "Newton direction decreased the residual")
        z[idx] = torch.where(accepted.unsqueeze(1), znew, zi)
        idx, g = idx[accepted], gnew[accepted]
    left = (status == Status.MAX_STEPS)
    if bool(left.any()):
        notes.append(f"{int(left.sum())} samples did not reach tol {tol:g} in {max_iter} Newton "
                     f"iterations (max residual {float(residual[left].max()):.3g})")
    return NewtonResult(z, residual, status, iterations, "; ".join(notes))


def _direction(fn: RootMap, z: Tensor, g: Tensor, idx: Tensor, linear_solver: str,
               krylov_tol: float, krylov_max_iter: int | None) -> tuple[Tensor, Tensor]:
    """δ = J⁻¹ g per sample and a mask of the samples whose solve succeeded."""
    if linear_solver == "dense":
        jac = batched_jacobian(lambda s: (fn(s[0], idx),), (z,))
        delta, ok = checked_solve_ex(jac, g.unsqueeze(-1))  # singular samples: ok = False
        delta = delta.squeeze(-1)
        return torch.where(ok.unsqueeze(1), delta, torch.zeros_like(delta)), ok
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        gg = fn(zz, idx)

        def matvec(v: Tensor) -> Tensor:
            out, = torch.autograd.grad(gg, zz, grad_outputs=v, retain_graph=True)
            return out

        res = minres(matvec, g.detach(), tol=krylov_tol, max_iter=krylov_max_iter)
    delta = res.solution.detach()
    # MINRES minimises the residual: a solution short of krylov_tol is still a usable direction
    # when it reduces ‖g‖ at all; only an unusable (non-finite or zero) one counts as a failure.
    ok = torch.isfinite(delta).all(dim=1) & (res.residual < 0.5)
    return torch.where(ok.unsqueeze(1), delta, torch.zeros_like(delta)), ok


def _line_search(fn: RootMap, z: Tensor, g: Tensor, delta: Tensor, idx: Tensor,
                 backtrack: int) -> tuple[Tensor, Tensor, Tensor]:
    """Backtracking on ‖g‖₂: returns the new z, g at it, and which samples accepted a step."""
    norm0 = torch.linalg.vector_norm(g, dim=1)
    znew = z.clone()
    gnew = g.clone()
    accepted = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    alpha = 1.0
    for _ in range(backtrack + 1):
        todo = ~accepted
        if not bool(todo.any()):
            break
        zt = z[todo] - alpha * delta[todo]
        with torch.no_grad():
            gt = fn(zt, idx[todo])
        nt = torch.linalg.vector_norm(gt, dim=1)
        good = torch.isfinite(nt) & (nt < (1 - 1e-4 * alpha) * norm0[todo])
        pos = torch.nonzero(todo).flatten()[good]
        znew[pos] = zt[good]
        gnew[pos] = gt[good]
        accepted[pos] = True
        alpha *= 0.5
    return znew, gnew, accepted
