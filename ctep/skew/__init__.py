"""Skew-gradient EP: dynamics that descend a scalar H in some coordinates and ascend it in
others (FitzHugh–Nagumo activator/inhibitor pairs), τ ⊙ ds/dt = −σ ⊙ ∂(H + βℓ)/∂s.

Equilibria are saddles of H, yet EP and implicit differentiation hold there; whether the
dynamics reach them is a separate question, answered by the eigenvalues of the flow's Jacobian
(THEORY §6).
"""

from .check import gradient_check, small_instance
from .fhn import FitzHughNagumo, UnitSquaredError, fitzhugh_nagumo
from .field import (
    SignedEnergy,
    SkewEnergy,
    SkewGradientField,
    Stability,
    StabilityReport,
    StableEP,
    UnstableEquilibriumError,
    find_critical_point,
    settle,
)

__all__ = [
    "FitzHughNagumo",
    "SignedEnergy",
    "SkewEnergy",
    "SkewGradientField",
    "Stability",
    "StabilityReport",
    "StableEP",
    "UnitSquaredError",
    "UnstableEquilibriumError",
    "find_critical_point",
    "fitzhugh_nagumo",
    "gradient_check",
    "settle",
    "small_instance",
]
