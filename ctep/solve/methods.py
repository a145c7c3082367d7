"""The registry of relaxation methods: one :class:`Method` per name, asked by everything else.

A method declares its family, how it relaxes a batch to equilibrium (``relax``), how it
integrates a batch to given times (``on_grid``), and, for fixed-step loops, its step sizes.
:func:`ctep.solve.relax`, :func:`ctep.record.record_relaxation`, the plots, the sweep
summaries and the command lines read those declarations instead of testing names. Adding a
method is one :func:`register_method` call (a new scheme also needs its own module).

Families:

- ``"map"``: iterations of s ← clamp(s + h ⊙ drive(s)) (``fixed_point``; ``anderson``, its
  Anderson acceleration). τ-free unless ``dt`` is set, so their time axis then counts
  iterations.
- ``"loop"``: ctep's other fixed-step loops (``exp_euler``).
- ``"adaptive"``: ctep's per-sample adaptive integrators (``rk23``, ``etd2``). Every sample has
  its own time, so there are no common check times to record.
- ``"torchdiffeq"``: every method of ``torchdiffeq.odeint``, over check windows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from .._states import States
from ..dynamics import BoundField
from . import adaptive, loops
from ._torchdiffeq import TORCHDIFFEQ_METHODS, odeint_on_grid, relax_torchdiffeq
from .config import RelaxConfig
from .equilibrium import Equilibrium, GridPath

#: the families a method can belong to (see the module docstring)
FAMILIES = ("map", "loop", "adaptive", "torchdiffeq")

#: ``relax(field, s0, cfg)``: the equilibrium of every sample from checked initial states ``s0``
RelaxFn = Callable[[BoundField, States, RelaxConfig], Equilibrium]
#: ``on_grid(field, s0 or None, cfg, grid)``: every sample's states at the grid times
GridFn = Callable[[BoundField, "States | None", RelaxConfig, Tensor], GridPath]


@dataclass(frozen=True)
class Method:
    """A relaxation method.

    Attributes:
        name: the name :class:`~ctep.solve.RelaxConfig` takes.
        family: one of :data:`FAMILIES`.
        relax: relaxes a batch, each sample stopped on its own residual (runs under
            ``torch.no_grad``; the initial states are already checked and clamped).
        on_grid: the states of every sample at a grid of times (for
            :func:`ctep.record.record_relaxation` with ``times``).
        step_sizes: fixed-step loops only: ``(field, cfg) -> (h per layer, time per
            iteration)``; None for methods with step-size control.
        summary: one line for listings.
    """

    name: str
    family: str
    relax: RelaxFn
    on_grid: GridFn
    step_sizes: loops.StepSizes | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown method family {self.family!r}; known: "
                             f"{', '.join(FAMILIES)}")
        if (self.step_sizes is None) == (self.family in ("map", "loop")):
            raise ValueError(f"method {self.name!r}: step_sizes is required for the map and "
                             "loop families and meaningless for the others")

    @property
    def records_check_times(self) -> bool:
        """Whether ``relax(..., record=True)`` can record the batch at common check times."""
        return self.family != "adaptive"

    def counts_iterations(self, cfg: RelaxConfig) -> bool:
        """Whether the method's time is an iteration count (the τ-free map: ``dt`` unset)."""
        return self.family == "map" and cfg.dt is None


_METHODS: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` to overwrite a name); returns it."""
    if method.name in _METHODS and not replace:
        raise ValueError(f"a relaxation method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method from the registry (e.g. one a test registered)."""
    get_method(name)
    del _METHODS[name]


def get_method(name: str) -> Method:
    """The registered method called ``name``; a ``ValueError`` naming the known ones if none."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown relaxation method {name!r}; known: "
                         f"{', '.join(_METHODS)}") from None


def available_methods() -> tuple[str, ...]:
    """Every method name :func:`~ctep.solve.relax` accepts, in registration order."""
    return tuple(_METHODS)


def methods_of(family: str) -> tuple[str, ...]:
    """The registered methods of one family."""
    if family not in FAMILIES:
        raise ValueError(f"unknown method family {family!r}; known: {', '.join(FAMILIES)}")
    return tuple(name for name, m in _METHODS.items() if m.family == family)


def _loop_method(name: str, family: str, steps: loops.StepSizes, summary: str, *,
                 accelerate: bool = False) -> Method:
    return Method(name, family, partial(loops.relax_loop, steps=steps, accelerate=accelerate),
                  partial(loops.loop_on_grid, steps=steps, accelerate=accelerate), steps,
                  summary)


def _register_builtins() -> None:
    """ctep's loops, its adaptive integrators, then torchdiffeq's methods (sorted)."""
    builtins = (
        _loop_method("fixed_point", "map", loops.map_steps,
                     "the map s ← clamp(s + h ⊙ drive(s)), h = damping or min(1, damping·dt/τ)"),
        _loop_method("anderson", "map", loops.map_steps, "that map with Anderson acceleration",
                     accelerate=True),
        _loop_method("exp_euler", "loop", loops.exp_euler_steps,
                     "exponential Euler, h = 1 − exp(−dt/τ)"),
        *(Method(name, "adaptive", adaptive.relax_adaptive, adaptive.adaptive_on_grid,
                 summary=f"per-sample adaptive {name}") for name in adaptive.SCHEMES),
        *(Method(name, "torchdiffeq", relax_torchdiffeq, odeint_on_grid,
                 summary=f"torchdiffeq's {name} over check windows")
          for name in TORCHDIFFEQ_METHODS),
    )
    for method in builtins:
        register_method(method)


_register_builtins()
