"""Batched MINRES for symmetric (possibly indefinite) systems given only matrix-vector products.

Solves ``A_b z_b = r_b`` for every sample b of a batch at once: ``matvec`` maps a ``(B, n)``
block of vectors to ``(B, n)`` (sample b multiplied by its own symmetric A_b, e.g. a Hessian-
vector product of a per-sample action). The scalars of the Lanczos recurrence are ``(B,)``
tensors, so every sample runs its own Krylov iteration; samples that reach the tolerance are
frozen (their iterate no longer moves).

The recurrence is Paige & Saunders (1975): Lanczos tridiagonalisation
``A V_k = V_{k+1} T̄_k``, a QR factorisation of T̄_k by Givens rotations (c_k, s_k), and the
update ``z_k = z_{k−1} + φ_k w_k``. ``|φ̄_k|`` is the 2-norm of the residual ``r − A z_k``: it
decreases monotonically, which is why MINRES (unlike CG) is safe on saddles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KrylovResult:
    """``solution`` (B, n); ``residual`` = ‖r − A z‖₂/‖r‖₂ estimated by the recurrence;
    ``converged`` (B,) bool; ``iterations`` done."""

    solution: Tensor
    residual: Tensor
    converged: Tensor
    iterations: int


def minres(matvec: Callable[[Tensor], Tensor], rhs: Tensor, *, tol: float = 1e-12,
           max_iter: int | None = None) -> KrylovResult:
    """MINRES from z = 0 for ``A z = rhs`` per sample (rows of ``rhs``), A symmetric.

    Args:
        matvec: ``v ↦ A v`` on ``(B, n)`` blocks.
        rhs: ``(B, n)``.
        tol: stop a sample when its estimated relative residual ‖r − Az‖/‖r‖ ≤ tol.
        max_iter: iteration cap (default 2n, enough in exact arithmetic for n distinct
            eigenvalues, with room for rounding).
    """
    if rhs.dim() != 2:
        raise ValueError(f"rhs must have shape (B, n), got {tuple(rhs.shape)}")
    batch, n = rhs.shape
    max_iter = 2 * n if max_iter is None else int(max_iter)
    tiny = torch.finfo(rhs.dtype).tiny
    z = torch.zeros_like(rhs)
    beta1 = torch.linalg.vector_norm(rhs, dim=1)
    zero_rhs = beta1 == 0
    active = ~zero_rhs
    safe_b1 = torch.where(zero_rhs, torch.ones_like(beta1), beta1)
    # Lanczos state: r1 = β_{k-1} v_{k-1}, r2 = β_k v_k (unnormalised), beta = β_k
    r1 = rhs.clone()
    r2 = rhs.clone()
    beta = beta1.clone()
    oldb = torch.zeros_like(beta1)
    # QR state
    cs = -torch.ones_like(beta1)
    sn = torch.zeros_like(beta1)
    dbar = torch.zeros_like(beta1)
    epsln = torch.zeros_like(beta1)
    phibar = beta1.clone()
    w = torch.zeros_like(rhs)
    w2 = torch.zeros_like(rhs)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        if not bool(active.any()):
            it -= 1
            break
        v = r2 / beta.clamp_min(tiny).unsqueeze(1)
        y = matvec(v)
        if it >= 2:
            y = y - (beta / oldb.clamp_min(tiny)).unsqueeze(1) * r1
        alfa = (v * y).sum(dim=1)
        y = y - (alfa / beta.clamp_min(tiny)).unsqueeze(1) * r2
        r1, r2 = r2, y
        oldb = beta
        beta = torch.linalg.vector_norm(y, dim=1)
        # apply the previous rotation, then a new one that annihilates β_{k+1}
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = torch.sqrt(gbar * gbar + beta * beta).clamp_min(tiny)
        cs = gbar / gamma
        sn = beta / gamma
        phi = cs * phibar
        w1, w2 = w2, w
        w = (v - oldeps.unsqueeze(1) * w1 - delta.unsqueeze(1) * w2) / gamma.unsqueeze(1)
        step = phi.unsqueeze(1) * w
        z = torch.where(active.unsqueeze(1), z + step, z)
        phibar = torch.where(active, sn * phibar, phibar)
        rel = phibar.abs() / safe_b1
        # a vanishing β_{k+1} means the Krylov space is invariant: z is exact
        active = active & (rel > tol) & (beta > tiny) & torch.isfinite(rel)
    rel = phibar.abs() / safe_b1
    rel = torch.where(zero_rhs, torch.zeros_like(rel), rel)
    return KrylovResult(z, rel, rel <= tol, it)
