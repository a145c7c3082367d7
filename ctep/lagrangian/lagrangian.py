"""Lagrangians L(q, q̇, t, x; θ) = T(q̇) − V(q, t) + D(q, t, x): kinetic − potential + drive.

A Lagrangian is evaluated pointwise along a trajectory: ``q`` and ``qdot`` have shape
``(B, M, d)`` (batch, time points, coordinates), ``t`` shape ``(M,)`` and the drive signal
``x`` shape ``(B, M, d_x)`` (or None); the result has shape ``(B, M)``. The action and its
discretisation live in :mod:`ctep.lagrangian.action`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._linalg import checked_eigvalsh


class Lagrangian(nn.Module):
    """L = T(q̇) − V(q, t) + D(q, t, x). Subclasses implement :meth:`potential` and may override
    :meth:`kinetic` (default ½‖q̇‖², unit masses) and :meth:`drive` (default none).

    Attributes:
        dim: number of coordinates d.
        drive_dim: width d_x of the drive signal (0: the Lagrangian takes no drive).
    """

    dim: int
    drive_dim: int = 0

    def kinetic(self, qdot: Tensor) -> Tensor:
        """T(q̇) = ½ Σ_i q̇_i²."""
        return 0.5 * (qdot * qdot).sum(dim=-1)

    def potential(self, q: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """V(q, t)."""
        raise NotImplementedError

    def drive(self, q: Tensor, t: Tensor, x: Tensor | None) -> Tensor:
        """D(q, t, x) (e.g. a force x(t) on some coordinates: Σ_k x_k q_{j_k})."""
        return torch.zeros(q.shape[:-1], dtype=q.dtype, device=q.device)

    def forward(self, q: Tensor, qdot: Tensor, t: Tensor, x: Tensor | None = None) -> Tensor:
        """L(q, q̇, t, x) pointwise, shape ``q.shape[:-1]``."""
        return self.kinetic(qdot) - self.potential(q, t) + self.drive(q, t, x)


class OscillatorChain(Lagrangian):
    """A chain of d oscillators with on-site (optionally quartic) springs and nearest-neighbour
    couplings, driven by forces on some of them:

        L = Σ_i ½ m_i q̇_i² − Σ_i (½ k_i q_i² + ¼ α_i q_i⁴) − Σ_i ½ κ_i (q_{i+1} − q_i)²
            + Σ_k x_k(t) q_{j_k}.

    The stiffnesses k (d,) and couplings κ (d − 1,) are trainable; masses m, anharmonicities α
    and the driven coordinates j are fixed. ∂L/∂k_i = −½ q_i², ∂L/∂κ_i = −½(q_{i+1} − q_i)²:
    the "conjugate variables" whose nudged-minus-free contrast is the EP update.

    Args:
        stiffness: k per oscillator (sequence of d numbers or a tensor).
        coupling: κ per neighbouring pair (d − 1 numbers; a number is broadcast).
        mass: m (a number or d numbers), anharmonicity: α (same).
        driven: coordinates j_k the drive signal's columns act on (default: the first).
    """

    def __init__(self, stiffness: Sequence[float] | Tensor, coupling: float | Sequence[float] |
                 Tensor = 0.5, *, mass: float | Sequence[float] | Tensor = 1.0,
                 anharmonicity: float | Sequence[float] | Tensor = 0.0,
                 driven: Sequence[int] = (0,), dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        k = torch.as_tensor(stiffness, dtype=dtype, device=device).flatten().clone()
        d = k.numel()
        if d < 1:
            raise ValueError("an oscillator chain needs at least one oscillator")
        self.dim = d

        def per(value, n: int, name: str) -> Tensor:
            t = torch.as_tensor(value, dtype=dtype, device=device)
            if t.dim() == 0:
                return t.expand(n).clone()
            t = t.flatten()
            if t.numel() != n:
                raise ValueError(f"{name} must have {n} entries, got {t.numel()}")
            return t.clone()

        self.stiffness = nn.Parameter(k)
        self.coupling = nn.Parameter(per(coupling, d - 1, "coupling"))
        m = per(mass, d, "mass")
        if not bool((m > 0).all()):
            raise ValueError("masses must be positive")
        self.register_buffer("mass", m)
        self.register_buffer("anharmonicity", per(anharmonicity, d, "anharmonicity"))
        driven = [int(j) for j in driven]
        if len(set(driven)) != len(driven) or not all(0 <= j < d for j in driven):
            raise ValueError(f"driven coordinates must be distinct indices in [0, {d}), got "
                             f"{driven}")
        self.register_buffer("driven", torch.tensor(driven, dtype=torch.long, device=device))
        self.drive_dim = len(driven)

    def kinetic(self, qdot: Tensor) -> Tensor:
        return 0.5 * (self.mass * qdot * qdot).sum(dim=-1)

    def potential(self, q: Tensor, t: Tensor) -> Tensor:
        onsite = 0.5 * self.stiffness * q * q + 0.25 * self.anharmonicity * q ** 4
        dq = q[..., 1:] - q[..., :-1]
        return onsite.sum(dim=-1) + 0.5 * (self.coupling * dq * dq).sum(dim=-1)

    def drive(self, q: Tensor, t: Tensor, x: Tensor | None) -> Tensor:
        if x is None or self.drive_dim == 0:
            return super().drive(q, t, x)
        return (x * q[..., self.driven]).sum(dim=-1)

    def normal_frequencies(self) -> Tensor:
        """ω of the linearised chain (α = 0): square roots of the eigenvalues of M⁻¹K
        (NaN for a negative eigenvalue)."""
        d = self.dim
        with torch.no_grad():
            kmat = torch.diag(self.stiffness.detach().clone())
            c = self.coupling.detach()
            for i in range(d - 1):
                kmat[i, i] += c[i]
                kmat[i + 1, i + 1] += c[i]
                kmat[i, i + 1] -= c[i]
                kmat[i + 1, i] -= c[i]
            minv = torch.diag(self.mass.rsqrt())
            ev = checked_eigvalsh(minv @ kmat @ minv)
        return torch.sqrt(ev)
