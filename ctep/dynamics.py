"""The vector field of a network: τ ⊙ ds/dt = drive(s), F = E + β·ℓ(s_L, y).

For a gradient-form energy the drive is ``−∂F/∂s``, so ``ds/dt = −τ⁻¹ ⊙ ∂F/∂s``; other forms
(the bounded primitive form, skew-gradient fields) define their own drive with the same roots as
∂F/∂s. The **residual** used to decide convergence is ``‖drive‖∞`` per sample
(= ``‖∂F/∂s‖∞`` for gradient fields): it does not depend on τ, unlike ``‖ds/dt‖``, which
under-reports slow neurons (SOLVER_NOTES.md §2, THEORY.md §10).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ._states import States, per_sample_max_abs
from .energies.base import Energy, InputTerm
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

        Inputs are checked here, once, and not in the hot loop; the constant terms (the
        energy's input term, the cost's prepared targets) are computed here, once, for the
        weights as they are now (see :class:`BoundField`).
        """
        if not torch.is_tensor(x) or x.dim() == 0 or x.shape[0] == 0:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"bind needs a batch of at least one input (batch first), got "
                             f"{shape}")
        self.energy.check_input(x)
        _check_nudge(self, y, beta, x.shape[0])
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

    **Constant terms.** At construction (the bind) it computes, once, the energy's
    :meth:`~ctep.energies.base.Energy.input_term` of x (:attr:`input_term`, e.g. W₀x + b₀) and,
    for β ≠ 0, the cost's :meth:`~ctep.losses.Cost.prepare_targets` of y (:attr:`targets`, the
    one-hot matrix of class indices), and passes them to every evaluation; :meth:`restrict`
    cuts both by rows. They are those of the weights at bind time: a field bound before an
    optimizer step still drives with the old input term, so bind again after changing the
    weights (the estimators and the trainer bind per phase and per batch). Bound with grad
    enabled, the input term carries its autograd graph to θ and every evaluation reuses it
    (θ is fixed while the field is used), so the drive is differentiable in θ (BPTT, implicit
    differentiation); one backward pass may go through it, or several with ``retain_graph``.
    Bound under ``torch.no_grad`` or ``torch.inference_mode`` it carries no graph, and
    gradients in θ miss the input's share: bind with grad enabled to differentiate.
    """

    def __init__(self, field: VectorField, x: Tensor, y: Tensor | None,
                 beta: float | complex) -> None:
        self.field = field
        self.x = x
        self.y = y
        self.beta = beta
        self.inv_tau = tuple(t.detach() for t in field.tau.inverse())
        self.input_term = _input_term(field.energy, x)
        self.targets = self._targets()
        self.nfe = 0

    def _targets(self) -> Tensor | None:
        if self.beta == 0 or self.y is None:
            return None
        return self.field.cost.prepare_targets(self.y, tuple(self.energy.state_shapes[-1]),
                                               _state_dtype(self.energy, self.x))

    def nudged(self, y: Tensor | None, beta: float | complex) -> BoundField:
        """The same batch under another nudge (a fresh :attr:`nfe`): x and the input term are
        shared, not recomputed or re-checked; y is checked and its targets prepared. An
        estimator binds its batch once and derives every nudged phase from it."""
        _check_nudge(self.field, y, beta, self.x.shape[0])
        out = copy.copy(self)
        out.y, out.beta, out.nfe = y, beta, 0
        out.targets = out._targets()
        return out

    def restrict(self, idx: Tensor) -> BoundField:
        """The same field for samples ``idx`` (a fresh :attr:`nfe`): x, y, the input term and
        the targets cut by rows, nothing recomputed and nothing re-checked. ``idx`` indexes
        this field's batch."""
        sub = copy.copy(self)
        sub.x = self.x[idx]
        sub.y = None if self.y is None else self.y[idx]
        sub.input_term = _rows(self.input_term, idx)
        sub.targets = _rows(self.targets, idx)
        sub.nfe = 0
        return sub

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
                g, = torch.autograd.grad(self.field.cost(o, self.targets).sum(), o)
            return self.beta * g
        return self.beta * self.field.cost.grad_output(out, self.targets)

    def drive(self, states: States) -> States:
        """τ ⊙ ds/dt (τ-free): ``−∂F/∂s`` for gradient fields."""
        self.nfe += 1
        return self.energy.drive(self.x, tuple(states), self.nudge(states),
                                 autograd=self.field.gradient == "autograd",
                                 input_term=self.input_term)

    @property
    def has_plain_map(self) -> bool:
        """Whether :meth:`plain_map` gives the map (closed-form gradients and an energy with
        one, :meth:`~ctep.energies.base.Energy.plain_map`)."""
        return self.field.gradient != "autograd" and self.energy.has_plain_map

    def plain_map(self, states: States) -> States:
        """s + drive(s) in the energy's closed form (one evaluation): σ(∂Φ/∂s − n) in the
        primitive form, whose drive is exactly ``plain_map(s) − s``. Check
        :attr:`has_plain_map` first."""
        if not self.has_plain_map:
            raise ValueError(f"{type(self.energy).__name__} has no closed-form plain map here "
                             "(classical form, or gradient='autograd')")
        self.nfe += 1
        return self.energy.plain_map(self.x, tuple(states), self.nudge(states),
                                     input_term=self.input_term)

    def __call__(self, t: Tensor | float, states: States) -> States:
        """ds/dt = τ⁻¹ ⊙ drive(s)."""
        return tuple(d * it for d, it in zip(self.drive(states), self.inv_tau, strict=True))

    def stationarity(self, states: States) -> States:
        """The map whose roots are the equilibria (for Newton and implicit differentiation)."""
        return self.energy.stationarity(self.x, tuple(states), self.nudge(states),
                                        input_term=self.input_term)

    def residual(self, states: States) -> Tensor:
        """‖τ ⊙ ds/dt‖∞ per sample, shape ``(B,)`` (= ‖∂F/∂s‖∞ for gradient fields)."""
        return per_sample_max_abs(self.drive(states))


def _input_term(energy: Energy, x: Tensor) -> InputTerm:
    """``energy.input_term(x)`` under the caller's grad mode. An inference tensor x outside
    ``torch.inference_mode`` with grad enabled is cloned first: autograd cannot save inference
    tensors for backward, and the term must still carry its graph to θ."""
    if x.is_inference() and torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
        x = x.clone()
    return energy.input_term(x)


def _state_dtype(energy: Energy, x: Tensor) -> torch.dtype:
    """The dtype of a relaxation's zero states: the energy's parameters', else x's (if float),
    else the default; the costs cast prepared targets to the states' dtype where it differs."""
    p = next(iter(energy.parameters()), None)
    if p is not None:
        return p.dtype
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def _rows(term: InputTerm, idx: Tensor) -> InputTerm:
    """Rows ``idx`` of a tensor, of each tensor of a tuple, or None."""
    if term is None:
        return None
    if isinstance(term, tuple):
        return tuple(t[idx] for t in term)
    return term[idx]


def _check_nudge(field: VectorField, y: Tensor | None, beta: float | complex,
                 batch: int) -> None:
    """A nonzero β needs targets that fit the cost and the batch."""
    if beta != 0:
        if y is None:
            raise ValueError("a nonzero nudge β needs targets y")
        field.cost.check_targets(y, batch)
