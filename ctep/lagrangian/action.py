"""The discretised action S[q; θ] = ∫ L(q, q̇, t; θ) dt and trajectory costs C[q].

Time grid t_n = n Δt, Δt = 𝒯/K for K steps over a duration 𝒯. The path is q_0, ..., q_K with

- **periodic** ends: q_K ≡ q_0 (and the drive is 𝒯-periodic); the unknowns are q_0..q_{K−1};
- **fixed** ends: q_0 = q_a and q_K = q_b given (independent of θ and β); the unknowns are
  q_1..q_{K−1}.

Discrete action with v_n = (q_{n+1} − q_n)/Δt, n = 0..K−1:

- ``"trapezoid"`` (default): S = Σ_n (Δt/2) [L(q_n, v_n, t_n, x_n) + L(q_{n+1}, v_n, t_{n+1},
  x_{n+1})]. For L = ½ q̇ᵀMq̇ − V(q) + x·q its stationarity conditions are the Störmer–Verlet
  scheme M(q_{n+1} − 2q_n + q_{n−1})/Δt² = −∇V(q_n) + x_n.
- ``"midpoint"``: S = Σ_n Δt L((q_n + q_{n+1})/2, v_n, t_n + Δt/2, (x_n + x_{n+1})/2).

Cost C[q] = Σ_n w_n c(q_n, y_n) with w_n = Δt (periodic) or trapezoid weights (Δt/2 at the two
fixed ends). Total functional F = S + β C. The stationary trajectory solves ∂F/∂Q = 0 for the
unknowns Q; it is usually a **saddle** of F (the kinetic term makes ∂²S/∂Q² positive on
high-frequency paths, the potential negative on slow ones), so it is found by Newton's method
(:mod:`ctep.lagrangian.solve`), not by descent.

Shapes: unknowns Q ``(B, K or K − 1, d)``; the full path ``(B, P, d)`` with P = K (periodic) or
K + 1 (fixed) points; drive x ``(B, P, d_x)``; targets y ``(B, P, n_observed)``; ends
``(2, d)`` or ``(B, 2, d)`` (q_a, q_b).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from .lagrangian import Lagrangian

BOUNDARIES = ("periodic", "fixed")
QUADRATURES = ("trapezoid", "midpoint")


class TrackingCost(nn.Module):
    """c(q_n, y_n) = ½ Σ_k (q_{n, j_k} − y_{n, k})²: observed coordinates j follow targets."""

    def __init__(self, observed: Sequence[int], dim: int) -> None:
        super().__init__()
        observed = [int(j) for j in observed]
        if not observed:
            raise ValueError("at least one observed coordinate is needed")
        if len(set(observed)) != len(observed) or not all(0 <= j < dim for j in observed):
            raise ValueError(f"observed coordinates must be distinct indices in [0, {dim}), got "
                             f"{observed}")
        self.register_buffer("observed", torch.tensor(observed, dtype=torch.long))
        self.dim = int(dim)

    @property
    def width(self) -> int:
        return int(self.observed.numel())

    def forward(self, q: Tensor, y: Tensor) -> Tensor:
        """c per time point, ``(B, P)``."""
        d = q[..., self.observed] - y.to(q.dtype)
        return 0.5 * (d * d).sum(dim=-1)


class DiscreteAction(nn.Module):
    """S[Q; θ] (+ β C[Q]) on a uniform time grid; see the module docstring.

    Args:
        lagrangian: the :class:`Lagrangian`.
        steps: K ≥ 2 (periodic) or ≥ 2 (fixed: K − 1 ≥ 1 unknown points).
        duration: 𝒯 (the period, for periodic ends).
        boundary: ``"periodic"`` or ``"fixed"``.
        quadrature: ``"trapezoid"`` or ``"midpoint"``.
        cost: a :class:`TrackingCost` (or any module c(q, y) → (B, P)); None: no cost (then
            only β = 0 is allowed).
    """

    def __init__(self, lagrangian: Lagrangian, *, steps: int, duration: float = 2 * math.pi,
                 boundary: str = "periodic", quadrature: str = "trapezoid",
                 cost: nn.Module | None = None) -> None:
        super().__init__()
        if boundary not in BOUNDARIES:
            raise ValueError(f"unknown boundary {boundary!r}; known: {', '.join(BOUNDARIES)}")
        if quadrature not in QUADRATURES:
            raise ValueError(f"unknown quadrature {quadrature!r}; known: "
                             f"{', '.join(QUADRATURES)}")
        if int(steps) != steps or steps < 2:
            raise ValueError(f"steps must be an integer ≥ 2, got {steps}")
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be positive and finite, got {duration}")
        self.lagrangian = lagrangian
        self.cost = cost
        self.steps = int(steps)
        self.duration = float(duration)
        self.boundary = boundary
        self.quadrature = quadrature
        self.dt = self.duration / self.steps

    # -- grid ------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.lagrangian.dim)

    @property
    def n_points(self) -> int:
        """P: points of the full path (K periodic, K + 1 fixed)."""
        return self.steps if self.boundary == "periodic" else self.steps + 1

    @property
    def n_unknown_points(self) -> int:
        return self.steps if self.boundary == "periodic" else self.steps - 1

    @property
    def unknown_shape(self) -> tuple[int, int]:
        """Per-sample shape of the unknowns Q."""
        return (self.n_unknown_points, self.dim)

    def times(self, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """t_n of the full path, shape ``(P,)``."""
        return torch.arange(self.n_points, dtype=dtype or torch.float64,
                            device=device) * self.dt

    def weights(self, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Quadrature weights w_n of the cost over the full path, ``(P,)``."""
        w = torch.full((self.n_points,), self.dt, dtype=dtype or torch.float64, device=device)
        if self.boundary == "fixed":
            w[0] = w[-1] = 0.5 * self.dt
        return w

    def learnable_parameters(self) -> Iterator[nn.Parameter]:
        """θ: the Lagrangian's parameters, then the cost's."""
        yield from self.lagrangian.parameters()
        if self.cost is not None:
            yield from self.cost.parameters()

    # -- paths -----------------------------------------------------------------------------------
    def default_ends(self, batch: int, dtype: torch.dtype, device=None) -> Tensor:
        return torch.zeros(batch, 2, self.dim, dtype=dtype, device=device)

    def _ends(self, ends: Tensor | None, batch: int, like: Tensor) -> Tensor | None:
        if self.boundary == "periodic":
            if ends is not None:
                raise ValueError("periodic ends take no end points (ends=None)")
            return None
        if ends is None:
            return self.default_ends(batch, like.dtype, like.device)
        if ends.dim() == 2:
            ends = ends.unsqueeze(0).expand(batch, -1, -1)
        if tuple(ends.shape) != (batch, 2, self.dim):
            raise ValueError(f"ends must have shape (2, {self.dim}) or ({batch}, 2, {self.dim}) "
                             f"(q_a, q_b), got {tuple(ends.shape)}")
        return ends.to(like.dtype)

    def path(self, Q: Tensor, ends: Tensor | None = None) -> Tensor:
        """The full path ``(B, P, d)`` from the unknowns (end points inserted when fixed)."""
        self.check_unknowns(Q)
        e = self._ends(ends, Q.shape[0], Q)
        if e is None:
            return Q
        return torch.cat([e[:, :1], Q, e[:, 1:]], dim=1)

    def unknowns(self, path: Tensor) -> Tensor:
        """The unknowns of a full path (end points stripped when fixed)."""
        if path.dim() != 3 or tuple(path.shape[1:]) != (self.n_points, self.dim):
            raise ValueError(f"a path must have shape (B, {self.n_points}, {self.dim}), got "
                             f"{tuple(path.shape)}")
        return path if self.boundary == "periodic" else path[:, 1:-1]

    # -- checks ----------------------------------------------------------------------------------
    def check_unknowns(self, Q: Tensor) -> None:
        if Q.dim() != 3 or tuple(Q.shape[1:]) != self.unknown_shape:
            raise ValueError(f"unknowns must have shape (B, {self.unknown_shape[0]}, "
                             f"{self.unknown_shape[1]}) ({self.boundary} ends, {self.steps} "
                             f"steps), got {tuple(Q.shape)}")

    def check_drive(self, x: Tensor | None, batch: int) -> None:
        width = int(getattr(self.lagrangian, "drive_dim", 0))
        if x is None:
            return
        if width == 0:
            raise ValueError("this Lagrangian takes no drive signal (x must be None)")
        if x.dim() != 3 or tuple(x.shape) != (batch, self.n_points, width):
            raise ValueError(f"drive x must have shape ({batch}, {self.n_points}, {width}) "
                             f"(batch, time points, drive width), got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("drive x contains NaN or infinite values")

    def check_targets(self, y: Tensor | None, batch: int) -> None:
        if y is None:
            return
        if self.cost is None:
            raise ValueError("targets given but the action has no cost")
        width = getattr(self.cost, "width", None)
        if y.dim() != 3 or y.shape[0] != batch or y.shape[1] != self.n_points or (
                width is not None and y.shape[2] != width):
            raise ValueError(f"targets y must have shape ({batch}, {self.n_points}, "
                             f"{width if width is not None else 'n_observed'}), got "
                             f"{tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("targets y contain NaN or infinite values")

    # -- functionals -----------------------------------------------------------------------------
    def action(self, Q: Tensor, x: Tensor | None = None, ends: Tensor | None = None) -> Tensor:
        """S per sample, ``(B,)``."""
        q = self.path(Q, ends)
        t = self.times(q.dtype, q.device)
        dt = self.dt
        if self.boundary == "periodic":
            q1 = torch.roll(q, -1, dims=1)
            t1 = t + dt
            x1 = None if x is None else torch.roll(x, -1, dims=1)
            q0, t0, x0 = q, t, x
        else:
            q0, q1, t0, t1 = q[:, :-1], q[:, 1:], t[:-1], t[1:]
            x0 = None if x is None else x[:, :-1]
            x1 = None if x is None else x[:, 1:]
        v = (q1 - q0) / dt
        lag = self.lagrangian
        if self.quadrature == "trapezoid":
            dens = 0.5 * (lag(q0, v, t0, x0) + lag(q1, v, t1, x1))
        else:
            xm = None if x is None else 0.5 * (x0 + x1)
            dens = lag(0.5 * (q0 + q1), v, t0 + 0.5 * dt, xm)
        return dt * dens.sum(dim=1)

    def cost_value(self, Q: Tensor, y: Tensor, ends: Tensor | None = None) -> Tensor:
        """C per sample, ``(B,)``."""
        if self.cost is None:
            raise ValueError("this action has no cost")
        q = self.path(Q, ends)
        return (self.cost(q, y) * self.weights(q.dtype, q.device)).sum(dim=1)

    def total(self, Q: Tensor, x: Tensor | None = None, y: Tensor | None = None,
              beta: float = 0.0, ends: Tensor | None = None) -> Tensor:
        """F = S + β C per sample."""
        s = self.action(Q, x, ends)
        if beta == 0:
            return s
        if y is None:
            raise ValueError("a nonzero nudge β needs targets y")
        return s + beta * self.cost_value(Q, y, ends)

    def stationarity(self, Q: Tensor, x: Tensor | None = None, y: Tensor | None = None,
                     beta: float = 0.0, ends: Tensor | None = None, *,
                     create_graph: bool = False) -> Tensor:
        """∂F/∂Q, same shape as Q (the discrete Euler–Lagrange equations times Δt)."""
        with torch.enable_grad():
            q = Q if Q.requires_grad else Q.detach().requires_grad_(True)
            f = self.total(q, x, y, beta, ends)
            g, = torch.autograd.grad(f.sum(), q, create_graph=create_graph or Q.requires_grad)
        return g
