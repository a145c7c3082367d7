"""EP estimators: parameter gradients from free and nudged equilibria.

With ψ(β) = ∂F/∂θ (θ, s*_β, β) and F = E + β·ℓ, the EP theorem (Scellier & Bengio 2017) gives
dL/dθ = ψ'(0) for L(θ) = ℓ(s*_0(θ)). Every deterministic estimator here is a finite-difference
formula in β,

    ĝ = Σ_k c_k ψ(β_k)      (per sample, then averaged over the batch),

computed as the θ-gradient of Σ_k c_k F(θ, s_k, β_k) with the equilibria s_k held fixed (one
backward pass; parameters of the cost, such as a softmax read-out, get their gradient from the
β·ℓ term). The nudged phases start from the free equilibrium (finite-nudge EP: from the previous
node's). Langevin EP replaces ψ(β_k) by its average over a noisy chain at temperature T.

=================  =========================================  ===========================
estimator          formula                                      bias
=================  =========================================  ===========================
one-sided          [ψ(β) − ψ(0)] / β                            O(β)   (exact: ∇ of
                                                                (F*(β) − F*(0))/β)
one-sided, random  same with β → ±β, sign drawn per batch       O(β²) in expectation
centered           [ψ(β) − ψ(−β)] / (2β)                        O(β²)  (exact: ∇ of
                                                                (F*(β) − F*(−β))/(2β))
holomorphic, N     Re (1/N) Σ_k ψ(β_k)/β_k, β_k = |β|e^{2πik/N}  O(|β|^N)
finite-nudge, n    Σ_j ω_j K_n(b_j) [ψ(b_j) − ψ(0)]/b_j,        O(β^n (n!)²/(2n)!)
                   b_j Gauss–Legendre nodes of [0, β]
langevin, T        [⟨∂θF⟩_β − ⟨∂θF⟩_{−β}] / (2β), ⟨·⟩ over     O(T) + centered's O(β²);
                   Euler–Maruyama chains of the Gibbs laws      noise O(√(T/n))
=================  =========================================  ===========================
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ._states import States, select_samples
from .dynamics import BoundField, VectorField
from .energies.base import Energy
from .solve import Equilibrium, RelaxationError, RelaxConfig, Status, relax

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
        base = _bind(field, x)  # the input term once for every phase of the batch
        if free is None:
            free = relax(base, s0, self.relax)
        phases = self.phases()
        nudged = self._relax_nudged(base, y, free, [b for b, _ in phases])
        used = self._usable(free, nudged)
        params = tuple(field.learnable_parameters())
        terms = _terms(phases, free, nudged)
        grads = _closed_form_gradient(field, x, terms, used)
        if grads is None:
            grads = _autograd_gradient(field, x, y, terms, used, params)
        with torch.no_grad():
            loss = field.loss(free.states, y)
        return Estimate(grads, params, free, nudged, tuple(b for b, _ in phases), loss,
                        used.bool(), {"estimator": self.name, "beta": self.beta, **self._info()})

    def _relax_nudged(self, base: BoundField, y: Tensor, free: Equilibrium,
                      betas: Sequence[float | complex]) -> tuple[Equilibrium, ...]:
        """The nudged equilibria, each relaxed from the free one (fields derived from the free
        phase's ``base``: the input term is not recomputed)."""
        return tuple(relax(base.nudged(y, b), _start(free.states, b), self.nudged_relax)
                     for b in betas)

    def _info(self) -> dict:
        """Estimator-specific entries of :attr:`Estimate.info`."""
        return {}

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


def finite_nudge_rule(beta: float, points: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes b_j and coefficients c_j of finite-nudge EP: ĝ = Σ_j c_j [ψ(b_j) − ψ(0)].

    ``b_j = β(1 + x_j)/2`` are the Gauss–Legendre nodes of [0, β] (ascending) and
    ``c_j = ω_j K_n(b_j)/b_j``, with the Gauss–Legendre weights ``ω_j = β w_j/2`` and the kernel

        K_n(b) = Σ_{k<n} (2k + 1)/β · P_k(−1) · P_k(2b/β − 1)

    that reproduces the value at b = 0 of every polynomial of degree < n on [0, β]
    (∫_0^β K_n(b) q(b) db = q(0)). Computed in float64.
    """
    n = int(points)
    x, w = np.polynomial.legendre.leggauss(n)
    nodes = beta * (1.0 + x) / 2.0
    omega = beta * w / 2.0
    kernel = np.zeros(n)
    for k in range(n):
        kernel += (2 * k + 1) / beta * (-1.0) ** k * np.polynomial.legendre.Legendre.basis(k)(x)
    coefs = omega * kernel / nodes
    return tuple(float(b) for b in nodes), tuple(float(c) for c in coefs)


class FiniteNudgeEP(Estimator):
    """Finite-nudge EP ("EP without limits", after Litman 2025): dL/dθ as an integral over the
    nudge strength b ∈ [0, β], by n-point Gauss–Legendre quadrature.

    **Equation.** By the one-sided identity (THEORY.md §0), the normalised difference

        φ(b) = [ψ(b) − ψ(0)] / b = ∇θ L_b,   L_b = (F*(b) − F*(0))/b = (1/b) ∫_0^b ℓ(s*_t) dt,

    is *exactly* the gradient of the loss averaged over the nudged equilibria up to strength b,
    and φ(0) = ψ'(0) = dL/dθ. The estimator is the quadrature of

        dL/dθ = φ(0) = ∫_0^β K_n(b) φ(b) db      (exact for φ polynomial of degree < n),

        ĝ_n(β) = Σ_j ω_j K_n(b_j) [ψ(b_j) − ψ(0)] / b_j = Σ_j c_j [ψ(b_j) − ψ(0)],

    with b_j, ω_j the n Gauss–Legendre nodes and weights of [0, β] and K_n the kernel of
    :func:`finite_nudge_rule` (n-point Gauss–Legendre integrates K_n·φ exactly when φ has
    degree < n, so nothing is lost to the quadrature itself there).

    **What it computes, exactly.** For any finite β on the branch of s*_0,

        ĝ_n(β) = ∇θ J_n(β),   J_n(β) = Σ_j ω_j K_n(b_j) L_{b_j},

    a signed average of the loss over nudged equilibria (the weights ω_j K_n(b_j) sum to 1);
    J_n(β) is the value at b = 0 of the degree-(n−1) polynomial through the points (b_j, L_{b_j})
    — an extrapolation of the smoothed loss L_b to b = 0. Equivalently ĝ_n = p'(0), p the
    degree-n polynomial through ψ at 0, b_1, ..., b_n. Hence, with ψ(b) = Σ_k c_k b^k,

        ĝ_n(β) − dL/dθ = −(−1)^n c_{n+1} β^n (n!)²/(2n)! + O(β^{n+1}),

    and as ``points`` → ∞ at fixed β, ĝ_n(β) → dL/dθ (the true gradient, not a surrogate)
    geometrically wherever ψ is analytic on a neighbourhood of the real segment [0, β], which
    holds while ∂²F/∂s² stays invertible along the branch. ``points=1`` is one-sided EP at β/2.

    **Why it beats centered EP at large β.** Centered EP is exact only for its surrogate and keeps
    its c₃β² bias; here the bias is O(β^n) with the small constant (n!)²/(2n)! (1/6, 1/20, 1/70
    for n = 2, 3, 4) and falls further with n at fixed β. The interpolation nodes lie on the real
    segment, so β may exceed the radius of convergence of ψ's Taylor series that limits
    holomorphic EP. All nudges are positive (towards the target): there is no −β phase, which at
    large β can leave the branch or diverge. Each node is relaxed from the previous node's
    equilibrium (continuation in β), so the n phases stay on one branch and are short.

    **Cost and noise.** n nudged phases. The coefficients grow like n²/β (Σ|c| ≈ 45/β for n = 4,
    free coefficient included), so an equilibrium error δ costs about Σ_j |c_j|·δ·‖∂²F/∂s∂θ‖.

    Args:
        beta: the largest nudge β > 0 (the quadrature covers [0, β]).
        points: number n ≥ 1 of Gauss–Legendre nodes (nudged phases); default 4.
    """

    name = "finite-nudge"

    def __init__(self, beta: float, *, points: int = 4, **kwargs) -> None:
        super().__init__(beta, **kwargs)
        whole = _is_int(points) or (isinstance(points, float) and points.is_integer())
        if not whole or points < 1:
            raise ValueError(f"finite-nudge EP needs an integer number of points ≥ 1, got "
                             f"{points!r}")
        self.points = int(points)
        self.nodes, self.coefficients = finite_nudge_rule(self.beta, self.points)

    def phases(self) -> list[tuple[float, float]]:
        return list(zip(self.nodes, self.coefficients, strict=True))

    def _relax_nudged(self, base: BoundField, y: Tensor, free: Equilibrium,
                      betas: Sequence[float | complex]) -> tuple[Equilibrium, ...]:
        """Continuation in β: node j starts from node j−1's equilibrium (the first from the free
        one); samples whose previous phase diverged or failed restart from the free state."""
        out: list[Equilibrium] = []
        start = free.states
        for b in betas:
            eq = relax(base.nudged(y, b), start, self.nudged_relax)
            out.append(eq)
            ok = (eq.status == Status.CONVERGED) | (eq.status == Status.MAX_STEPS)
            start = select_samples(ok, eq.states, free.states)
        return tuple(out)

    def _info(self) -> dict:
        return {"points": self.points, "nodes": self.nodes, "coefficients": self.coefficients}


class LangevinEP(Estimator):
    """Stochastic (Langevin) EP: EP over the Gibbs laws p_b ∝ exp(−F(s, b)/T) of the phases.

    **Dynamics.** Each phase b is the overdamped Langevin equation with per-neuron τ,

        ds = −τ⁻¹ ⊙ ∂F/∂s (s, b) dt + √(2T/τ) dW,

    whose stationary law is the Gibbs law p_b ∝ exp(−F/T) for every τ > 0 (the noise scales
    with τ^{-1/2}: THEORY.md §9). torchdiffeq has no SDE solver: ctep integrates it by
    Euler–Maruyama, s ← Π(s − h ⊙ ∂F/∂s + √(2T h) ⊙ ξ), h = dt/τ, ξ ~ N(0, I) from a
    ``torch.Generator`` seeded with ``seed`` (no global RNG), Π the projection onto a clipped
    activation's box (identity otherwise). Each chain starts from its phase's deterministic
    equilibrium (relaxed as the other estimators do; :attr:`Estimate.nudged`), runs ``burn_in``
    steps, then averages ∂F/∂θ over ``samples`` steps. All phases use the same noise path
    (``common_noise``), so the fluctuations largely cancel in the difference.

    **Estimator** (centered by default; ``centered=False`` for one-sided):

        ĝ_T = (⟨∂θF⟩_β − ⟨∂θF⟩_{−β}) / (2β)   or   (⟨∂θF⟩_β − ⟨∂θF⟩_0) / β,

    ⟨·⟩_b the time average after burn-in. With the free energy 𝓕(b) = −T log ∫ e^{−F(s,b)/T} ds,
    ∂θ𝓕(b) = E_b[∂θF], so the expectation of ĝ_T is *exactly* ∇θ (𝓕(β) − 𝓕(−β))/(2β)
    (resp. ∇θ (𝓕(β) − 𝓕(0))/β) at any T and β (the finite-nudge CHL identity; THEORY.md §3.4),
    which tends to ∇θ E_0[ℓ] (the thermal loss; Movellan 1998) as β → 0.

    **T → 0 limit and its bias.** The Gibbs law concentrates on s*_b: by Laplace's method
    E_b[∂θF] = ψ(b) + (T/2) tr(H_b⁻¹ ∂²_s∂θF) + O(T²), H_b = ∂²F/∂s² at s*_b, so

        E[ĝ_T] = ĝ_centered(β) + O(T)      (the deterministic centered/one-sided EP at the same β),

    and the deterministic estimator's own β-bias (c₃β² or c₂β) comes on top when comparing with
    dL/dθ. Euler–Maruyama adds an O(dt) error to the stationary law, which also vanishes with T
    (the noise, not the drift, is what it distorts). The Monte-Carlo error of the mean is
    O(√(T τ_corr/(samples·dt))): the fluctuations of s are O(√T); with common noise they do not
    grow like 1/β. :attr:`Estimate.info` ``["std_error"]`` gives it per parameter entry, by batch
    means over ``blocks`` consecutive blocks of the samples.

    **Which forms are supported.** The chain always integrates the gradient −∂F/∂s (from
    ``energy.grad_states``), never the primitive form's drive:

    - *classical form*: the flow is the gradient flow of F, so the chain samples Gibbs; for
      clipped ρ it is the projected scheme for the box-constrained Gibbs law. A unit held at a
      face by a small force g shifts the mean by ~T/g (exact law) plus a projection error of
      order √(T·dt) while √(2Th) ≳ h·g: the T → 0 limit is then slower than O(T);
    - *primitive form with clipped or identity σ*: its energy is ½‖s‖² − Φ on the box, the same
      as the classical form's; the chain samples that Gibbs law (the equilibria, and the
      deterministic EP limit, are those of the primitive drive);
    - *primitive form with tanh / sigmoid*: **refused**. Its drive σ(u) − s, u = ∂Φ/∂s − β∂ℓ/∂s,
      equals −m ⊙ ∂F/∂s with a state-dependent secant mobility m_i = (σ(u_i) − s_i)/(u_i −
      σ⁻¹(s_i)), so Euler–Maruyama on the drive with noise √(2T/τ) samples a non-equilibrium law,
      not Gibbs (that would need noise √(2Tm/τ) and the Itô drift T ∂_i m_i/τ_i), and the
      thermal identity above fails. Its gradient σ⁻¹(s) − u is unbounded at the edge of σ's open
      range, where Euler–Maruyama is unstable and leaves the range. Use ``form="classical"``.

    Args:
        beta: nudge β > 0.
        temperature: T > 0 (default 1e-3).
        samples: Euler–Maruyama steps averaged after burn-in (default 10 000; ≥ ``blocks``).
        burn_in: steps discarded first (default ⌈10 τ_max/dt⌉).
        dt: time step (default 0.1 τ_min; stability needs dt < 2 τ_min/λ_max(∂²F/∂s²)).
        seed: seed of the noise generator (same seed, batch and options → same estimate; each
            sample's noise depends on its position in the batch).
        centered: ±β (default) or, when False, one-sided (0 and β; the free phase also runs a
            chain, reported in ``info["chain_means"]`` first).
        chains: independent chains per sample and phase (default 1), averaged: the error falls
            like 1/√(chains·samples), and the rows cost little more than one chain on small nets.
        blocks: batch-means blocks for the standard error (≥ 2; default 10).
        common_noise: the same noise path in every phase (default True).

    Samples whose chain leaves the finite range or exceeds ``diverge_at`` count as diverged
    (``on_failure`` as for the deterministic phases).
    """

    name = "langevin"

    def __init__(self, beta: float, *, temperature: float = 1e-3, samples: int = 10_000,
                 burn_in: int | None = None, dt: float | None = None, seed: int = 0,
                 centered: bool = True, chains: int = 1, blocks: int = 10,
                 common_noise: bool = True, **kwargs) -> None:
        super().__init__(beta, **kwargs)
        if not (_is_real(temperature) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got "
                             f"{temperature!r} (T = 0 is the deterministic estimator: use "
                             "'centered' or 'one-sided')")
        if not _is_int(blocks) or blocks < 2:
            raise ValueError(f"blocks must be an integer ≥ 2, got {blocks!r}")
        if not _is_int(samples) or samples < blocks:
            raise ValueError(f"samples must be an integer ≥ blocks ({blocks}), got {samples!r}")
        if burn_in is not None and (not _is_int(burn_in) or burn_in < 0):
            raise ValueError(f"burn_in must be an integer ≥ 0 or None, got {burn_in!r}")
        if dt is not None and not (_is_real(dt) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive finite number or None, got {dt!r}")
        if not _is_int(chains) or chains < 1:
            raise ValueError(f"chains must be an integer ≥ 1, got {chains!r}")
        if not _is_int(seed):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        for flag, value in (("centered", centered), ("common_noise", common_noise)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        self.temperature = float(temperature)
        self.samples = int(samples)
        self.burn_in = None if burn_in is None else int(burn_in)
        self.dt = None if dt is None else float(dt)
        self.seed = int(seed)
        self.centered = centered
        self.chains = int(chains)
        self.blocks = int(blocks)
        self.common_noise = common_noise

    def phases(self) -> list[tuple[float, float]]:
        b = self.beta
        return [(b, 0.5 / b), (-b, -0.5 / b)] if self.centered else [(b, 1.0 / b)]

    def __call__(self, field: VectorField, x: Tensor, y: Tensor, *,
                 free: Equilibrium | None = None, s0: States | None = None) -> Estimate:
        """Estimate dL/dθ (see the class docstring for what the expectation equals)."""
        problem = langevin_unsupported(field.energy)
        if problem:
            raise ValueError(problem)
        base = _bind(field, x)  # the input term once for every phase of the batch
        if free is None:
            free = relax(base, s0, self.relax)
        phases = self.phases()
        nudged = self._relax_nudged(base, y, free, [b for b, _ in phases])
        used = self._usable(free, nudged)
        runs = ([] if self.centered else [(0.0, -1.0 / self.beta, free)]) + [
            (b, c, eq) for (b, c), eq in zip(phases, nudged, strict=True)]
        taus = [1 / t.detach() for t in field.tau.inverse()]
        tau_min = min(float(t.min()) for t in taus)
        tau_max = max(float(t.max()) for t in taus)
        dt = self.dt if self.dt is not None else 0.1 * tau_min
        burn_in = self.burn_in if self.burn_in is not None else math.ceil(10 * tau_max / dt)
        while True:
            run = self._sample(field, x, y, runs, used, dt, burn_in)
            new = run["dead"] & used.bool()
            if not bool(new.any()):
                break
            idx = torch.nonzero(new).flatten()[:10].tolist()
            msg = (f"{int(new.sum())} of {new.numel()} samples' Langevin chains diverged "
                   f"(non-finite or beyond diverge_at={self.nudged_relax.diverge_at:g}; samples "
                   f"{idx}) at temperature {self.temperature:g}, dt {dt:g}")
            if self.on_failure == "raise":
                raise RelaxationError(msg + ": lower dt or the temperature")
            used = used * (~new).to(used.dtype)  # rerun: the same seed gives the same paths
        with torch.no_grad():
            loss = field.loss(free.states, y)
        info = {"estimator": self.name, "beta": self.beta, "temperature": self.temperature,
                "samples": self.samples, "burn_in": burn_in, "dt": dt, "seed": self.seed,
                "centered": self.centered, "chains": self.chains, "blocks": self.blocks,
                "std_error": run["std_error"], "chain_betas": tuple(b for b, _, _ in runs),
                "chain_means": run["means"]}
        return Estimate(run["grads"], tuple(field.learnable_parameters()), free, nudged,
                        tuple(b for b, _ in phases), loss, used.bool(), info)

    def _sample(self, field: VectorField, x: Tensor, y: Tensor,
                phases: list[tuple[float, float, Equilibrium]], used: Tensor, dt: float,
                burn_in: int) -> dict:
        """Run the chains of every phase (stacked along the batch: phase, replica, sample) and
        average Σ_k c_k ∂θF(s_t, β_k) over time."""
        energy = field.energy
        params = tuple(field.learnable_parameters())
        n_phase, reps, batch = len(phases), self.chains, x.shape[0]
        group = reps * batch  # the rows of one phase
        rows = n_phase * group
        keep = used.bool().repeat(reps)
        n_used = max(int(used.bool().sum()), 1) * reps
        ref = phases[0][2].states[0]
        dtype, device = ref.dtype, ref.device
        x_rep = x.repeat(n_phase * reps, *([1] * (x.dim() - 1)))
        y_rep = torch.cat([y] * (n_phase * reps))
        bound = _bind(field, x_rep, y_rep, 1.0)  # its nudge is ∂ℓ/∂s_L; β enters per row
        beta_row = torch.cat([torch.full((group,), float(b), dtype=dtype, device=device)
                              for b, _, _ in phases])
        weight_row = torch.cat([c * keep.to(dtype) / n_used for _, c, _ in phases])
        starts = [_fixed(eq.states, used) for _, _, eq in phases]
        s = tuple(torch.cat([st[k].repeat(reps, *([1] * (st[k].dim() - 1))) for st in starts])
                  for k in range(len(starts[0])))
        h = tuple((dt * it.detach()).to(dtype) for it in field.tau.inverse())
        scale = tuple(torch.sqrt(2.0 * self.temperature * hh) for hh in h)
        gen = torch.Generator(device=device).manual_seed(self.seed)
        autograd = field.gradient == "autograd"
        beta_col = _rows(beta_row, s[-1])
        limit = self.nudged_relax.diverge_at
        per_row = sum(int(t[0].numel()) for t in s)
        chunk_max = max(1, (1 << 20) // max(rows * per_row, 1))  # records per backward pass

        def noise(k: int) -> States:
            """√(2T h) ⊙ ξ for the next k steps, shape (k, rows, ...) per layer."""
            out = []
            for t, sc in zip(s, scale, strict=True):
                xi = torch.randn((k, group if self.common_noise else rows, *t.shape[1:]),
                                 generator=gen, dtype=dtype, device=device)
                if self.common_noise:
                    xi = xi.repeat(1, n_phase, *([1] * (t.dim() - 1)))
                out.append(sc * xi)
            return tuple(out)

        def advance(st: States, k: int, record: list | None) -> States:
            """k Euler–Maruyama steps s ← Π(s − h ⊙ ∂F/∂s + √(2T h) ⊙ ξ)."""
            kicks = noise(k)
            for i in range(k):
                grads = list(Energy.grad_states(energy, x_rep, st) if autograd
                             else energy.grad_states(x_rep, st, input_term=bound.input_term))
                grads[-1] = grads[-1] + beta_col * bound.nudge(st)
                st = energy.clamp(tuple(si - hi * gi + kick[i] for si, gi, hi, kick
                                        in zip(st, grads, h, kicks, strict=True)))
                if record is not None:
                    record.append(st)
            return st

        with torch.no_grad():
            left = burn_in
            while left > 0:
                s = advance(s, min(chunk_max, left), None)
                left -= min(chunk_max, left)
        dead = torch.zeros(rows, dtype=torch.bool, device=device)
        bounds = np.linspace(0, self.samples, self.blocks + 1).round().astype(int)
        block_grads: list[tuple[Tensor, ...]] = []
        sums = tuple(torch.zeros_like(t) for t in s)
        for lo, hi_ in zip(bounds[:-1], bounds[1:], strict=True):
            acc = [torch.zeros_like(p) for p in params]
            done = 0
            while done < hi_ - lo:
                n_rec = min(chunk_max, hi_ - lo - done)
                recs: list[States] = []
                with torch.no_grad():
                    s = advance(s, n_rec, recs)
                g, bad, chunk_sums = _chunk_gradient(field, x_rep, y_rep, recs, beta_row,
                                                     weight_row, params, limit)
                dead |= bad
                sums = tuple(a + b for a, b in zip(sums, chunk_sums, strict=True))
                acc = [a + gi for a, gi in zip(acc, g, strict=True)]
                done += n_rec
            block_grads.append(tuple(a / (hi_ - lo) for a in acc))
        sizes = torch.tensor(np.diff(bounds), dtype=dtype)
        grads, errors = [], []
        for k in range(len(params)):
            stack = torch.stack([bg[k] for bg in block_grads])
            w = (sizes / sizes.sum()).to(stack.device).reshape(-1, *([1] * (stack.dim() - 1)))
            mean = (w * stack).sum(dim=0)
            var = ((stack - mean) ** 2).sum(dim=0) / (self.blocks * (self.blocks - 1))
            grads.append(mean.detach())
            errors.append(var.sqrt().detach())
        dead_sample = dead.reshape(n_phase * reps, batch).any(dim=0)
        means = tuple(tuple(t.reshape(n_phase, reps, batch, *t.shape[1:])[i].mean(dim=0)
                            / self.samples for t in sums) for i in range(n_phase))
        return {"grads": tuple(grads), "std_error": tuple(errors), "dead": dead_sample,
                "means": means}


def langevin_unsupported(energy: Energy) -> str | None:
    """Why :class:`LangevinEP` cannot sample this energy's Gibbs law (None when it can)."""
    if getattr(energy, "form", None) != "primitive":
        return None
    bad = sorted({a.name for a in getattr(energy, "activations", ())
                  if not a.bounded and (math.isfinite(a.low) or math.isfinite(a.high))})
    if not bad:
        return None
    return (f"Langevin EP does not support the primitive form with {', '.join(bad)}: its drive "
            "σ(∂Φ/∂s − β∂ℓ/∂s) − s is not −∂F/∂s (Euler–Maruyama on it samples a non-Gibbs "
            "law), and its gradient σ⁻¹(s) − ∂Φ/∂s is unbounded at the edge of σ's open range, "
            "where Euler–Maruyama leaves the range. Use form='classical' (or a clipped or "
            "identity activation)")


ESTIMATORS: dict[str, type[Estimator]] = {
    "one-sided": OneSidedEP,
    "centered": CenteredEP,
    "holomorphic": HolomorphicEP,
    "finite-nudge": FiniteNudgeEP,
    "langevin": LangevinEP,
}
ALIASES = {"onesided": "one-sided", "vanilla": "one-sided", "symmetric": "centered",
           "finitenudge": "finite-nudge", "stochastic": "langevin"}


def canonical_name(name: str) -> str:
    """The key in :data:`ESTIMATORS` of an estimator name or alias.

    Case is ignored and ``_`` reads as ``-``; a name is looked up in :data:`ALIASES` with and
    without its hyphens (``Finite_Nudge``, ``finitenudge`` → ``finite-nudge``; ``vanilla`` →
    ``one-sided``). An unknown name is a ``ValueError`` listing the known ones.
    """
    key = str(name).lower().replace("_", "-")
    key = ALIASES.get(key.replace("-", ""), ALIASES.get(key, key))
    if key not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return key


def accepted_options(name: str, settings: Mapping[str, object]) -> dict[str, object]:
    """The entries of ``settings`` that estimator ``name``'s constructor takes, less those set
    to ``None``.

    The constructors' keyword options are the one record of which estimator takes what, so a
    caller holding settings for every estimator (``points``, ``temperature``, ``seed``, ...)
    passes each estimator the ones it takes: ``points`` to holomorphic and finite-nudge EP,
    ``temperature`` and ``seed`` to Langevin EP, ``random_sign`` and ``seed`` to one-sided EP.
    """
    accepted = _keyword_options(ESTIMATORS[canonical_name(name)])
    return {k: v for k, v in settings.items() if k in accepted and v is not None}


def get_estimator(name: str, beta: float, **kwargs) -> Estimator:
    """An estimator by name: ``one-sided`` (``vanilla``), ``centered`` (``symmetric``),
    ``holomorphic``, ``finite-nudge``, ``langevin`` (``stochastic``); see
    :func:`canonical_name`.

    ``kwargs`` go to the estimator's constructor (e.g. ``points=`` for holomorphic and
    finite-nudge EP, ``temperature=`` for Langevin EP); an option the estimator does not take
    is a ``ValueError`` that lists the ones it does (:func:`accepted_options` picks them).
    """
    key = canonical_name(name)
    cls = ESTIMATORS[key]
    accepted = _keyword_options(cls)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"estimator {key!r} takes no option {', '.join(map(repr, unknown))}; "
                         f"it takes: {', '.join(sorted(accepted))}")
    return cls(beta, **kwargs)


def _keyword_options(cls: type[Estimator]) -> set[str]:
    """The keyword-only constructor options of ``cls`` and its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and issubclass(klass, Estimator):
            params = inspect.signature(klass.__init__).parameters.values()
            names |= {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return names


#: one term c_k·F(s_k, β_k) of an estimator: (c_k, β_k, s_k)
Term = tuple[float | complex, float | complex, States]


def _terms(phases: Sequence[tuple[float | complex, float | complex]], free: Equilibrium,
           nudged: Sequence[Equilibrium]) -> list[Term]:
    """The terms of Σ_k c_k F(s_k, β_k): the nudged phases, and the free phase with
    c_0 = −Σ_k c_k unless it vanishes (the centered and holomorphic rules)."""
    terms: list[Term] = [(c, b, eq.states) for (b, c), eq in zip(phases, nudged, strict=True)]
    c0 = -sum(c for _, c in phases)
    if abs(c0) > 1e-12 * max(abs(c) for _, c in phases):
        terms.insert(0, (c0, 0.0, free.states))
    return terms


def _closed_form_gradient(field: VectorField, x: Tensor, terms: list[Term],
                          used: Tensor) -> tuple[Tensor, ...] | None:
    """∂θ of (Σ_b used_b Σ_k c_k F(s_{k,b}, β_k)) / Σ_b used_b from the energy's closed form
    (:meth:`~ctep.energies.base.Energy.param_grads`): where the cost has no parameters (then
    ∂θF = ∂θE), every c_k and state is real, and the energy gives one; else None."""
    if any(True for _ in field.cost.parameters()):
        return None
    if any(isinstance(c, complex) or s[0].is_complex() for c, _, s in terms):
        return None
    share = used / used.sum().clamp_min(1)
    return field.energy.param_grads(x, [(c * share, _fixed(s, used)) for c, _, s in terms])


def _autograd_gradient(field: VectorField, x: Tensor, y: Tensor, terms: list[Term],
                       used: Tensor, params: tuple[nn.Parameter, ...]) -> tuple[Tensor, ...]:
    """The same gradient by autograd through Σ_k c_k F(s_k, β_k) (any energy and cost)."""
    with torch.enable_grad():
        total = sum(c * field.total_energy(x, _fixed(s, used), y, b) for c, b, s in terms)
        if total.is_complex():
            total = total.real  # θ is real, so ∂θ Re(c·F) = Re(c·∂θF)
        objective = (total * used).sum() / used.sum().clamp_min(1)
        grads = torch.autograd.grad(objective, params, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g.detach()
                 for p, g in zip(params, grads, strict=True))


def _bind(field: VectorField, x: Tensor, y: Tensor | None = None,
          beta: float | complex = 0.0) -> BoundField:
    """``field.bind`` under ``torch.no_grad``: the estimators only relax the bound field (their
    θ-gradient is autograd of F at the equilibria), so its input term needs no graph (a
    max-pooled input convolution would keep its pre-pooling map alive for a backward pass)."""
    with torch.no_grad():
        return field.bind(x, y, beta)


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


def _chunk_gradient(field: VectorField, x_rep: Tensor, y_rep: Tensor, recs: list[States],
                    beta_row: Tensor, weight_row: Tensor, params: tuple[nn.Parameter, ...],
                    limit: float) -> tuple[tuple[Tensor, ...], Tensor, States]:
    """∂θ Σ_t Σ_rows w_row F(s_t, β_row) over the recorded states (one backward pass); the rows
    with a non-finite or out-of-range record (whose records are zeroed first); and the sum of the
    records per row."""
    n_rec, rows = len(recs), beta_row.shape[0]
    states = tuple(torch.cat([r[k] for r in recs]) for k in range(len(recs[0])))
    flat = torch.cat([t.reshape(t.shape[0], -1) for t in states], dim=1)
    ok = torch.isfinite(flat).all(dim=1) & (flat.abs().amax(dim=1) <= limit)
    bad = ~ok.reshape(n_rec, rows).all(dim=0)
    states = tuple(torch.where(_rows(ok, t), t, torch.zeros_like(t)) for t in states)
    sums = tuple(t.reshape(n_rec, rows, *t.shape[1:]).sum(dim=0) for t in states)
    x = x_rep.repeat(n_rec, *([1] * (x_rep.dim() - 1)))
    y = torch.cat([y_rep] * n_rec)
    beta = beta_row.repeat(n_rec)
    with torch.enable_grad():
        total = field.energy.energy(x, states) + beta * field.cost(states[-1], y)
        objective = (total * weight_row.repeat(n_rec) * ok.to(total.dtype)).sum()
        grads = torch.autograd.grad(objective, params, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g.detach()
                 for p, g in zip(params, grads, strict=True)), bad, sums


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """A ``(B,)`` tensor shaped to broadcast against a ``(B, ...)`` tensor."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
