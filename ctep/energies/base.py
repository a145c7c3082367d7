"""The energy interface: E(x, s; θ) per sample, and how its gradient drives the states."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._states import Shapes, States

#: what :meth:`Energy.input_term` returns: a tensor or a tuple of tensors (batch first), or None
InputTerm = Tensor | tuple[Tensor, ...] | None


class Energy(nn.Module):
    """A scalar energy E(x, s; θ) per sample over layer states ``s = (s_1, ..., s_L)``.

    The last state is the output layer: the nudge cost ℓ(s_L, y) acts on it. Subclasses
    implement :meth:`energy` and may override :meth:`drive` (the dynamics) and
    :meth:`stationarity` (a map whose roots are the equilibria, for Newton and implicit
    differentiation). Time constants are not the energy's business: the vector field divides the
    drive by τ.

    **The input term.** What the drive needs from the input x alone (W₀x + b₀ for the dense
    net, the convolutions of x) is constant during a relaxation. :meth:`input_term` computes it;
    :meth:`grad_states`, :meth:`drive` and :meth:`stationarity` take it as ``input_term`` and
    compute it themselves when it is None. :meth:`ctep.VectorField.bind` computes it once per
    batch and the bound field passes it to every evaluation (and cuts it by rows when samples
    leave a relaxation), so a relaxation costs one input product, not one per step.
    """

    #: Per-sample shapes of the states, one per layer (set by subclasses).
    state_shapes: Shapes

    def energy(self, x: Tensor, states: States) -> Tensor:  # pragma: no cover - abstract
        """E(x, s; θ), shape ``(B,)``."""
        raise NotImplementedError

    def input_term(self, x: Tensor) -> InputTerm:
        """The constant the drive needs from x: a tensor or a tuple of tensors, batch first
        (cut by rows for a subset of samples), or None for an energy that needs none (this
        default). Computed under the caller's grad mode: with grad enabled it carries its graph
        to θ."""
        return None

    def grad_states(self, x: Tensor, states: States, *, input_term: InputTerm = None) -> States:
        """∂E/∂s by autograd (subclasses may give a closed form; ``input_term`` is
        :meth:`input_term` of x, computed when None, unused here)."""
        with torch.enable_grad():
            s = tuple(t.detach().requires_grad_(True) for t in states)
            e = self.energy(x, s).sum()
            return torch.autograd.grad(e, s, create_graph=torch.is_grad_enabled())

    def drive(self, x: Tensor, states: States, nudge: Tensor | None, *,
              autograd: bool = False, input_term: InputTerm = None) -> States:
        """τ ⊙ ds/dt. Gradient form: ``−(∂E/∂s + n)`` with ``n = β ∂ℓ/∂s_L`` on the output layer.

        ``autograd`` asks for autograd derivatives instead of a closed form (they must agree).
        ``input_term`` is :meth:`input_term` of x (computed when None).
        """
        grads = list(self.grad_states(x, states, input_term=input_term))
        if nudge is not None:
            grads[-1] = grads[-1] + nudge
        return tuple(-g for g in grads)

    def stationarity(self, x: Tensor, states: States, nudge: Tensor | None, *,
                     input_term: InputTerm = None) -> States:
        """A map g(s) with g(s*) = 0 exactly at the equilibria and a Jacobian invertible there.

        Defaults to :meth:`drive`. Newton polishing and implicit differentiation use it.
        """
        return self.drive(x, states, nudge, input_term=input_term)

    @property
    def has_plain_map(self) -> bool:
        """Whether :meth:`plain_map` gives the map (else it returns None)."""
        return False

    def plain_map(self, x: Tensor, states: States, nudge: Tensor | None, *,
                  input_term: InputTerm = None) -> States | None:
        """The map s ← s + drive(s) in closed form, where the energy has one that skips the
        round trip through the drive (the primitive form's s ← σ(∂Φ/∂s − n)); None here.
        Energies that give one return the same states as ``clamp(s + drive(s))`` up to the
        rounding of that sum (an ulp), and their drive must equal ``plain_map(s) − s``
        bit for bit."""
        return None

    def param_grads(self, x: Tensor, phases: Sequence[tuple[Tensor, States]]
                    ) -> tuple[Tensor, ...] | None:
        """∂/∂θ Σ_k Σ_b w_{k,b} E(x_b, s_{k,b}; θ) in closed form, one tensor per parameter in
        :meth:`parameters` order, for ``phases`` of (per-sample weights w_k of shape ``(B,)``,
        detached real states s_k); or None where no closed form is given (the estimators then
        use autograd)."""
        return None

    def clamp(self, states: States) -> States:
        """Project states onto their domain (identity unless activations are clipped)."""
        return tuple(states)

    def init_states(self, batch: int, *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> States:
        """Zero states (projected onto the domain): the conventional free-phase start."""
        return self.clamp(tuple(torch.zeros(batch, *shape, dtype=dtype, device=device)
                                for shape in self.state_shapes))

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error for an input that does not fit this energy."""
        if not torch.is_tensor(x):
            raise TypeError(f"input must be a tensor, got {type(x).__name__}")
        if x.is_floating_point() or x.is_complex():
            if not torch.isfinite(x).all():
                raise ValueError("input x contains NaN or infinite values")

    def check_states(self, states: States) -> None:
        """Raise a clear error when states do not match :attr:`state_shapes`."""
        if len(states) != len(self.state_shapes):
            raise ValueError(f"expected {len(self.state_shapes)} state tensors, got {len(states)}")
        batch = states[0].shape[0]
        for i, (s, shape) in enumerate(zip(states, self.state_shapes, strict=True)):
            if tuple(s.shape) != (batch, *shape):
                raise ValueError(f"state {i} has shape {tuple(s.shape)}, expected "
                                 f"{(batch, *shape)}")
