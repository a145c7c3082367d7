"""Dense linear algebra of small nets (verification, Newton, spectra): per-sample Jacobians of
maps over layer states, and LAPACK solves and eigenvalues checked against a wrong or failed
multi-threaded answer (repeated on one thread)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._states import States, flatten_states


def batched_jacobian(fn: Callable[[States], States], states: States) -> Tensor:
    """J[b] = ∂g_b/∂s_b for g = ``fn(states)``, shape ``(B, n, n)``.

    ``fn`` must treat samples independently (every ctep field does), so row i of each sample's
    Jacobian is one vector-Jacobian product with the i-th unit vector, done for all rows at once
    with ``is_grads_batched``.
    """
    with torch.enable_grad():
        s = tuple(t.detach().requires_grad_(True) for t in states)
        g = flatten_states(fn(s))
        batch, n = g.shape
        eye = torch.eye(n, dtype=g.dtype, device=g.device)
        seeds = eye.unsqueeze(1).expand(n, batch, n)
        try:
            rows = torch.autograd.grad(g, s, grad_outputs=seeds, is_grads_batched=True,
                                       allow_unused=True)
        except RuntimeError:  # an op without a batching rule: fall back to one row at a time
            rows_list = [torch.autograd.grad(g, s, grad_outputs=seeds[i], retain_graph=True,
                                             allow_unused=True) for i in range(n)]
            rows = tuple(torch.stack([r[k] if r[k] is not None else torch.zeros_like(s[k])
                                      for r in rows_list]) for k in range(len(s)))
    rows = tuple(r if r is not None else torch.zeros(n, *t.shape, dtype=g.dtype, device=g.device)
                 for r, t in zip(rows, s, strict=True))
    jac = torch.cat([r.reshape(n, batch, -1) for r in rows], dim=2)  # (n_out, B, n_in)
    return jac.permute(1, 0, 2).contiguous()


def checked_solve(a: Tensor, b: Tensor) -> Tensor:
    """x = a⁻¹ b (batched), with its backward error checked.

    LU with partial pivoting has a small backward error, ‖a x − b‖∞ ≤ c·n·ε·(‖a‖∞‖x‖∞ + ‖b‖∞),
    whatever the condition number; a result outside 100·n·ε of that, or a LAPACK error, means
    the multi-threaded solve went wrong (measured with the torch 2.15 CUDA wheel on 2 CPU
    threads: oneMKL "DLASWP parameter 6" errors and wrong solutions after conv workloads). The
    solve is then repeated on one thread, which restores the exact answer.
    """
    try:
        x = torch.linalg.solve(a, b)
        if _backward_error_ok(a, b, x):
            return x
    except RuntimeError:
        pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.solve(a, b)
    finally:
        torch.set_num_threads(threads)


def checked_solve_ex(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample x = a⁻¹ b for a batch ``(B, n, n)``, ``(B, n, k)`` that may hold singular
    matrices: returns ``(x, ok)`` with x = 0 where ``ok`` is false (a zero pivot or a
    non-finite result). Checked like :func:`checked_solve`: a LAPACK error or a backward error
    above 100·n·ε in a sample whose factorisation succeeded repeats the work on one thread.
    """
    try:
        return _solve_ex(a, b, check=True)
    except RuntimeError:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _solve_ex(a, b, check=False)
        finally:
            torch.set_num_threads(threads)


def _solve_ex(a: Tensor, b: Tensor, *, check: bool) -> tuple[Tensor, Tensor]:
    lu, pivots, info = torch.linalg.lu_factor_ex(a)
    ok = info == 0
    x = torch.zeros_like(b)
    if bool(ok.any()):
        x[ok] = torch.linalg.lu_solve(lu[ok], pivots[ok], b[ok])
        if check and not _backward_error_ok(a[ok], b[ok], x[ok]):
            raise RuntimeError("backward error check failed")
    ok = ok & torch.isfinite(x).flatten(1).all(dim=1)
    return torch.where(ok.reshape(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x)), ok


def checked_eigvals(a: Tensor) -> Tensor:
    """The eigenvalues λ of ``a`` (batched, any square matrices; complex), checked.

    As :func:`checked_solve`, a LAPACK error, non-finite eigenvalues of a finite matrix, or
    eigenvalues that fail the moment check of :func:`_spectrum_ok` repeat the decomposition
    on one thread, whose answer is returned.
    """
    return _checked_eig(torch.linalg.eigvals, a)


def checked_eigvalsh(a: Tensor) -> Tensor:
    """The eigenvalues λ of the symmetric (Hermitian) ``a`` (batched; real, ascending), checked
    like :func:`checked_eigvals`. Only the lower triangle of ``a`` is read, as by ``eigvalsh``:
    the check is made on the Hermitian matrix that lower triangle defines."""
    lower = torch.tril(a)
    return _checked_eig(torch.linalg.eigvalsh, a,
                        lower + torch.tril(a, -1).transpose(-2, -1).conj())


def _checked_eig(eig: Callable[[Tensor], Tensor], a: Tensor, hermitian: Tensor | None = None
                 ) -> Tensor:
    try:
        vals = eig(a)
        if _spectrum_ok(a if hermitian is None else hermitian, vals):
            return vals
    except RuntimeError:
        pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return eig(a)
    finally:
        torch.set_num_threads(threads)


def _spectrum_ok(a: Tensor, vals: Tensor) -> bool:
    """Whether computed eigenvalues λ̂ of ``a`` pass two moment checks, per matrix.

    A backward-stable eigensolver returns the exact eigenvalues of a + e with
    ‖e‖_F ≤ δ = 100·n·ε·‖a‖_F (the margin of :func:`checked_solve`). The power sums of the
    eigenvalues are traces, Σλ = tr a and Σλ² = tr a² (for a Schur form T of a + e,
    Σ T_ii² = tr T²), which cost O(n²); so
    |Σλ̂ − tr a| = |tr e| ≤ √n·δ and |Σλ̂² − tr a²| = |2 tr(a e) + tr e²| ≤ 2‖a‖_F·δ + δ².
    Both bounds hold whatever the conditioning of the individual eigenvalues; for the
    rounding of the sums the test allows n·δ (the first widened by √n) and n·δ·(2‖a‖_F + δ)
    (the second widened by n). A matrix with non-finite entries is not
    checked; finite entries with a non-finite eigenvalue fail.
    """
    if vals.shape[-1] == 0:
        return True
    a = a.to(vals.dtype) if vals.is_complex() else a
    finite_in = torch.isfinite(a).flatten(-2).all(-1)
    finite_out = torch.isfinite(vals).all(-1)
    n = a.shape[-1]
    eps = torch.finfo(a.real.dtype if a.is_complex() else a.dtype).eps
    norm = torch.linalg.matrix_norm(a)  # Frobenius
    delta = 100 * n * eps * norm
    trace = torch.diagonal(a, dim1=-2, dim2=-1).sum(-1)
    trace_sq = (a * a.transpose(-2, -1)).sum((-2, -1))  # tr a² = Σ_ij a_ij a_ji
    first = (vals.sum(-1) - trace).abs() <= n * delta
    second = ((vals * vals).sum(-1) - trace_sq).abs() <= n * delta * (2 * norm + delta)
    ok = ~finite_in | (finite_out & first & second)
    return bool(ok.all())


def _backward_error_ok(a: Tensor, b: Tensor, x: Tensor) -> bool:
    if not bool(torch.isfinite(x).all()):
        return bool(not torch.isfinite(a).all() or not torch.isfinite(b).all())
    n = a.shape[-1]
    eps = torch.finfo(a.dtype).eps
    r = (a @ x - b).abs().amax(dim=(-2, -1))
    scale = (a.abs().sum(-1).amax(-1) * x.abs().amax(dim=(-2, -1))
             + b.abs().amax(dim=(-2, -1)))
    return bool((r <= 100 * n * eps * scale).all())
