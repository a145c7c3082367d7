"""Reference gradients to verify EP estimators against, and comparison metrics.

Every reference has the signature ``ref(field, x, y, free, relax_config) -> grads`` (a tuple
aligned with ``field.learnable_parameters()``) and is registered in :data:`REFERENCES` under its
name, so ``ctep verify --references`` can take it:

* ``implicit``: implicit differentiation at the free equilibrium (the gold reference);
* ``bptt``: backpropagation through 500 steps of the relaxation's map from the equilibrium
  (its damping, and for ``fixed_point``/``anderson`` its ``dt``: the same per-neuron steps);
* ``adjoint``: torchdiffeq ``odeint_adjoint`` of ℓ(s(T)) from the equilibrium over a horizon
  set by the slowest relaxation rate, in windows set by the fastest (smooth fields only).

:func:`gdu_check` is the step-by-step comparison of EP updates with BPTT (Ernoult et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..dynamics import VectorField
from ..solve import Equilibrium, RelaxConfig, get_method
from .adjoint import adjoint_gradient, relaxation_rates
from .bptt import bptt_gradient
from .gdu import GDUResult, gdu_check
from .implicit import implicit_gradient
from .metrics import compare

ReferenceFn = Callable[[VectorField, Tensor, Tensor, Equilibrium, RelaxConfig], tuple[Tensor, ...]]


def _implicit(field: VectorField, x: Tensor, y: Tensor, free: Equilibrium,
              relax_config: RelaxConfig) -> tuple[Tensor, ...]:
    """Implicit differentiation at the free equilibrium (dense per-sample solve)."""
    return implicit_gradient(field, x, y, free.states)


def _bptt(field: VectorField, x: Tensor, y: Tensor, free: Equilibrium,
          relax_config: RelaxConfig) -> tuple[Tensor, ...]:
    """BPTT through 500 steps of the relaxation's map from the free equilibrium: its damping
    and, when it iterates the map (``fixed_point``, ``anderson``), its ``dt``, so the steps are
    those of :func:`~ctep.solve.map_step.map_step_sizes`; other methods get the τ-free map."""
    dt = relax_config.dt if get_method(relax_config.method).family == "map" else None
    return bptt_gradient(field, x, y, free.states, steps=500, damping=relax_config.damping,
                         dt=dt)


def _adjoint(field: VectorField, x: Tensor, y: Tensor, free: Equilibrium,
             relax_config: RelaxConfig) -> tuple[Tensor, ...]:
    """``odeint_adjoint`` (dopri5, rtol 1e-9, atol 1e-11) from the free equilibrium over
    T = 20/λ_min, in windows of 8/λ_max (see :mod:`ctep.reference.adjoint`)."""
    return adjoint_gradient(field, x, y, free.states)


REFERENCES: dict[str, ReferenceFn] = {"implicit": _implicit, "bptt": _bptt, "adjoint": _adjoint}


def get_reference(name: str) -> ReferenceFn:
    """A reference gradient by name (see :data:`REFERENCES`)."""
    if name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; known: {', '.join(REFERENCES)}")
    return REFERENCES[name]


__all__ = ["REFERENCES", "GDUResult", "ReferenceFn", "adjoint_gradient", "bptt_gradient",
           "compare", "gdu_check", "get_reference", "implicit_gradient", "relaxation_rates"]
