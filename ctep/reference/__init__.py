"""Reference gradients to verify EP estimators against, and comparison metrics.

Every reference has the signature ``ref(field, x, y, free, relax_config) -> grads`` (a tuple
aligned with ``field.learnable_parameters()``) and is registered in :data:`REFERENCES` under its
name, so ``ctep verify --references`` can take it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..dynamics import VectorField
from ..solve import Equilibrium, RelaxConfig
from .bptt import bptt_gradient
from .implicit import implicit_gradient
from .metrics import compare

ReferenceFn = Callable[[VectorField, Tensor, Tensor, Equilibrium, RelaxConfig], tuple[Tensor, ...]]


def _implicit(field: VectorField, x: Tensor, y: Tensor, free: Equilibrium,
              relax_config: RelaxConfig) -> tuple[Tensor, ...]:
    """Implicit differentiation at the free equilibrium (dense per-sample solve)."""
    return implicit_gradient(field, x, y, free.states)


def _bptt(field: VectorField, x: Tensor, y: Tensor, free: Equilibrium,
          relax_config: RelaxConfig) -> tuple[Tensor, ...]:
    """BPTT through 500 steps of the damped map (the relaxation's damping) from the free
    equilibrium."""
    return bptt_gradient(field, x, y, free.states, steps=500, damping=relax_config.damping)


REFERENCES: dict[str, ReferenceFn] = {"implicit": _implicit, "bptt": _bptt}


def get_reference(name: str) -> ReferenceFn:
    """A reference gradient by name (see :data:`REFERENCES`)."""
    if name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; known: {', '.join(REFERENCES)}")
    return REFERENCES[name]


__all__ = ["REFERENCES", "ReferenceFn", "bptt_gradient", "compare", "get_reference",
           "implicit_gradient"]
