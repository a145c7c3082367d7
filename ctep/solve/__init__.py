"""Relaxation to equilibrium."""

from ._torchdiffeq import TORCHDIFFEQ_METHODS
from .config import RelaxConfig
from .equilibrium import Equilibrium, GridPath, RelaxationError, Status, Trajectory
from .methods import (
    FAMILIES,
    Method,
    available_methods,
    get_method,
    methods_of,
    register_method,
    unregister_method,
)
from .relax import newton_polish, relax

__all__ = [
    "FAMILIES",
    "TORCHDIFFEQ_METHODS",
    "Equilibrium",
    "GridPath",
    "Method",
    "RelaxConfig",
    "RelaxationError",
    "Status",
    "Trajectory",
    "available_methods",
    "get_method",
    "methods_of",
    "newton_polish",
    "register_method",
    "relax",
    "unregister_method",
]
