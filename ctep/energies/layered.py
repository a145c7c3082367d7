"""Layered energies built from a primitive Φ(x, r; θ) over layer activities r.

Two forms share one primitive Φ (for the dense net, Φ = Σ_l r_{l+1}ᵀ(W_l r_l + b_l), r_0 = x):

**Classical** (Scellier & Bengio 2017): ρ inside the energy,

    E(s) = ½ Σ_l ‖s_l‖² − Φ(x, ρ(s)),      τ ds/dt = −∂F/∂s = ρ'(s) ⊙ ∂Φ/∂r(ρ(s)) − s − β ∂ℓ/∂s.

For a clipped ρ (hard sigmoid, ReLU6) the states live in the box, where ρ(s) = s, and the flow
is the projected gradient flow (components pushing out of the box are zeroed). Its fixed points
are the KKT points of ``½‖s‖² − Φ(s) + βℓ`` on the box.

**Primitive** (bounded; Hopfield 1984 in state form, and the map of most EP code):

    τ ds/dt = σ(∂Φ/∂s − β ∂ℓ/∂s) − s.

Its Euler step with dt/τ = 1 is exactly the discrete map ``s ← σ(∂Φ/∂s)``. For strictly
increasing σ its fixed points are the stationary points of

    E(s) = Σ_i G(s_i) − Φ(x, s),    G' = σ⁻¹,

since σ(u) = s ⇔ u = σ⁻¹(s); for a clipped σ they are the KKT points of ``½‖s‖² − Φ`` on the
box. E is a Lyapunov function of this flow for any τ > 0: dE/dt = Σ_i (σ⁻¹(s_i) − u_i)(σ(u_i) −
s_i)/τ_i ≤ 0 because σ is increasing. Either way the EP theorem (THEORY.md §0) applies at the
fixed points: they are stationary points of F = E + βℓ with E as written, and ∂E/∂θ = −∂Φ/∂θ.
With clipped activations this holds where the set of saturated units does not change between
the free and nudged equilibria (strict complementarity).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._states import States
from ..activations import Activation, get_activation
from .base import Energy, InputTerm

FORMS = ("primitive", "classical")


class LayeredEnergy(Energy):
    """Base class for energies defined by a primitive Φ(x, r) and one activation per layer.

    Subclasses set :attr:`state_shapes` and implement :meth:`phi`; they should also implement
    :meth:`phi_grad` in closed form (the default uses autograd), taking the input's share of
    ∂Φ/∂r from :meth:`~ctep.energies.base.Energy.input_term`.
    """

    def __init__(self, activations: Sequence[Activation], form: str = "primitive") -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"unknown energy form {form!r}; known: {', '.join(FORMS)}")
        self.form = form
        self.activations = tuple(get_activation(a) for a in activations)

    # --- the primitive --------------------------------------------------------------------
    def phi(self, x: Tensor, r: States) -> Tensor:  # pragma: no cover - abstract
        """Φ(x, r; θ) per sample, shape ``(B,)``."""
        raise NotImplementedError

    def phi_grad(self, x: Tensor, r: States, *, input_term: InputTerm = None) -> States:
        """∂Φ/∂r per layer (autograd here, which needs no ``input_term``; subclasses give a
        closed form that uses it, computing it from x when None)."""
        return self.phi_grad_autograd(x, r)

    def phi_grad_autograd(self, x: Tensor, r: States) -> States:
        """∂Φ/∂r by autograd (a graph is kept when grad mode is on, for double backward)."""
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            rr = tuple(t if (create and t.requires_grad) else t.detach().requires_grad_(True)
                       for t in r)
            phi = self.phi(x, rr).sum()
            return torch.autograd.grad(phi, rr, create_graph=create)

    # --- the two forms --------------------------------------------------------------------
    def _activities(self, states: States) -> States:
        """r = ρ(s) (classical) or r = s (primitive)."""
        if self.form == "primitive":
            return tuple(states)
        return tuple(a.clamp(s) if a.bounded else a(s)
                     for a, s in zip(self.activations, states, strict=True))

    def energy(self, x: Tensor, states: States) -> Tensor:
        if self.form == "primitive":
            g = sum(a.primitive(s).reshape(s.shape[0], -1).sum(dim=1)
                    for a, s in zip(self.activations, states, strict=True))
        else:
            g = sum(0.5 * s.reshape(s.shape[0], -1).pow(2).sum(dim=1) for s in states)
        return g - self.phi(x, self._activities(states))

    def grad_states(self, x: Tensor, states: States, *, input_term: InputTerm = None) -> States:
        """∂E/∂s in closed form (from :meth:`phi_grad`)."""
        r = self._activities(states)
        dphi = self.phi_grad(x, r, input_term=input_term)
        if self.form == "primitive":
            return tuple(a.inverse(s) - d
                         for a, s, d in zip(self.activations, states, dphi, strict=True))
        return tuple(s - _classical_slope(a, s) * d
                     for a, s, d in zip(self.activations, states, dphi, strict=True))

    @property
    def has_plain_map(self) -> bool:
        return self.form == "primitive"

    def plain_map(self, x: Tensor, states: States, nudge: Tensor | None, *,
                  input_term: InputTerm = None) -> States | None:
        """Primitive form: s ← σ(∂Φ/∂s − n), with n the nudge on the output layer (σ's range is
        the state box, so no projection is needed). Classical form: None."""
        if self.form != "primitive":
            return None
        dphi = list(self.phi_grad(x, tuple(states), input_term=input_term))
        if nudge is not None:
            dphi[-1] = dphi[-1] - nudge
        return tuple(a(u) for a, u in zip(self.activations, dphi, strict=True))

    def drive(self, x: Tensor, states: States, nudge: Tensor | None, *,
              autograd: bool = False, input_term: InputTerm = None) -> States:
        if self.form == "primitive" and not autograd:
            mapped = self.plain_map(x, states, nudge, input_term=input_term)
            return tuple(m - s for m, s in zip(mapped, states, strict=True))
        r = self._activities(states)
        dphi = list(self.phi_grad_autograd(x, r) if autograd
                    else self.phi_grad(x, r, input_term=input_term))
        if self.form == "primitive":
            if nudge is not None:
                dphi[-1] = dphi[-1] - nudge
            return tuple(a(u) - s for a, u, s in zip(self.activations, dphi, states, strict=True))
        out = []
        for i, (a, s, d) in enumerate(zip(self.activations, states, dphi, strict=True)):
            f = _classical_slope(a, s) * d - s
            if nudge is not None and i == len(states) - 1:
                f = f - nudge
            if a.bounded:  # projected gradient flow: no component pushes out of the box
                f = torch.where(((s <= a.low) & (f < 0)) | ((s >= a.high) & (f > 0)),
                                torch.zeros_like(f), f)
            out.append(f)
        return tuple(out)

    def stationarity(self, x: Tensor, states: States, nudge: Tensor | None, *,
                     input_term: InputTerm = None) -> States:
        """Primitive form: the drive. Classical form: the drive on unbounded layers and, on
        clipped layers, the projection map ``clip(∂Φ/∂s − n) − s``, which has the same roots as
        the projected flow and a Jacobian that is invertible at them."""
        if self.form == "primitive" or not any(a.bounded for a in self.activations):
            return self.drive(x, states, nudge, input_term=input_term)
        dphi = self.phi_grad(x, self._activities(states), input_term=input_term)
        last = len(states) - 1
        out = []
        for i, (a, s, d) in enumerate(zip(self.activations, states, dphi, strict=True)):
            n = nudge if (nudge is not None and i == last) else 0.0
            out.append(a(d - n) - s if a.bounded else a.derivative(s) * d - s - n)
        return tuple(out)

    def clamp(self, states: States) -> States:
        return tuple(a.clamp(s) for a, s in zip(self.activations, states, strict=True))


def _classical_slope(a: Activation, s: Tensor) -> Tensor:
    """ρ'(s) in the classical form: 1 for a clipped ρ (states stay in the box, where ρ(s) = s)."""
    return torch.ones_like(s) if a.bounded else a.derivative(s)

