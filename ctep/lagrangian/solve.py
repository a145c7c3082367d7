"""Stationary trajectories of a discretised action: Newton on ∂(S + βC)/∂Q = 0.

"Relaxation" of a Lagrangian system is root finding, not descent: the stationary trajectory is
usually a saddle of the action. :func:`solve_trajectory` runs the batched Newton method of
:mod:`ctep.lagrangian.newton` (dense LU for small problems, MINRES on Hessian-vector products for
large ones) with a per-sample status (:class:`ctep.solve.Status`), and — for the dense solver —
reports the inertia and conditioning of the Hessian ∂²F/∂Q² at the solution. The Hessian must be
invertible (no resonance: for a periodic linear chain, no normal-mode frequency ω with
ω·𝒯/(2π) an integer, up to discretisation); an ill-conditioned one triggers
:class:`IllConditionedWarning`, since the EP estimate and the implicit gradient both lose
accuracy in proportion to the condition number.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .._linalg import batched_jacobian, checked_eigvalsh
from ..solve import RelaxationError, Status
from .action import DiscreteAction
from .newton import LINEAR_SOLVERS, newton


class NewtonError(RelaxationError):
    """Newton's method did not find a stationary trajectory."""


class IllConditionedWarning(UserWarning):
    """The Hessian of the action at the stationary trajectory is close to singular (resonance)."""


@dataclass(frozen=True)
class NewtonConfig:
    """Settings of :func:`solve_trajectory`.

    Attributes:
        tol: residual tolerance on ‖∂F/∂Q‖∞/Δt (the discrete Euler–Lagrange equations,
            independent of the grid spacing).
        max_iter: Newton iterations at most.
        linear_solver: ``"dense"`` (LU of the per-sample Hessian: up to a few hundred unknowns)
            or ``"minres"`` (Hessian-vector products; any size).
        krylov_tol, krylov_max_iter: MINRES settings.
        backtrack: step halvings of the line search.
        diverge_at: |q| beyond this counts as diverged.
        diagnose: dense solver only: eigenvalues of the Hessian at the solution (inertia,
            condition number).
        warn_condition: warn (:class:`IllConditionedWarning`) above this condition number.
    """

    tol: float = 1e-10
    max_iter: int = 50
    linear_solver: str = "dense"
    krylov_tol: float = 1e-12
    krylov_max_iter: int | None = None
    backtrack: int = 12
    diverge_at: float = 1e8
    diagnose: bool = True
    warn_condition: float = 1e8

    def replace(self, **changes) -> NewtonConfig:
        return replace(self, **changes)


@dataclass
class StationaryTrajectory:
    """A solution of ∂(S + βC)/∂Q = 0 per sample.

    Attributes:
        Q: the unknowns ``(B, K or K − 1, d)``; ``path`` the full path ``(B, P, d)``.
        residual: ‖∂F/∂Q‖∞/Δt per sample; status: :class:`ctep.solve.Status` codes.
        iterations: Newton iterations per sample.
        beta: the nudge of this phase.
        hessian_negative, hessian_positive: numbers of negative / positive eigenvalues of
            ∂²F/∂Q² (both nonzero: a saddle); condition: |λ|max/|λ|min (dense solver only).
    """

    Q: Tensor
    path: Tensor
    residual: Tensor
    status: Tensor
    iterations: Tensor
    beta: float
    tol: float
    message: str = ""
    hessian_negative: Tensor | None = None
    hessian_positive: Tensor | None = None
    condition: Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def converged(self) -> Tensor:
        return self.status == Status.CONVERGED

    def summary(self) -> dict[str, float]:
        n = max(self.status.numel(), 1)
        out = {f"frac_{s.name.lower()}": float((self.status == s).sum()) / n for s in Status}
        r = self.residual[torch.isfinite(self.residual)]
        out["residual_max"] = float(r.max()) if r.numel() else float("nan")
        out["iterations_max"] = float(self.iterations.max())
        if self.condition is not None:
            out["condition_max"] = float(self.condition.max())
            out["hessian_negative_min"] = float(self.hessian_negative.min())
            out["hessian_positive_min"] = float(self.hessian_positive.min())
        return out

    def check(self) -> None:
        """Raise :class:`NewtonError` unless every sample converged."""
        bad = ~self.converged
        if not bool(bad.any()):
            return
        idx = torch.nonzero(bad).flatten()
        names = sorted({Status(int(self.status[i])).name for i in idx})
        raise NewtonError(
            f"{int(bad.sum())} of {bad.numel()} samples have no stationary trajectory "
            f"(β = {self.beta:g}; {', '.join(names)}; samples {idx[:10].tolist()}): residual "
            f"{float(self.residual[idx].max()):.3g} > tol {self.tol:g}. {self.message}".strip())


def _fn(action: DiscreteAction, x: Tensor | None, y: Tensor | None, beta: float,
        ends: Tensor | None):
    shape = action.unknown_shape

    def fn(z: Tensor, idx: Tensor) -> Tensor:
        q = z.reshape(z.shape[0], *shape)
        sub = None if ends is None else ends[idx]
        g = action.stationarity(q, None if x is None else x[idx], None if y is None else y[idx],
                                beta, sub)
        return g.reshape(z.shape[0], -1)

    return fn


def _batch_ends(action: DiscreteAction, ends: Tensor | None, batch: int,
                like: Tensor) -> Tensor | None:
    return action._ends(ends, batch, like)


def solve_trajectory(action: DiscreteAction, x: Tensor | None = None, y: Tensor | None = None,
                     beta: float = 0.0, *, ends: Tensor | None = None, Q0: Tensor | None = None,
                     batch: int | None = None, config: NewtonConfig | None = None
                     ) -> StationaryTrajectory:
    """The stationary trajectory of F = S + βC per sample, by Newton from ``Q0`` (zeros).

    Args:
        x: drive ``(B, P, d_x)`` or None; y: targets ``(B, P, n_obs)`` (needed when β ≠ 0).
        ends: fixed end points ``(2, d)`` or ``(B, 2, d)`` (fixed boundary only; default 0).
        Q0: initial guess ``(B, ...)`` (a warm start: the free trajectory for nudged phases).
        batch: B when neither x, y nor Q0 gives it.

    Never raises for a sample that fails: see ``status`` and :meth:`StationaryTrajectory.check`.
    """
    cfg = config or NewtonConfig()
    if cfg.linear_solver not in LINEAR_SOLVERS:
        raise ValueError(f"unknown linear solver {cfg.linear_solver!r}; known: "
                         f"{', '.join(LINEAR_SOLVERS)}")
    if not isinstance(beta, (int, float)):
        raise TypeError(f"β must be a real number for a Lagrangian action, got {beta!r}")
    b = _batch_size(x, y, Q0, ends, batch)
    params = list(action.learnable_parameters())
    dtype = params[0].dtype if params else torch.get_default_dtype()
    device = params[0].device if params else None
    action.check_drive(x, b)
    action.check_targets(y, b)
    if beta != 0 and y is None:
        raise ValueError("a nonzero nudge β needs targets y")
    if Q0 is None:
        Q0 = torch.zeros(b, *action.unknown_shape, dtype=dtype, device=device)
    action.check_unknowns(Q0)
    e = _batch_ends(action, ends, b, Q0)
    fn = _fn(action, x, y, float(beta), e)
    res = newton(fn, Q0.detach().reshape(b, -1), tol=cfg.tol, max_iter=cfg.max_iter,
                 linear_solver=cfg.linear_solver, krylov_tol=cfg.krylov_tol,
                 krylov_max_iter=cfg.krylov_max_iter, backtrack=cfg.backtrack,
                 diverge_at=cfg.diverge_at, scale=1.0 / action.dt)
    Q = res.z.reshape(b, *action.unknown_shape)
    out = StationaryTrajectory(Q, action.path(Q, e).detach(), res.residual, res.status,
                               res.iterations, float(beta), cfg.tol, res.message)
    if cfg.diagnose and cfg.linear_solver == "dense":
        _diagnose(action, out, fn, cfg)
    return out


def action_hessian(action: DiscreteAction, Q: Tensor, x: Tensor | None = None,
                   y: Tensor | None = None, beta: float = 0.0,
                   ends: Tensor | None = None) -> Tensor:
    """∂²F/∂Q² per sample, ``(B, n, n)`` with n = Q[0].numel() (dense: small problems)."""
    b = Q.shape[0]
    e = _batch_ends(action, ends, b, Q)
    fn = _fn(action, x, y, float(beta), e)
    idx = torch.arange(b, device=Q.device)
    return batched_jacobian(lambda s: (fn(s[0], idx),), (Q.detach().reshape(b, -1),))


def _diagnose(action: DiscreteAction, out: StationaryTrajectory, fn, cfg: NewtonConfig) -> None:
    b = out.Q.shape[0]
    ok = torch.isfinite(out.Q.reshape(b, -1)).all(dim=1)
    dev = out.Q.device
    neg = torch.zeros(b, dtype=torch.int64, device=dev)
    pos = torch.zeros(b, dtype=torch.int64, device=dev)
    cond = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
    if bool(ok.any()):
        idx = torch.nonzero(ok).flatten()
        hes = batched_jacobian(lambda s: (fn(s[0], idx),), (out.Q[idx].reshape(idx.numel(), -1),))
        hes = hes.detach().to(torch.float64)
        ev = checked_eigvalsh(0.5 * (hes + hes.transpose(1, 2)))
        mag = ev.abs()
        small = 1e-13 * mag.amax(dim=1, keepdim=True)
        neg[idx] = (ev < -small).sum(dim=1)
        pos[idx] = (ev > small).sum(dim=1)
        cond[idx] = mag.amax(dim=1) / mag.amin(dim=1).clamp_min(1e-300)
    out.hessian_negative, out.hessian_positive, out.condition = neg, pos, cond
    bad = ok & (cond > cfg.warn_condition)
    if bool(bad.any()):
        warnings.warn(
            f"the action's Hessian is ill-conditioned at the stationary trajectory (condition "
            f"{float(cond[bad].max()):.3g} > {cfg.warn_condition:g} for samples "
            f"{torch.nonzero(bad).flatten()[:10].tolist()}): near resonance, EP estimates and "
            "implicit gradients lose about log10(condition) digits", IllConditionedWarning,
            stacklevel=3)


def _batch_size(x: Tensor | None, y: Tensor | None, Q0: Tensor | None, ends: Tensor | None,
                batch: int | None) -> int:
    for t in (x, y, Q0):
        if t is not None:
            return int(t.shape[0])
    if ends is not None and ends.dim() == 3:
        return int(ends.shape[0])
    if batch is None:
        raise ValueError("batch size unknown: pass x, y, Q0 or batch=")
    return int(batch)
