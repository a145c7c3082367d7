"""Dense linear algebra of small nets (verification, Newton, spectra, Anderson mixing):
per-sample Jacobians of maps over layer states, and LAPACK factorisations that never nest
OpenMP teams.

Every LAPACK call of ctep goes through this module. On the CPU, torch runs a batched
factorisation (``linalg.solve``, ``lu_factor``, ``eigvals``, ...) as an ``at::parallel_for``
over the batch, and oneMKL's LAPACK may start an OpenMP team of its own inside each of those
threads. With the torch CUDA wheel on 2 threads this was measured as a call that never returns
(a hang inside ``dgetrf``, on 2-core Intel Xeon and AMD EPYC machines: on the latter within the
first 100 batched solves of ``benchmarks/lapack_threads.py``) and as oneMKL "DLASWP parameter 6"
errors with wrong solutions. The matrices here are small (reference gradients, Newton steps,
spectra of nets of at most a few thousand neurons, Anderson's m × m Gram matrices), so each
call runs on one intra-op thread (:func:`one_thread`), which nests nothing and costs nothing
that matters. The results are still checked (a backward-error bound for solves, two trace
identities for spectra) and a failed check is an error that says so, never a silent wrong
answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from ._states import States, flatten_states


class LinAlgCheckError(RuntimeError):
    """A LAPACK result failed its a-posteriori check (backward error or trace identities)."""


@contextmanager
def one_thread(*tensors: Tensor) -> Iterator[None]:
    """Run the enclosed torch calls on one intra-op thread (``torch.set_num_threads(1)``),
    restoring the previous count on exit, also when the body raises.

    With one intra-op thread neither ``at::parallel_for`` nor oneMKL starts a team, so no
    OpenMP team is nested inside another. Tensors passed in that all live on a non-CPU device
    leave the setting alone (their factorisations do not use the CPU thread pool). The
    setting is process-wide: torch calls made at the same time from other Python threads run on
    one thread too, until the block ends.
    """
    if tensors and all(t.device.type != "cpu" for t in tensors):
        yield
        return
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    """x = a⁻¹ b (batched ``(..., n, n)``, ``(..., n, k)``), on one thread, with its backward
    error checked.

    LU with partial pivoting has a small backward error, ‖a x − b‖∞ ≤ c·n·ε·(‖a‖∞‖x‖∞ + ‖b‖∞),
    whatever the condition number; a result outside 100·n·ε of that raises
    :class:`LinAlgCheckError`. A singular matrix raises torch's error.
    """
    with one_thread(a, b):
        x = torch.linalg.solve(a, b)
    if not _backward_error_ok(a, b, x):
        raise LinAlgCheckError(f"linear solve of shape {tuple(a.shape)}: the backward error "
                               "exceeds 100·n·ε (a LAPACK fault, or non-finite entries)")
    return x


def checked_solve_ex(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample x = a⁻¹ b for a batch ``(B, n, n)``, ``(B, n, k)`` that may hold singular
    matrices: returns ``(x, ok)`` with x = 0 where ``ok`` is false (a zero pivot or a
    non-finite result). On one thread; a sample whose factorisation succeeded but whose
    backward error is above 100·n·ε raises :class:`LinAlgCheckError`.
    """
    with one_thread(a, b):
        lu, pivots, info = torch.linalg.lu_factor_ex(a)
        ok = info == 0
        x = torch.zeros_like(b)
        if bool(ok.any()):
            x[ok] = torch.linalg.lu_solve(lu[ok], pivots[ok], b[ok])
    if bool(ok.any()) and not _backward_error_ok(a[ok], b[ok], x[ok]):
        raise LinAlgCheckError(f"LU solve of shape {tuple(a.shape)}: the backward error "
                               "exceeds 100·n·ε in a sample whose factorisation succeeded")
    ok = ok & torch.isfinite(x).flatten(1).all(dim=1)
    return torch.where(ok.reshape(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x)), ok


def cholesky_solve_ex(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """x = a⁻¹ b for a batch of Hermitian positive definite ``a`` ``(B, m, m)`` and ``b``
    ``(B, m, k)`` by Cholesky, on one thread; ``ok`` ``(B,)`` is false where the
    factorisation failed (a not positive definite), and x is then not meaningful.

    Unchecked and sync-free (no host read): it is Anderson mixing's per-iteration solve, whose
    caller discards the samples that are not ``ok``.
    """
    with one_thread(a, b):
        chol, info = torch.linalg.cholesky_ex(a)
        x = torch.cholesky_solve(b, chol)
    return x, info == 0


def checked_eigvals(a: Tensor) -> Tensor:
    """The eigenvalues λ of ``a`` (batched, any square matrices; complex), on one thread,
    checked by the trace identities of :func:`_spectrum_ok` (a failure raises
    :class:`LinAlgCheckError`)."""
    with one_thread(a):
        vals = torch.linalg.eigvals(a)
    _require_spectrum(a, vals, "eigvals")
    return vals


def checked_eigvalsh(a: Tensor) -> Tensor:
    """The eigenvalues λ of the symmetric (Hermitian) ``a`` (batched; real, ascending), on one
    thread, checked like :func:`checked_eigvals`. Only the lower triangle of ``a`` is read, as
    by ``eigvalsh``: the check is made on the Hermitian matrix that lower triangle defines."""
    with one_thread(a):
        vals = torch.linalg.eigvalsh(a)
    hermitian = torch.tril(a) + torch.tril(a, -1).transpose(-2, -1).conj()
    _require_spectrum(hermitian, vals, "eigvalsh")
    return vals


def spectral_norm(a: Tensor) -> Tensor:
    """‖a‖₂, the largest singular value of each matrix of ``a`` (``(..., m, n)``), on one
    thread (an SVD: LAPACK ``gesdd``)."""
    with one_thread(a):
        return torch.linalg.matrix_norm(a, 2)


def _require_spectrum(a: Tensor, vals: Tensor, name: str) -> None:
    if not _spectrum_ok(a, vals):
        raise LinAlgCheckError(f"{name} of shape {tuple(a.shape)}: the eigenvalues fail the "
                               "trace identities Σλ = tr a, Σλ² = tr a² (a LAPACK fault)")


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
