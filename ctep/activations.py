"""Activation functions ρ with their derivative, range and primitive.

Each activation σ carries what the two forms of a layered energy need:

* ``σ(u)`` and ``σ'(u)``, hand-written (tested equal to autograd where σ is smooth);
* its range ``[low, high]`` (``±inf`` where unbounded): clipped activations bound the states;
* ``G(s)`` with ``G' = σ⁻¹`` on the range, the term that makes the fixed points of the map
  ``s ← σ(∂Φ/∂s)`` the stationary points of ``E(s) = Σ_i G(s_i) − Φ(s)``. For a clip-type σ
  (hard sigmoid, ReLU6), σ⁻¹ is the identity (times the inverse slope) on the range, so
  ``G(s) = s²/2`` there and the stationarity condition becomes the KKT (projection) condition on
  the box.

The derivative of a clip at its corners is taken to be 0 (the one-sided value outside the box):
states pinned at a bound then have zero sensitivity, which is the right linearisation of the
projected map wherever the active set is locally constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Activation:
    """An activation σ (base class): subclasses give ``__call__``, ``derivative``, ``primitive``."""

    name: str
    low: float = -math.inf
    high: float = math.inf
    #: True where σ is analytic (holomorphic estimators need it).
    smooth: bool = True

    @property
    def bounded(self) -> bool:
        """True when the range is a finite box (states are clipped to it)."""
        return math.isfinite(self.low) or math.isfinite(self.high)

    def __call__(self, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative(self, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def primitive(self, s: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``G(s)`` with ``G' = σ⁻¹`` on the range."""
        raise NotImplementedError

    def inverse(self, s: Tensor) -> Tensor:
        """σ⁻¹(s) = G'(s) on the range (the identity for identity and clip activations)."""
        return s

    def clamp(self, s: Tensor) -> Tensor:
        """Project states onto the range (identity when unbounded)."""
        if not self.bounded:
            return s
        return s.clamp(min=None if math.isinf(self.low) else self.low,
                       max=None if math.isinf(self.high) else self.high)


@dataclass(frozen=True)
class Identity(Activation):
    """σ(u) = u; G(s) = s²/2."""

    name: str = "identity"

    def __call__(self, u: Tensor) -> Tensor:
        return u

    def derivative(self, u: Tensor) -> Tensor:
        return torch.ones_like(u)

    def primitive(self, s: Tensor) -> Tensor:
        return 0.5 * s * s


@dataclass(frozen=True)
class Tanh(Activation):
    """σ(u) = tanh u on (−1, 1); G(s) = s·artanh(s) + ½·log(1 − s²)."""

    name: str = "tanh"
    low: float = -1.0
    high: float = 1.0

    @property
    def bounded(self) -> bool:
        # The range is open: tanh never saturates exactly, so states are not clipped.
        return False

    def __call__(self, u: Tensor) -> Tensor:
        return torch.tanh(u)

    def derivative(self, u: Tensor) -> Tensor:
        t = torch.tanh(u)
        return 1.0 - t * t

    def primitive(self, s: Tensor) -> Tensor:
        return s * torch.atanh(s) + 0.5 * torch.log1p(-s * s)

    def inverse(self, s: Tensor) -> Tensor:
        return torch.atanh(s)


@dataclass(frozen=True)
class Sigmoid(Activation):
    """σ(u) = 1/(1 + e^{−u}) on (0, 1); G(s) = s·log s + (1 − s)·log(1 − s) + log 2."""

    name: str = "sigmoid"
    low: float = 0.0
    high: float = 1.0

    @property
    def bounded(self) -> bool:
        return False

    def __call__(self, u: Tensor) -> Tensor:
        return torch.sigmoid(u)

    def derivative(self, u: Tensor) -> Tensor:
        p = torch.sigmoid(u)
        return p * (1.0 - p)

    def primitive(self, s: Tensor) -> Tensor:
        if s.is_complex():  # analytic continuation (xlogy has no complex kernel)
            return s * torch.log(s) + (1.0 - s) * torch.log(1.0 - s) + math.log(2.0)
        return torch.xlogy(s, s) + torch.xlogy(1.0 - s, 1.0 - s) + math.log(2.0)

    def inverse(self, s: Tensor) -> Tensor:
        return torch.logit(s)


@dataclass(frozen=True)
class Clip(Activation):
    """Clipped linear σ(u) = clip(u, low, high): hard sigmoid (0, 1), ReLU6 (0, 6), ReLU-α (0, α).

    On the box, σ⁻¹(s) = s, so G(s) = s²/2 there; the fixed points of ``s ← σ(∂Φ/∂s)`` are the
    KKT points of ``½‖s‖² − Φ(s)`` on the box.
    """

    name: str = "hard_sigmoid"
    low: float = 0.0
    high: float = 1.0
    smooth: bool = False

    def __call__(self, u: Tensor) -> Tensor:
        return u.clamp(self.low, self.high)

    def derivative(self, u: Tensor) -> Tensor:
        return ((u > self.low) & (u < self.high)).to(u.dtype)

    def primitive(self, s: Tensor) -> Tensor:
        return 0.5 * s * s


_NAMES = ("identity", "tanh", "sigmoid", "hard_sigmoid", "relu6", "relu_alpha")


def get_activation(name: str | Activation, alpha: float | None = None) -> Activation:
    """Look an activation up by name.

    Names: ``identity``, ``tanh``, ``sigmoid``, ``hard_sigmoid`` (clip to [0, 1], Scellier &
    Bengio), ``relu6`` (clip to [0, 6]), ``relu_alpha`` (clip to [0, α], needs ``alpha > 0``).
    """
    if isinstance(name, Activation):
        return name
    key = str(name).lower().replace("-", "_")
    if key == "identity":
        return Identity()
    if key == "tanh":
        return Tanh()
    if key == "sigmoid":
        return Sigmoid()
    if key in ("hard_sigmoid", "hardsigmoid"):
        return Clip()
    if key == "relu6":
        return Clip(name="relu6", low=0.0, high=6.0)
    if key in ("relu_alpha", "relu_a"):
        if alpha is None or not alpha > 0:
            raise ValueError("activation 'relu_alpha' needs alpha > 0 (its clip value)")
        return Clip(name=f"relu_alpha({alpha:g})", low=0.0, high=float(alpha))
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(_NAMES)}")
