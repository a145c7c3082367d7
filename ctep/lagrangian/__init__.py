"""Lagrangian EP: stationary trajectories of a discretised action, nudged by β·C[q].

A trajectory q(t) over a period (periodic ends) or between fixed end points is a stationary
point — usually a saddle — of S[q; θ] = ∫ L(q, q̇, t; θ) dt. Nudging S with β·C[q] and
differentiating ∂S/∂θ along the nudged and free trajectories gives dC/dθ (Massar 2025; THEORY
§5). Relaxation is Newton root finding on the discrete Euler–Lagrange equations.
"""

from .action import DiscreteAction, TrackingCost
from .check import (
    LagrangianProblem,
    gradient_check,
    oscillator_chain_problem,
    response_gain,
    small_instance,
)
from .ep import ActionEstimate, action_ep, action_loss, implicit_action_gradient
from .krylov import KrylovResult, minres
from .lagrangian import Lagrangian, OscillatorChain
from .newton import NewtonResult, newton
from .solve import (
    IllConditionedWarning,
    NewtonConfig,
    NewtonError,
    StationaryTrajectory,
    action_hessian,
    solve_trajectory,
)

__all__ = [
    "ActionEstimate",
    "DiscreteAction",
    "IllConditionedWarning",
    "KrylovResult",
    "Lagrangian",
    "LagrangianProblem",
    "NewtonConfig",
    "NewtonError",
    "NewtonResult",
    "OscillatorChain",
    "StationaryTrajectory",
    "TrackingCost",
    "action_ep",
    "action_hessian",
    "action_loss",
    "gradient_check",
    "implicit_action_gradient",
    "minres",
    "newton",
    "oscillator_chain_problem",
    "response_gain",
    "small_instance",
    "solve_trajectory",
]
