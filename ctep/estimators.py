"""EP estimators: parameter gradients from free and nudged equilibria.

With ψ(β) = ∂F/∂θ (θ, s*_β, β) and F = E + β·ℓ, the EP theorem (Scellier & Bengio 2017) gives
dL/dθ = ψ'(0) for L(θ) = ℓ(s*_0(θ)). Every estimator here is a finite-difference formula in β,

    ĝ = Σ_k c_k ψ(β_k)      (per sample, then averaged over the batch),

computed as the θ-gradient of Σ_k c_k F(θ, s_k, β_k) with the equilibria s_k held fixed (one
backward pass; parameters of the cost, such as a softmax read-out, get their gradient from the
β·ℓ term). The nudged phases start from the free equilibrium.

=================  =========================================  ===========================
estimator          formula                                      bias
=================  =========================================  ===========================
one-sided          [ψ(β) − ψ(0)] / β                            O(β)   (exact: ∇ of
                                                                (F*(β) − F*(0))/β)
one-sided, random  same with β → ±β, sign drawn per batch       O(β²) in expectation
centered           [ψ(β) − ψ(−β)] / (2β)                        O(β²)  (exact: ∇ of
                                                                (F*(β) − F*(−β))/(2β))
holomorphic, N     Re (1/N) Σ_k ψ(β_k)/β_k, β_k = |β|e^{2πik/N}  O(|β|^N)
=================  =========================================  ===========================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._states import States
from .dynamics import VectorField
from .solve import Equilibrium, RelaxConfig, Status, relax

FAILURE_POLICIES = ("raise", "mask")


@dataclass
class Estimate:
    """Gradients from one estimator call, aligned with :attr:`params`."""

    grads: tuple[Tensor, ...]
    params: tuple[nn.Parameter, ...]
    free: Equilibrium
    nudged: tuple[Equilibrium, ...]
    betas: tuple[float, ...]
    loss: Tensor
    used: Tensor
    info: dict = field(default_factory=dict)

    def write_grads(self, *, accumulate: bool = False) -> None:
        """Store the gradients in ``p.grad`` (added to what is there when ``accumulate``)."""
        for p, g in zip(self.params, self.grads, strict=True):
            if accumulate and p.grad is not None:
                p.grad.add_(g)
            else:
                p.grad = g.detach().clone()

    def named(self, module: nn.Module) -> dict[str, Tensor]:
        """The gradients keyed by the parameter names of ``module``."""
        names = {id(p): n for n, p in module.named_parameters()}
        return {names.get(id(p), f"param{i}"): g
                for i, (p, g) in enumerate(zip(self.params, self.grads, strict=True))}


class Estimator:
    """Base class: relaxes the phases, then differentiates Σ_k c_k F(s_k, β_k) in θ.

    Args:
        beta: nudge strength β > 0.
        relax: relaxation settings of every phase.
        nudged_relax: settings of the nudged phases, when they differ (e.g. a shorter budget).
        on_failure: ``"raise"`` (default) raises :class:`RelaxationError` when a sample
            diverges or its solver fails in any phase; ``"mask"`` leaves those samples out of the
            batch average (and reports how many in ``Estimate.used``). Samples that merely ran
            out of budget are kept in both cases: fixed-budget training relies on that.
    """

    name = "base"

    def __init__(self, beta: float, *, relax: RelaxConfig | None = None,
                 nudged_relax: RelaxConfig | None = None, on_failure: str = "raise") -> None:
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a positive finite number, got {beta!r}")
        if on_failure not in FAILURE_POLICIES:
            raise ValueError(f"on_failure must be one of {FAILURE_POLICIES}, got {on_failure!r}")
        self.beta = float(beta)
        self.relax = relax or RelaxConfig()
        self.nudged_relax = nudged_relax or self.relax
        self.on_failure = on_failure

    def phases(self) -> list[tuple[float, float]]:  # pragma: no cover - abstract
        """The nudged phases as pairs (β_k, c_k). The free phase's coefficient is −Σ_k c_k, so
        that the formula annihilates ψ's constant term."""
        raise NotImplementedError

    def __call__(self, field: VectorField, x: Tensor, y: Tensor, *,
                 free: Equilibrium | None = None, s0: States | None = None) -> Estimate:
        """Estimate dL/dθ for the batch mean of the loss (does not touch ``.grad``)."""
        if free is None:
            free = relax(field.bind(x), s0, self.relax)
        phases = self.phases()
        nudged = tuple(relax(field.bind(x, y, b), _start(free.states, b), self.nudged_relax)
                       for b, _ in phases)
        used = self._usable(free, nudged)
        params = tuple(field.learnable_parameters())
        with torch.enable_grad():
            total = 0.0
            c0 = -sum(c for _, c in phases)
            if abs(c0) > 1e-12 * max(abs(c) for _, c in phases):
                total = total + c0 * field.total_energy(x, _fixed(free.states, used))
            for (b, c), eq in zip(phases, nudged, strict=True):
                total = total + c * field.total_energy(x, _fixed(eq.states, used), y, b)
            if torch.is_tensor(total) and total.is_complex():
                total = total.real  # θ is real, so ∂θ Re(c·F) = Re(c·∂θF)
            objective = (total * used).sum() / used.sum().clamp_min(1)
            grads = torch.autograd.grad(objective, params, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g.detach()
                      for p, g in zip(params, grads, strict=True))
        with torch.no_grad():
            loss = field.loss(free.states, y)
        return Estimate(grads, params, free, nudged, tuple(b for b, _ in phases), loss,
                        used.bool(), {"estimator": self.name, "beta": self.beta})

    def _usable(self, free: Equilibrium, nudged: Sequence[Equilibrium]) -> Tensor:
        bad = torch.zeros_like(free.status, dtype=torch.bool)
        for eq in (free, *nudged):
            bad = bad | (eq.status == Status.DIVERGED) | (eq.status == Status.SOLVER_FAILED)
        if self.on_failure == "raise" and bool(bad.any()):
            for eq in (free, *nudged):
                eq.check()  # raises RelaxationError for the first failed phase
        dtype = free.states[0].dtype
        return (~bad).to(dtype if dtype.is_floating_point else torch.float64)


class OneSidedEP(Estimator):
    """ĝ = [ψ(β) − ψ(0)] / β (Scellier & Bengio 2017); bias O(β).

    With ``random_sign=True`` the sign of β is drawn per call from a generator seeded with
    ``seed`` (Scellier & Bengio 2017, Laborieux et al. 2021): the bias is O(β²) in expectation.
    """

    name = "one-sided"

    def __init__(self, beta: float, *, random_sign: bool = False, seed: int = 0, **kwargs) -> None:
        super().__init__(beta, **kwargs)
        self.random_sign = random_sign
        self._gen = torch.Generator().manual_seed(int(seed))

    def phases(self) -> list[tuple[float, float]]:
        b = self.beta
        if self.random_sign and bool(torch.rand((), generator=self._gen) < 0.5):
            b = -b
        return [(b, 1.0 / b)]


class CenteredEP(Estimator):
    """ĝ = [ψ(β) − ψ(−β)] / (2β) (Laborieux et al. 2021, "symmetric"); bias O(β²).

    Both nudged phases start from the free equilibrium. Alias: ``symmetric``. (In Laborieux's
    code "CEP" means *continual* EP, in Scellier's *centered* EP: ctep uses neither acronym.)
    """

    name = "centered"

    def phases(self) -> list[tuple[float, float]]:
        b = self.beta
        return [(b, 0.5 / b), (-b, -0.5 / b)]


class HolomorphicEP(Estimator):
    """ĝ = Re (1/N) Σ_k ψ(β_k)/β_k with β_k = |β| e^{2πik/N} (Laborieux & Zenke 2022).

    The first Fourier coefficient of ψ on the circle |β|: by Cauchy's formula it equals ψ'(0) up
    to the aliased terms c_{1+mN}|β|^{mN}, so the bias is O(|β|^N). N = 2 is the centered
    estimator. For real θ, ψ(β̄) = conj ψ(β): only the points with Im β_k ≥ 0 are relaxed and
    the others enter as conjugates (⌊N/2⌋ + 1 phases). The energy, the cost and the activations
    must be holomorphic (tanh, sigmoid, identity; no clip); each complex phase starts from the
    free equilibrium and is relaxed in complex arithmetic.
    """

    name = "holomorphic"

    def __init__(self, beta: float, *, points: int = 4, **kwargs) -> None:
        super().__init__(beta, **kwargs)
        if int(points) != points or points < 2:
            raise ValueError(f"holomorphic EP needs an integer number of points ≥ 2, got {points}")
        self.points = int(points)

    def __call__(self, field: VectorField, x: Tensor, y: Tensor, **kwargs) -> Estimate:
        bad = [a.name for a in getattr(field.energy, "activations", ()) if not a.smooth]
        if bad:
            raise ValueError(f"holomorphic EP needs holomorphic activations; {sorted(set(bad))} "
                             "are clipped (use tanh, sigmoid or identity)")
        return super().__call__(field, x, y, **kwargs)

    def phases(self) -> list[tuple[complex, complex]]:
        n = self.points
        out = []
        for k in range(n // 2 + 1):
            b = self.beta * complex(math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n))
            weight = 1.0 if (k == 0 or 2 * k == n) else 2.0  # conjugate partner folded in
            if abs(b.imag) < 1e-15 * self.beta:
                b = complex(b.real, 0.0)
            c = weight / (n * b)
            out.append((b.real if b.imag == 0 else b, c.real if b.imag == 0 else c))
        return out


ESTIMATORS: dict[str, type[Estimator]] = {
    "one-sided": OneSidedEP,
    "centered": CenteredEP,
    "holomorphic": HolomorphicEP,
}
ALIASES = {"onesided": "one-sided", "vanilla": "one-sided", "symmetric": "centered"}


def get_estimator(name: str, beta: float, **kwargs) -> Estimator:
    """An estimator by name: ``one-sided`` (``vanilla``), ``centered`` (``symmetric``)."""
    key = str(name).lower().replace("_", "-")
    key = ALIASES.get(key.replace("-", ""), ALIASES.get(key, key))
    if key not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[key](beta, **kwargs)


def _fixed(states: States, used: Tensor) -> States:
    """Detached states; samples left out (diverged) are replaced by zeros, so that their
    possibly infinite states cannot turn the batch's gradient into NaN (0·inf)."""
    keep = used.bool()
    return tuple(torch.where(keep.reshape(-1, *([1] * (s.dim() - 1))), s.detach(),
                             torch.zeros_like(s)) for s in states)


def _start(states: States, beta: float | complex) -> States:
    """The free equilibrium as the start of a nudged phase (complex for a complex β)."""
    if isinstance(beta, complex) and not states[0].is_complex():
        return tuple(s.to(torch.promote_types(s.dtype, torch.complex64)) for s in states)
    return states
