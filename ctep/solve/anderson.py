"""Anderson acceleration of the fixed-point map, per sample, without host synchronisation.

The map of ``fixed_point`` is G(s) = clamp(s + h ⊙ drive(s)) (h = damping, or per neuron
h_i = min(1, damping·dt/τ_i)); its fixed points are the equilibria. Where G contracts slowly
(a contraction factor near 1: deep or strongly coupled nets, small steps h), plain iteration
needs thousands of steps. Anderson acceleration (type II, Walker & Ni 2011) mixes the last m
iterates instead: with the map residual f_k = G(s_k) − s_k and the columns of

    ΔF_k = [f_{k−j+1} − f_{k−j}]_{j=1..m},    ΔG_k = [G(s_{k−j+1}) − G(s_{k−j})]_{j=1..m},

    γ_k = argmin_γ ‖f_k − ΔF_k γ‖₂² + λ_k ‖γ‖₂²,    s_{k+1} = clamp(G(s_k) − ΔG_k γ_k),

a secant (multisecant Broyden) step on s − G(s) = 0 that costs one field evaluation per
iteration, like the map, plus B·m·n work for the m×m normal equations. λ_k = reg·tr(ΔFᵀΔF)/m_k,
the mean squared norm of the m_k ≤ m columns in use (reg raised to the dtype's ε if smaller),
keeps them well posed when the differences are nearly dependent.

Complex states (the complex-β phases of holomorphic EP) take the Hermitian products: the Gram
matrix ΔFᴴΔF, the right-hand side ΔFᴴf_k and a complex γ_k, the least-squares problem in ℂⁿ.

Everything is per sample and stays on the device: each sample has its own history, its own
least-squares problem (a batched Cholesky whose failures give γ = 0 for that sample, a plain map
step) and its own safeguard: a sample whose ‖f_k‖∞ exceeds ``restart`` times its best so far
drops its history and restarts from G(s_best), the map's image of its best iterate. Nothing is
read on the host; the relaxation loop's residual checks are the only synchronisation.

Anderson finds fixed points of G, as the map does, but it is not a descent method on F: on an
energy with several minima it can settle in a different one than the map from the same start
(both are equilibria, with residual ≤ tol; EP's estimators only need an equilibrium), and it
can converge to an unstable fixed point the map runs away from. It pays where G is smooth
along the path (measured: 5–10× fewer evaluations with small per-neuron steps or strong
nudging); on relu6 conv nets, whose active sets keep changing between iterates, it needed
more evaluations than the map (VGG5) or stalled (Hopfield-ResNet13): docs/solvers.md.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .._linalg import cholesky_solve_ex
from .._states import States, flatten_states, unflatten_states
from ..energies.base import Energy


class AndersonStep:
    """One Anderson-accelerated map iteration per call, for the samples still working.

    Args:
        energy: the energy (its ``clamp`` projects iterates onto the box).
        h: the map's step per layer: a number, or a tensor broadcastable to the layer's
            per-sample shape (``per_neuron_steps``).
        states: the starting states (shapes and dtype of the history).
        memory: m, the number of past differences mixed (≥ 1).
        reg: relative Tikhonov regularisation of the normal equations (> 0).
        restart: safeguard factor (> 1): ‖f_k‖∞ > restart·min_{j≤k} ‖f_j‖∞ restarts the sample.
    """

    def __init__(self, energy: Energy, h: tuple, states: States, memory: int,
                 reg: float, restart: float) -> None:
        if not _is_int(memory) or memory < 1:
            raise ValueError(f"anderson memory must be an integer ≥ 1, got {memory!r}")
        if not _is_real(reg) or not reg > 0:
            raise ValueError(f"anderson reg must be a number > 0, got {reg!r}")
        if not _is_real(restart) or not restart > 1:
            raise ValueError(f"anderson restart must be a number > 1, got {restart!r}")
        memory = int(memory)
        self.energy = energy
        self.shapes = tuple(tuple(x.shape[1:]) for x in states)
        ref = states[0]
        self.h = self._flat_steps(h, ref)
        batch, n = ref.shape[0], sum(x[0].numel() for x in states)
        self.memory, self.reg, self.restart = memory, reg, restart
        real = ref.real.dtype if ref.is_complex() else ref.dtype  # of norms and residuals
        info = torch.finfo(real)
        self.reg_eff = max(reg, float(info.eps))  # below ε the shift would not register
        self.tiny = info.tiny
        kw = {"dtype": ref.dtype, "device": ref.device}
        self.d_f = torch.zeros(batch, memory, n, **kw)  # ΔF rows (a ring buffer over columns)
        self.d_g = torch.zeros(batch, memory, n, **kw)
        self.gram = torch.zeros(batch, memory, memory, **kw)  # ΔFᴴΔF, one column per insert
        self.valid = torch.zeros(batch, memory, dtype=torch.bool, device=ref.device)
        self.f_prev: Tensor | None = None
        self.g_prev: Tensor | None = None
        self.best_r = torch.full((batch,), torch.inf, dtype=real, device=ref.device)
        self.best_g = torch.zeros(batch, n, **kw)
        # restarted at the last call: the next secant pair spans the abandoned iterate
        self.restarted = torch.zeros(batch, dtype=torch.bool, device=ref.device)
        self.column = 0
        self.idx = torch.arange(batch, device=ref.device)  # working samples' full-batch index
        self.working_restarts = torch.zeros(batch, dtype=torch.int64, device=ref.device)
        self.finished_restarts = torch.zeros(batch, dtype=torch.int64, device=ref.device)

    def _flat_steps(self, h: tuple, ref: Tensor) -> Tensor | float:
        """h as one row ``(1, n)`` over the flattened states, or a number when it is one."""
        if all(not torch.is_tensor(x) for x in h) and len(set(h)) == 1:
            return float(h[0])
        parts = [(x if torch.is_tensor(x) else torch.tensor(x, dtype=ref.dtype))
                 .to(ref.device, ref.dtype).expand(shape).reshape(-1)
                 for x, shape in zip(h, self.shapes, strict=True)]
        return torch.cat(parts).unsqueeze(0)

    def keep(self, mask: Tensor) -> None:
        """Drop the samples that left the working batch (``mask``: those that stay)."""
        self.d_f, self.d_g, self.valid = self.d_f[mask], self.d_g[mask], self.valid[mask]
        self.gram = self.gram[mask]
        self.best_r, self.best_g = self.best_r[mask], self.best_g[mask]
        self.restarted = self.restarted[mask]
        gone = ~mask
        self.finished_restarts.index_add_(0, self.idx[gone], self.working_restarts[gone])
        self.idx, self.working_restarts = self.idx[mask], self.working_restarts[mask]
        if self.f_prev is not None:
            self.f_prev, self.g_prev = self.f_prev[mask], self.g_prev[mask]

    def restarts(self) -> Tensor:
        """Safeguard restarts per sample of the full batch so far, shape ``(B,)``."""
        return self.finished_restarts.index_add(0, self.idx, self.working_restarts)

    def __call__(self, states: States, drive: States) -> States:
        """s_{k+1} from s_k = ``states`` and drive(s_k) = ``drive`` (module docstring)."""
        s = flatten_states(states)
        d = flatten_states(drive)
        g = flatten_states(self.energy.clamp(unflatten_states(s + self.h * d, self.shapes)))
        f = g - s
        if self.f_prev is not None:  # the newest secant pair replaces the oldest column
            c = self.column
            self.d_f[:, c] = f - self.f_prev
            self.d_g[:, c] = g - self.g_prev
            # a sample restarted at the last call starts a new history: the pair from the
            # abandoned iterate to G(s_best) does not enter it
            self.valid[:, c] = ~self.restarted
            column = _rows_dot(self.d_f, self.d_f[:, c])  # ⟨ΔF_j, ΔF_c⟩: column c of ΔFᴴΔF
            self.gram[:, :, c] = column
            self.gram[:, c, :] = column.conj()  # its row c (Hermitian)
            self.column = (c + 1) % self.memory
        self.f_prev, self.g_prev = f, g
        r = f.abs().amax(dim=1)
        better = r < self.best_r  # NaN compares false: a NaN iterate never becomes the best
        self.best_r = torch.where(better, r, self.best_r)
        self.best_g = torch.where(better.unsqueeze(1), g, self.best_g)
        restart = r > self.restart * self.best_r
        restart |= torch.isnan(r)
        self.working_restarts += restart
        self.valid &= ~restart.unsqueeze(1)
        self.restarted = restart
        gamma = self._coefficients(f)
        mixed = g - _combine(gamma, self.d_g)
        nxt = torch.where(restart.unsqueeze(1), self.best_g, mixed)
        return self.energy.clamp(unflatten_states(nxt, self.shapes))

    def _coefficients(self, f: Tensor) -> Tensor:
        """γ per sample from (ΔFᴴΔF + λI) γ = ΔFᴴ f over the valid columns (ᴴ = ᵀ for real
        states); γ = 0 elsewhere and wherever the Cholesky factorisation fails."""
        v = self.valid
        gram = self.gram
        rhs = _rows_dot(self.d_f, f)  # ΔFᴴ f, (B, m)
        both = v.unsqueeze(2) & v.unsqueeze(1)
        gram = torch.where(both, gram, torch.zeros((), dtype=gram.dtype, device=gram.device))
        diag = torch.diagonal(gram, dim1=1, dim2=2).real  # ‖ΔF_j‖², real also when complex
        count = v.sum(dim=1).clamp(min=1)
        lam = (self.reg_eff * diag.sum(dim=1) / count).clamp(min=self.tiny)
        shift = torch.where(v, lam.unsqueeze(1), torch.ones_like(lam).unsqueeze(1))
        gram = gram + torch.diag_embed(shift)
        rhs = torch.where(v, rhs, torch.zeros((), dtype=rhs.dtype, device=rhs.device))
        gamma, factored = cholesky_solve_ex(gram, rhs.unsqueeze(2))
        gamma = gamma.squeeze(2)
        ok = factored.unsqueeze(1) & torch.isfinite(gamma)
        return torch.where(ok & v, gamma, torch.zeros((), dtype=gamma.dtype, device=gamma.device))


def _is_int(value: object) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _rows_dot(rows: Tensor, v: Tensor) -> Tensor:
    """out[b, j] = ⟨rows[b, j], v[b]⟩ = Σ_i conj(rows[b, j, i])·v[b, i] for rows ``(B, m, n)``
    and v ``(B, n)`` (the conjugate is a no-op for real tensors).

    On the CPU a broadcast product and sum is 2.5–3× faster than ``bmm`` for these skinny
    shapes (measured, torch 2.14, one thread: 75 against 215 µs at B 64, m 5, n 266); elsewhere
    ``bmm`` avoids the (B, m, n) temporary."""
    rows = rows.conj()  # a lazy view; real tensors are returned as they are
    if rows.device.type == "cpu":
        return (rows * v.unsqueeze(1)).sum(dim=2)
    return torch.bmm(rows, v.unsqueeze(2)).squeeze(2)


def _combine(gamma: Tensor, rows: Tensor) -> Tensor:
    """out[b] = Σ_j gamma[b, j]·rows[b, j] for gamma ``(B, m)`` and rows ``(B, m, n)``
    (CPU: broadcast product and sum, as in :func:`_rows_dot`)."""
    if rows.device.type == "cpu":
        return (gamma.unsqueeze(2) * rows).sum(dim=1)
    return torch.bmm(gamma.unsqueeze(1), rows).squeeze(1)
