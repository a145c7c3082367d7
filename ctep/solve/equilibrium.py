"""What a relaxation returns: states, per-sample statistics and status codes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._states import States


class Status(enum.IntEnum):
    """Per-sample outcome of a relaxation (stored as ``int8`` in :attr:`Equilibrium.status`)."""

    #: residual ‖τ ⊙ ds/dt‖∞ ≤ tol
    CONVERGED = 0
    #: the step / time budget ran out first
    MAX_STEPS = 1
    #: non-finite states, or states beyond the divergence threshold
    DIVERGED = 2
    #: torchdiffeq gave up (step-size underflow, or its step cap within one check window)
    SOLVER_FAILED = 3


@dataclass
class Trajectory:
    """States recorded at the check times: ``states[l]`` has shape ``(K, B, *shape_l)``."""

    times: Tensor
    states: States
    residual: Tensor


@dataclass
class GridPath:
    """Every sample's states at the times of a grid (what a method's ``on_grid`` returns).

    Attributes:
        states: ``states[l]`` of shape ``(K, B, *shape_l)``, one row per grid time.
        nfe, steps: field evaluations and solver steps per sample, shape ``(B,)``.
        t_diverged: for methods that check every step, the time at which each sample stopped
            (read for DIVERGED samples); None: the first grid time at which a sample's states
            are non-finite or beyond the divergence threshold is used.
    """

    states: States
    nfe: Tensor
    steps: Tensor
    t_diverged: Tensor | None = None


@dataclass
class Equilibrium:
    """The end of a relaxation, batch first.

    Attributes:
        states: the final states, one tensor per layer.
        residual: ‖τ ⊙ ds/dt‖∞ per sample at those states (τ-free).
        status: :class:`Status` code per sample.
        t: time at which each sample stopped (for ``fixed_point``: iterations).
        nfe: vector-field evaluations spent on each sample.
        steps: iterations (loops) or check windows (ODE solvers) per sample.
        method, tol: how it was obtained.
        trajectory: the path at the check times, when recording was asked for.
        message: what went wrong, when anything did.
    """

    states: States
    residual: Tensor
    status: Tensor
    t: Tensor
    nfe: Tensor
    steps: Tensor
    method: str
    tol: float
    trajectory: Trajectory | None = None
    message: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def converged(self) -> Tensor:
        """Boolean ``(B,)``: residual below tolerance."""
        return self.status == Status.CONVERGED

    @property
    def diverged(self) -> Tensor:
        return self.status == Status.DIVERGED

    def count(self, status: Status) -> int:
        return int((self.status == status).sum())

    def summary(self) -> dict[str, float]:
        """Batch statistics: fractions per status, residual max/mean, NFE mean/max, t max."""
        n = max(self.status.numel(), 1)
        out = {f"frac_{s.name.lower()}": self.count(s) / n for s in Status}
        r = self.residual.detach().double()
        finite = torch.isfinite(r)
        out.update(
            residual_max=float(r[finite].max()) if finite.any() else float("nan"),
            residual_mean=float(r[finite].mean()) if finite.any() else float("nan"),
            nfe_mean=float(self.nfe.double().mean()), nfe_max=float(self.nfe.max()),
            t_max=float(self.t.max()),
        )
        return out

    def check(self, *, allow_max_steps: bool = True) -> None:
        """Raise :class:`RelaxationError` if any sample diverged or the solver failed
        (or, with ``allow_max_steps=False``, did not converge)."""
        bad = (self.status == Status.DIVERGED) | (self.status == Status.SOLVER_FAILED)
        if not allow_max_steps:
            bad = bad | (self.status == Status.MAX_STEPS)
        if bool(bad.any()):
            idx = torch.nonzero(bad).flatten()[:10].tolist()
            names = sorted({Status(int(self.status[i])).name for i in idx})
            raise RelaxationError(
                f"{int(bad.sum())} of {self.status.numel()} samples did not reach equilibrium "
                f"({', '.join(names)}; samples {idx}{'...' if int(bad.sum()) > 10 else ''}) "
                f"with method {self.method!r}, tol {self.tol:g}, max residual "
                f"{float(self.residual.max()):.3g}. {self.message}".strip())


class RelaxationError(RuntimeError):
    """A relaxation did not produce a usable equilibrium."""
