"""How to relax: one dataclass shared by the estimators, references and the CLI."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RelaxConfig:
    """Settings of :func:`ctep.solve.relax`.

    Attributes:
        method: ``"fixed_point"`` (the damped map s ← s + h·drive: τ-free with h = damping
            when ``dt`` is None, per-neuron h_i = min(1, damping·dt/τ_i) when it is set),
            ``"anderson"`` (that map with Anderson acceleration, :mod:`ctep.solve.anderson`:
            same h, dt and damping, one evaluation per iteration), ``"exp_euler"``
            (exponential Euler with per-neuron factor h = 1 − exp(−dt/τ), exact for the unit
            leak −s/τ), ``"rk23"`` / ``"etd2"`` (per-sample adaptive Bogacki–Shampine 3(2)
            and exponential ETD2RK/ETD1 pairs, :mod:`ctep.solve.adaptive`: ``dt`` is their
            first step, ``rtol``/``atol`` their error tolerances, ``max_time`` their time cap),
            or any torchdiffeq method (``dopri5``, ``bosh3``, ``adaptive_heun``,
            ``euler``, ``midpoint``, ``rk4``, ...).
        tol: residual tolerance on ‖τ ⊙ ds/dt‖∞ (= ‖∂F/∂s‖∞ for gradient fields).
        max_steps: loops: iteration cap; torchdiffeq: cap on solver steps within one check window.
        max_time: torchdiffeq, ``rk23``, ``etd2``: time cap (default 500·τ_max).
        dt: step of fixed-step methods (default 0.5·τ_min for torchdiffeq's fixed-grid methods,
            τ_min for ``exp_euler``; ``fixed_point`` is τ-free unless dt is set, and then each
            neuron steps by h_i = min(1, damping·dt/τ_i), an Euler step of damping·dt in time,
            so a homogeneous τ = dt with damping 1 gives the plain map bit for bit).
        damping: h of ``fixed_point`` (1 gives the plain map s ← σ(∂Φ/∂s)); with ``dt`` set,
            a factor on every dt/τ_i.
        check_every: loops: iterations between residual checks (0: no checks in between: the
            residual is read at the start, where samples already within ``tol`` stop, and after
            ``max_steps``; no host synchronisation in the steps between).
        window: torchdiffeq: time to the first residual check (default τ_max); each later window
            is ``window_growth`` times longer.
        window_growth: growth factor of the check windows (≥ 1).
        rtol, atol: local error tolerances (max norm) of torchdiffeq's adaptive methods and of
            ``rk23``/``etd2`` (which need atol > 0). Defaults: rtol = min(1e-3, tol) and
            atol = tol/10. Looser values leave the residual on a floor above
            tol once τ is heterogeneous (SOLVER_NOTES.md §2; measured here: rtol 1e-3 stalls at
            2e-4 with gamma τ of spread 1); tighter ones cost evaluations for nothing.
        memory: ``anderson``: m, the number of past iterate differences mixed (≥ 1).
        anderson_reg: ``anderson``: relative Tikhonov regularisation λ = reg·tr(ΔFᵀΔF)/m_k of
            its least-squares problem, m_k ≤ m the differences in use (> 0).
        anderson_restart: ``anderson``: a sample whose map residual ‖G(s) − s‖∞ exceeds this
            factor times its best so far drops its history and restarts from its best iterate.
        polish: Newton steps after the relaxation (dense per-sample Jacobian: small nets only).
        record: keep the trajectory at the check times.
        diverge_at: states beyond this magnitude count as diverged.
    """

    method: str = "fixed_point"
    tol: float = 1e-6
    max_steps: int = 10_000
    max_time: float | None = None
    dt: float | None = None
    damping: float = 1.0
    check_every: int = 1
    window: float | None = None
    window_growth: float = 1.5
    rtol: float | None = None
    atol: float | None = None
    memory: int = 5
    anderson_reg: float = 1e-10
    anderson_restart: float = 100.0
    polish: int = 0
    record: bool = False
    diverge_at: float = 1e8

    def __post_init__(self) -> None:
        """The checks that hold for every method (method-specific ones, such as ``dt`` and
        ``damping`` of the map, are made by the method that reads them)."""
        def whole(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"RelaxConfig.{name} must be an integer ≥ {low}, got {v!r}")

        whole("max_steps", 1)
        whole("check_every", 0)
        whole("polish", 0)
        if not (isinstance(self.tol, numbers.Real) and math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"RelaxConfig.tol must be finite and ≥ 0, got {self.tol!r}")
        if not (isinstance(self.diverge_at, numbers.Real) and self.diverge_at > 0):
            raise ValueError(f"RelaxConfig.diverge_at must be > 0 (math.inf: only non-finite "
                             f"states diverge), got {self.diverge_at!r}")
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, numbers.Real) and math.isfinite(v)
                                      and v >= 0):
                raise ValueError(f"RelaxConfig.{name} must be None or finite and ≥ 0, got {v!r}")

    def replace(self, **changes) -> RelaxConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


def default_tolerances(cfg: RelaxConfig) -> tuple[float, float]:
    """(rtol, atol) of the error-controlled methods (torchdiffeq's, ``rk23``, ``etd2``): the
    config's, or rtol = min(1e-3, tol) and atol = tol/10, floored at 1e-13 and 1e-15."""
    rtol = cfg.rtol if cfg.rtol is not None else min(1e-3, max(cfg.tol, 1e-13))
    atol = cfg.atol if cfg.atol is not None else max(0.1 * cfg.tol, 1e-15)
    return rtol, atol
