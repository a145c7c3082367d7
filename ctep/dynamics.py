"""The vector field of a network: τ ⊙ ds/dt = drive(s), F = E + β·ℓ(s_L, y).

For a gradient-form energy the drive is ``−∂F/∂s``, so ``ds/dt = −τ⁻¹ ⊙ ∂F/∂s``; other forms
(the bounded primitive form, skew-gradient fields) define their own drive with the same roots as
∂F/∂s. The **residual** used to decide convergence is ``‖drive‖∞`` per sample
(= ``‖∂F/∂s‖∞`` for gradient fields): it does not depend on τ, unlike ``‖ds/dt‖``, which
under-reports slow neurons (SOLVER_NOTES.md §2, THEORY.md §10).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ._states import States, per_sample_max_abs
from .energies.base import Energy
from .losses import Cost, get_cost
from .timeconstants import TimeConstants, check_tau

GRADIENT_MODES = ("closed_form", "autograd")


class VectorField(nn.Module):
    """An energy, a nudge cost and per-neuron time constants.

    Args:
        energy: the network's energy.
        cost: nudge cost ℓ (a :class:`~ctep.losses.Cost` or a name); default squared error.
        tau: a :class:`~ctep.timeconstants.TimeConstants` (default τ = 1 everywhere).
        gradient: ``"closed_form"`` (hand-written ∂F/∂s, the default) or ``"autograd"``.
    """

    def __init__(self, energy: Energy, cost: Cost | str = "squared_error",
                 tau: TimeConstants | None = None, *, gradient: str = "closed_form") -> None:
        super().__init__()
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"unknown gradient mode {gradient!r}; known: "
                             f"{', '.join(GRADIENT_MODES)}")
        self.energy = energy
        self.cost = get_cost(cost)
        if tau is None:
            p = next(iter(energy.parameters()), None)
            tau = TimeConstants.constant(energy.state_shapes,
                                         dtype=p.dtype if p is not None else None,
                                         device=p.device if p is not None else None)
        check_tau(tau(), energy.state_shapes)
        self.tau = tau
        self.gradient = gradient

    def learnable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters EP trains: the energy's and the cost's (not τ)."""
        yield from self.energy.parameters()
        yield from self.cost.parameters()

    def bind(self, x: Tensor, y: Tensor | None = None, beta: float | complex = 0.0) -> BoundField:
        """The field for one batch and one nudge: a torchdiffeq-compatible ``f(t, s)``.

        Inputs are checked here, once, and not in the hot loop.
        """
        self.energy.check_input(x)
        if beta != 0:
            if y is None:
                raise ValueError("a nonzero nudge β needs targets y")
            self.cost.check_targets(y, x.shape[0])
        return BoundField(self, x, y, beta)

    def loss(self, states: States, y: Tensor) -> Tensor:
        """ℓ(s_L, y) per sample."""
        return self.cost(states[-1], y)

    def total_energy(self, x: Tensor, states: States, y: Tensor | None = None,
                     beta: float | complex = 0.0) -> Tensor:
        """F = E + β·ℓ per sample."""
        e = self.energy.energy(x, states)
        return e if beta == 0 else e + beta * self.cost(states[-1], y)


class BoundField:
    """The vector field at fixed (x, y, β): call it as ``f(t, s)`` (torchdiffeq convention).

    Counts its evaluations in :attr:`nfe`.
    """

    def __init__(self, field: VectorField, x: Tensor, y: Tensor | None,
                 beta: float | complex) -> None:
        self.field = field
        self.x = x
        self.y = y
        self.beta = beta
        self.inv_tau = tuple(t.detach() for t in field.tau.inverse())
        self.nfe = 0

    @property
    def energy(self) -> Energy:
        return self.field.energy

    def nudge(self, states: States) -> Tensor | None:
        """n = β ∂ℓ/∂s_L (closed form, or autograd in ``gradient="autograd"`` mode)."""
        if self.beta == 0:
            return None
        out = states[-1]
        if self.field.gradient == "autograd":
            with torch.enable_grad():
                o = out.detach().requires_grad_(True)
                g, = torch.autograd.grad(self.field.cost(o, self.y).sum(), o)
            return self.beta * g
        return self.beta * self.field.cost.grad_output(out, self.y)

    def drive(self, states: States) -> States:
        """τ ⊙ ds/dt (τ-free): ``−∂F/∂s`` for gradient fields."""
        self.nfe += 1
        return self.energy.drive(self.x, tuple(states), self.nudge(states),
                                 autograd=self.field.gradient == "autograd")

    def __call__(self, t: Tensor | float, states: States) -> States:
        """ds/dt = τ⁻¹ ⊙ drive(s)."""
        return tuple(d * it for d, it in zip(self.drive(states), self.inv_tau, strict=True))

    def stationarity(self, states: States) -> States:
        """The map whose roots are the equilibria (for Newton and implicit differentiation)."""
        return self.energy.stationarity(self.x, tuple(states), self.nudge(states))

    def residual(self, states: States) -> Tensor:
        """‖τ ⊙ ds/dt‖∞ per sample, shape ``(B,)`` (= ‖∂F/∂s‖∞ for gradient fields)."""
        return per_sample_max_abs(self.drive(states))

