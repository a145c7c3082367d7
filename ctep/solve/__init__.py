"""Relaxation to equilibrium."""

from .config import LOOP_METHODS, RelaxConfig
from .equilibrium import Equilibrium, RelaxationError, Status, Trajectory
from .relax import TORCHDIFFEQ_METHODS, available_methods, newton_polish, relax

__all__ = [
    "LOOP_METHODS",
    "TORCHDIFFEQ_METHODS",
    "Equilibrium",
    "RelaxConfig",
    "RelaxationError",
    "Status",
    "Trajectory",
    "available_methods",
    "newton_polish",
    "relax",
]
