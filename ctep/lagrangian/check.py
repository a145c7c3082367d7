"""Gradient check of Lagrangian EP on a small random oscillator chain (for ``ctep verify``).

:func:`small_instance` draws a driven chain away from resonance (checked: condition number of
the action's Hessian, redrawn otherwise) whose free stationary trajectory Newton finds;
:func:`gradient_check` compares each EP estimator at each β with implicit differentiation of the
cost of the same discrete trajectory. The report has the layout of
:func:`ctep.verify.run_verification`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .._linalg import checked_solve, spectral_norm
from ..reference import compare
from .action import DiscreteAction, TrackingCost
from .ep import action_ep, implicit_action_gradient
from .lagrangian import OscillatorChain
from .solve import IllConditionedWarning, NewtonConfig, action_hessian, solve_trajectory

CHECK_NEWTON = NewtonConfig(tol=1e-11, max_iter=50)


@dataclass
class LagrangianProblem:
    """A driven oscillator chain on a time grid: ``action``, drive ``x``, targets ``y`` and
    (fixed boundary) end points ``ends``."""

    action: DiscreteAction
    x: Tensor
    y: Tensor
    ends: Tensor | None = None


def oscillator_chain_problem(stiffness, coupling, *, anharmonicity: float = 0.0,
                             steps: int = 64, duration: float = 2 * math.pi,
                             boundary: str = "periodic", observed: int = -1,
                             drive: Tensor | None = None, target: Tensor | None = None,
                             dtype: torch.dtype | None = None) -> LagrangianProblem:
    """A chain driven on oscillator 0 by ``drive`` (default cos t, shape ``(B, P)`` or
    ``(P,)``) whose oscillator ``observed`` should follow ``target`` (default 0.3 sin(t + 0.5)).
    """
    lag = OscillatorChain(stiffness, coupling, anharmonicity=anharmonicity, dtype=dtype)
    d = lag.dim
    obs = observed % d
    action = DiscreteAction(lag, steps=steps, duration=duration, boundary=boundary,
                            cost=TrackingCost([obs], d))
    t = action.times(lag.stiffness.dtype)
    x = torch.cos(t) if drive is None else drive
    y = 0.3 * torch.sin(t + 0.5) if target is None else target
    x = x.reshape(-1, action.n_points, 1).to(lag.stiffness.dtype)
    y = y.reshape(-1, action.n_points, 1).to(lag.stiffness.dtype)
    return LagrangianProblem(action, x, y, None)


def small_instance(seed: int = 0, dtype: torch.dtype = torch.float64, *,
                   boundary: str | None = None, dim: int | None = None, steps: int | None = None,
                   batch: int = 2, max_gain: float = 3.0, max_misfit: float = 1.0,
                   max_draws: int = 100) -> LagrangianProblem:
    """A random small driven oscillator chain, away from resonance, with teacher targets.

    Drawn from ``torch.Generator().manual_seed(seed)``: d ∈ [2, 4] oscillators, K ∈ {16, 24,
    32} steps over 𝒯 = 2π, periodic or fixed ends (zero end points), stiffness k ~ U(0.3, 3),
    couplings κ ~ U(0.1, 1), anharmonicity α ~ U(0, 0.2) (the same for all) and a drive
    A cos(t + φ) on oscillator 0 per sample (A ~ U(0.2, 0.6)). The target of the last
    oscillator is its stationary trajectory under a teacher chain with k and κ each perturbed
    by ±(10–25) % (random sign), so that the loss gradient is not accidentally small.

    A draw is rejected when Newton fails (student or teacher), when the response gain
    ‖H⁻¹P‖₂ (H = ∂²S/∂Q², P = ∂²C/∂Q² at the free trajectory) exceeds ``max_gain``, or when
    the relative misfit ‖q_obs − y‖/‖q_obs‖ exceeds ``max_misfit``. The nudged trajectory
    moves by d₁β + d₂β² + ... with d₁ = −H⁻¹P(q − y) and d_{k+1} ∼ H⁻¹P d_k, so the centered
    estimator's relative bias grows like β²·gain²·(1 + misfit) and diverges at a resonance.
    """
    gen = torch.Generator().manual_seed(int(seed))

    def uniform(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)

    for _ in range(max_draws):
        d = dim or int(torch.randint(2, 5, (), generator=gen))
        k_steps = steps or (16, 24, 32)[int(torch.randint(0, 3, (), generator=gen))]
        bnd = boundary or ("periodic", "fixed")[int(torch.randint(0, 2, (), generator=gen))]
        k, kappa = uniform(0.3, 3.0, d), uniform(0.1, 1.0, d - 1)
        alpha = float(uniform(0.0, 0.2))
        amp, phase = uniform(0.2, 0.6, batch, 1), uniform(0, 2 * math.pi, batch, 1)
        k_teacher = k * (1 + _perturbation(gen, d))
        kappa_teacher = kappa * (1 + _perturbation(gen, d - 1))
        action = _chain_action(k, kappa, alpha, k_steps, bnd, dtype)
        teacher = _chain_action(k_teacher, kappa_teacher, alpha, k_steps, bnd, dtype)
        t = action.times(torch.float64)
        x = (amp * torch.cos(t + phase)).unsqueeze(-1).to(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IllConditionedWarning)
            taught = solve_trajectory(teacher, x, config=CHECK_NEWTON)
            if not bool(taught.converged.all()):
                continue
            y = taught.path[..., d - 1:].detach()
            free = solve_trajectory(action, x, config=CHECK_NEWTON)
        if not bool(free.converged.all()):
            continue
        q_obs = free.path[..., d - 1:]
        misfit = float((torch.linalg.vector_norm(q_obs - y, dim=(1, 2))
                        / torch.linalg.vector_norm(q_obs, dim=(1, 2))).max())
        if misfit <= max_misfit and response_gain(action, free.Q, x, y) <= max_gain:
            return LagrangianProblem(action, x, y, None)
    raise RuntimeError(f"no well-conditioned oscillator chain in {max_draws} draws (seed {seed})")


def _perturbation(gen: torch.Generator, n: int) -> Tensor:
    """n relative changes of size U(0.1, 0.25) with random signs."""
    size = 0.1 + 0.15 * torch.rand(n, generator=gen, dtype=torch.float64)
    sign = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return size * sign


def _chain_action(k: Tensor, kappa: Tensor, alpha: float, steps: int, boundary: str,
                  dtype: torch.dtype) -> DiscreteAction:
    d = k.numel()
    lag = OscillatorChain(k, kappa, anharmonicity=alpha, dtype=dtype)
    return DiscreteAction(lag, steps=steps, duration=2 * math.pi, boundary=boundary,
                          cost=TrackingCost([d - 1], d))


def response_gain(action: DiscreteAction, Q: Tensor, x: Tensor | None, y: Tensor,
                  ends: Tensor | None = None) -> float:
    """max over samples of ‖H⁻¹P‖₂, H = ∂²S/∂Q², P = ∂²C/∂Q² (dense; small problems): how far
    the nudge β·C moves the trajectory, relative to β; infinite at a resonance."""
    hes = action_hessian(action, Q, x, None, 0.0, ends).double()
    pc = action_hessian(action, Q, x, y, 1.0, ends).double() - hes
    m = checked_solve(hes, pc)
    return float(spectral_norm(m).max())


def gradient_check(seed: int = 0, dtype: torch.dtype = torch.float64,
                   betas: tuple[float, ...] = (1e-1, 1e-2, 1e-3),
                   estimators: tuple[str, ...] = ("one-sided", "centered"),
                   config: NewtonConfig | None = None) -> dict:
    """EP on the action vs implicit differentiation on :func:`small_instance` ``(seed, dtype)``.

    Returns ``{"results": [records], "parameters": [...], "equilibrium": {...}, "config":
    {...}}``; each record has ``estimator, reference, beta, rel_error, cosine, sign_agreement,
    max_abs_error, per_parameter``. Raises :class:`~ctep.lagrangian.solve.NewtonError` when a
    phase has no stationary trajectory.
    """
    cfg = config or CHECK_NEWTON
    prob = small_instance(seed, dtype)
    action, x, y = prob.action, prob.x, prob.y
    free = solve_trajectory(action, x, config=cfg)
    free.check()
    ref = implicit_action_gradient(action, x, y, free)
    results = []
    for name in estimators:
        for beta in betas:
            out = action_ep(action, x, y, estimator=name, beta=beta, config=cfg, free=free)
            per = [compare((g,), (r,))["rel_error"] for g, r in zip(out.grads, ref, strict=True)]
            results.append({"estimator": name, "reference": "implicit", "beta": float(beta),
                            **compare(out.grads, ref), "per_parameter": per})
    summary = free.summary()
    names = [f"lagrangian.{n}" for n, _ in action.lagrangian.named_parameters()]
    return {
        "results": results,
        "parameters": names,
        "equilibrium": {
            "residual_max": summary["residual_max"],
            "newton_iterations_max": summary["iterations_max"],
            "hessian_negative": int(free.hessian_negative.min()),
            "hessian_positive": int(free.hessian_positive.min()),
            "condition_max": summary["condition_max"],
        },
        "config": {"model": "oscillator-chain", "seed": int(seed), "dtype": str(dtype),
                   "oscillators": action.dim, "steps": action.steps,
                   "boundary": action.boundary, "batch": int(x.shape[0]), "tol": cfg.tol,
                   "betas": list(betas), "estimators": list(estimators)},
    }
