"""Per-sample adaptive integrators of τ ⊙ ds/dt = drive(s), with no host synchronisation per step.

Every sample b carries its own time t_b and step size h_b. One step of the whole working batch
evaluates the embedded pair with the per-sample steps, measures each sample's error in the max
norm

    err_b = max_i |e_{b,i}| / (atol + rtol · max(|s_{b,i}|, |s'_{b,i}|)),

accepts (``err_b ≤ 1``) or rejects each sample with ``torch.where``, and sets the next step by the
elementary (I) controller

    h_b ← h_b · clamp(safety · err_b^(−1/(q+1)), min_factor, max_factor)      (q: embedded order)

(the factor is at most 1 after a rejection, and ``min_factor`` after a non-finite error); etd2
uses Gustafsson's predictive controller (:func:`predictive_factor`) after two accepted steps in
a row, and the I controller otherwise. Nothing
in a step reads a tensor value on the host: the residual ‖drive‖∞ is checked, and finished
samples leave the working batch, only every ``check_every`` steps, so a sample's trajectory does
not depend on the other samples in its batch (unlike torchdiffeq's one step size per batch:
SOLVER_NOTES.md §1).

Schemes:

- ``rk23``: the Bogacki–Shampine 3(2) pair (FSAL, three evaluations per step) on
  ds/dt = τ⁻¹ ⊙ drive(s).
- ``etd2``: the exponential Runge–Kutta pair ETD2RK / ETD1 (Cox & Matthews 2002) on the split
  ds/dt = (g(s) − s)/τ with g(s) = s + drive(s): the unit leak −s/τ is integrated exactly, so the
  step is not limited by the fastest τ's leak. With z_i = h/τ_i, φ₁ = 1 − e^{−z}, φ₂ = (e^{−z} −
  1 + z)/z:

      a  = s + φ₁ ⊙ drive(s)              (exponential Euler, first order)
      s' = a + φ₂ ⊙ (g(a) − g(s))          (second order);  error estimate e = s' − a.

  For z → ∞ both stages become the fixed-point map (a = g(s), s' → g(a)). Two evaluations per
  step. φ₁, φ₂ and e^{−z} come from one expm1 over all layers at once (one column per layer
  when τ is uniform within each layer); g(a) − g(s) is formed as d_a − e^{−z} ⊙ d. Steps are
  capped at 40·τ_max, where e^{−z} has vanished for every neuron. Without a given first step,
  etd2 takes one from its own error estimate at a trial step (:func:`exponential_initial_step`),
  rk23 from Hairer's heuristic (:func:`initial_step`); each costs one evaluation.

States are projected onto the energy's box after each step (as in the fixed-step loops); the
last evaluation of a step is made at the projected state and serves as the next step's first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._states import States, per_sample_max_abs, select_samples
from ..dynamics import BoundField
from ._book import Book, finish_samples, initial_states, restrict_field
from .config import RelaxConfig, default_tolerances
from .equilibrium import Equilibrium, GridPath, RelaxationError, Status

#: step-size controller: safety factor and the clamps on the change of h per step
SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
#: a sample whose step falls below this fraction of τ_min (after rejections) has failed
MIN_STEP_FRACTION = 1e-12
#: steps never exceed this multiple of τ_max (keeps h finite when the error estimate is 0)
MAX_STEP_FACTOR = 1e15
#: etd2's steps never exceed this multiple of τ_max: beyond it e^{−h/τ} < 4.3e-18 for every
#: neuron (below the resolution of 1 in float64), so a longer step changes only φ₂ = 1 − 1/z
#: and the time t. Without the cap, a coarse tolerance grew h tenfold per step once the error
#: estimate was small, and t passed the default time cap (500·τ_max) while the residual was
#: still above tol: measured at rtol 0.3 and 0.5 (784-64-10 and 784-256-10), 2-69% of the
#: samples stopped as MAX_STEPS; with the cap all converged (0-1.5 more evaluations).
EXPONENTIAL_MAX_STEP_FACTOR = 40.0


class _Rates:
    """τ⁻¹ of every neuron as one row, so that z = h/τ and the φ-functions of a step are
    computed once for the whole state instead of once per layer.

    When each layer's τ is uniform (homogeneous τ, or one τ per layer) the row holds one entry
    per layer, z is one column per layer and sample, and the φ-functions cost O(B·L) instead of
    O(B·n). Which case applies is read on the host once, when the integration starts
    (``collapse_uniform=False`` keeps one entry per neuron: the same values, at O(B·n)).
    """

    def __init__(self, inv_tau: tuple[Tensor, ...], collapse_uniform: bool = True) -> None:
        flat = [it.detach().reshape(-1) for it in inv_tau]
        self.uniform = collapse_uniform and all(bool((f == f[0]).all()) for f in flat)
        self.shapes = tuple(it.shape for it in inv_tau)
        if self.uniform:
            self.row = torch.cat([f[:1] for f in flat])
            self.sizes = (1,) * len(flat)
        else:
            self.row = torch.cat(flat)
            self.sizes = tuple(f.numel() for f in flat)

    def z(self, h: Tensor, like: Tensor) -> Tensor:
        """z = h_b/τ_i, shape (B, row length); h cast to the states' real dtype (as the states'
        own arithmetic would)."""
        real = like.real.dtype if like.is_complex() else like.dtype
        return h.to(real)[:, None] * self.row

    def split(self, values: Tensor) -> tuple[Tensor, ...]:
        """A (B, row length) tensor as one tensor per layer that broadcasts over its states."""
        parts = values.split(self.sizes, dim=1)
        if self.uniform:
            return tuple(p.reshape(-1, *([1] * len(shape)))
                         for p, shape in zip(parts, self.shapes, strict=True))
        return tuple(p.reshape(-1, *shape) for p, shape in zip(parts, self.shapes, strict=True))


class _Scheme:
    """An embedded pair: :meth:`step` returns (s', drive(s'), error estimate);
    :meth:`first_step` the per-sample first step when none is given."""

    name: str
    evals_per_step: int
    embedded_order: int  # q: the error estimate is O(h^(q+1))
    max_step_factor = MAX_STEP_FACTOR  # h ≤ max_step_factor · τ_max
    predictive = False  # Gustafsson's predictive controller (else the I controller)

    def step(self, field: BoundField, s: States, d: States, h: Tensor, rates: _Rates
             ) -> tuple[States, States, States]:  # pragma: no cover - abstract
        raise NotImplementedError

    def first_step(self, field: BoundField, s: States, d: States, rtol: float, atol: float,
                   rates: _Rates) -> Tensor:
        """Hairer's heuristic for an explicit scheme (:func:`initial_step`)."""
        return initial_step(field, s, d, self.embedded_order + 1, rtol, atol)


class _BogackiShampine(_Scheme):
    """Bogacki–Shampine 3(2): b = (2/9, 1/3, 4/9, 0), b̂ = (7/24, 1/4, 1/3, 1/8), FSAL."""

    name = "rk23"
    evals_per_step = 3
    embedded_order = 2

    def step(self, field: BoundField, s: States, d: States, h: Tensor, rates: _Rates
             ) -> tuple[States, States, States]:
        it = field.inv_tau
        hs = tuple(_column(h, x) for x in s)
        k1 = _per_tau(d, it)
        k2 = _rate(field, tuple(x + 0.5 * hh * k for x, hh, k in zip(s, hs, k1, strict=True)))
        k3 = _rate(field, tuple(x + 0.75 * hh * k for x, hh, k in zip(s, hs, k2, strict=True)))
        new = field.energy.clamp(tuple(
            x + hh * (2 / 9 * a + 1 / 3 * b + 4 / 9 * c)
            for x, hh, a, b, c in zip(s, hs, k1, k2, k3, strict=True)))
        d4 = field.drive(new)
        k4 = _per_tau(d4, it)
        err = tuple(hh * (-5 / 72 * a + 1 / 12 * b + 1 / 9 * c - 1 / 8 * e)
                    for hh, a, b, c, e in zip(hs, k1, k2, k3, k4, strict=True))
        return new, d4, err


class _ExponentialRK2(_Scheme):
    """ETD2RK with the embedded exponential Euler step (leak −s/τ exact)."""

    name = "etd2"
    evals_per_step = 2
    embedded_order = 1
    max_step_factor = EXPONENTIAL_MAX_STEP_FACTOR
    predictive = True

    def step(self, field: BoundField, s: States, d: States, h: Tensor, rates: _Rates
             ) -> tuple[States, States, States]:
        a, corr = _exponential_stages(field, s, d, h, rates)
        new = field.energy.clamp(tuple(ai + c for ai, c in zip(a, corr, strict=True)))
        return new, field.drive(new), corr

    def first_step(self, field: BoundField, s: States, d: States, rtol: float, atol: float,
                   rates: _Rates) -> Tensor:
        """etd2's own error estimate at a trial step (:func:`exponential_initial_step`)."""
        return exponential_initial_step(field, s, d, rtol, atol, rates)


SCHEMES: dict[str, _Scheme] = {c.name: c() for c in (_BogackiShampine, _ExponentialRK2)}


def _exponential_stages(field: BoundField, s: States, d: States, h: Tensor, rates: _Rates
                        ) -> tuple[States, States]:
    """etd2's first stage a = s + φ₁ ⊙ d and its correction (and error estimate)
    φ₂ ⊙ (g(a) − g(s)) for steps h; one evaluation, drive(a)."""
    phi1, phi2, decay = _phi_functions(rates.z(h, s[0]), rates)
    a = tuple(x + p * di for x, p, di in zip(s, phi1, d, strict=True))
    da = field.drive(a)
    # g(a) − g(s) = (a + d_a) − (s + d) = d_a − e^{−z} ⊙ d  (a − s = φ₁ ⊙ d = d − e^{−z} ⊙ d)
    corr = tuple(p * (dai - e * di) for p, dai, e, di in zip(phi2, da, decay, d, strict=True))
    return a, corr

#: below this z, φ₂ is summed as its Taylor series (the closed form loses digits to
#: cancellation, about 2·eps/z relative): 0.02 in float64, 0.1 in lower precisions
PHI2_SERIES_BELOW = 0.02
PHI2_SERIES_BELOW_LOW_PRECISION = 0.1
#: terms of that series: the first left out, 2·z⁷/9! of φ₂, is below 1e-17 for z < 0.02
PHI2_SERIES_TERMS = 7


def _phi_functions(z: Tensor, rates: _Rates
                   ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...]]:
    """φ₁ = 1 − e^{−z}, φ₂ = (e^{−z} − 1 + z)/z and e^{−z} for a (B, row) tensor z ≥ 0 from one
    expm1, each split per layer (:meth:`_Rates.split`). e^{−z} = 1 + expm1(−z) is accurate to
    2⁻⁵³ in absolute terms (not relative ones for large z): it only multiplies a drive in
    g(a) − g(s) = d_a − e^{−z} ⊙ d."""
    em = torch.expm1(-z)  # e^{−z} − 1, accurate for small z
    return rates.split(-em), rates.split(_phi2(z, em)), rates.split(em + 1)


def _phi2(z: Tensor, em: Tensor | None = None) -> Tensor:
    """φ₂(z) = (e^{−z} − 1 + z)/z for z ≥ 0, given ``em`` = expm1(−z) (computed if None): the
    Taylor series z·Σ_{k=0}^{6} (−z)^k/(k+2)! below z = 0.02 (truncation below 1e-17 relative;
    0.1 below float64, truncation 6e-13), else 1 + expm1(−z)/z (relative error about 2·eps/z
    from the cancellation: below 1.2e-14 in float64 and 1.2e-6 in float32 there; exact at
    z = ∞)."""
    if em is None:
        em = torch.expm1(-z)
    w = -z
    series = torch.full_like(z, 1 / math.factorial(PHI2_SERIES_TERMS + 1))
    for k in range(PHI2_SERIES_TERMS - 1, -1, -1):  # Horner in w = −z: Σ w^k/(k+2)!
        series.mul_(w).add_(1 / math.factorial(k + 2))
    series.mul_(z)
    closed = (em / z).add_(1)  # z = 0 gives NaN here, and the series there
    below = PHI2_SERIES_BELOW if z.dtype == torch.float64 else PHI2_SERIES_BELOW_LOW_PRECISION
    return torch.where(z < below, series, closed)


def _column(h: Tensor, like: Tensor) -> Tensor:
    """Per-sample ``h`` shaped to broadcast over ``like`` (batch first), in its real dtype."""
    real = like.real.dtype if like.is_complex() else like.dtype
    return h.to(real).reshape(-1, *([1] * (like.dim() - 1)))


def _per_tau(d: States, inv_tau: tuple[Tensor, ...]) -> States:
    """ds/dt = τ⁻¹ ⊙ d from a drive d = τ ⊙ ds/dt already evaluated."""
    return tuple(di * i for di, i in zip(d, inv_tau, strict=True))


def _rate(field: BoundField, s: States) -> States:
    """ds/dt = τ⁻¹ ⊙ drive(s)."""
    return _per_tau(field.drive(s), field.inv_tau)


def error_norm(err: States, s: States, new: States, rtol: float, atol: float) -> Tensor:
    """err_b = max_i |e_i| / (atol + rtol · max(|s_i|, |s'_i|)) per sample, float64 ``(B,)``.
    The layers are joined into one (B, n) row per sample first (one pass instead of one per
    layer; the maximum does not depend on the order)."""
    e, x, n = (_joined(t) for t in (err, s, new))
    scale = torch.maximum(x.abs(), n.abs()).mul_(rtol).add_(atol)
    return e.abs().div_(scale).amax(dim=1).to(torch.float64)


def _joined(states: States) -> Tensor:
    """The layers of ``states`` side by side, shape (B, n) (a view for one layer)."""
    rows = [x.reshape(x.shape[0], -1) for x in states]
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)


def step_factor(err: Tensor, embedded_order: int) -> Tensor:
    """The I controller's factor clamp(safety · err^(−1/(q+1)), min, max), at most 1 after a
    rejection (err > 1) and ``MIN_FACTOR`` after a non-finite error."""
    # err > 1 gives err^(−1/(q+1)) ≤ 1 and so a factor ≤ SAFETY < 1 without a separate cap; a NaN
    # or infinite error becomes +inf, whose factor 0 is clamped up to MIN_FACTOR
    err = err.nan_to_num(nan=math.inf).clamp_min(1e-300)
    return (SAFETY * err.pow(-1.0 / (embedded_order + 1))).clamp(MIN_FACTOR, MAX_FACTOR)


def predictive_factor(err: Tensor, err_prev: Tensor, h: Tensor, h_prev: Tensor,
                      embedded_order: int) -> Tensor:
    """Gustafsson's predictive controller (Hairer & Wanner, Solving ODEs II, IV.8, (8.21)),
    after an accepted step n that followed an accepted step n − 1, with k = q + 1:

        h_{n+1} = h_n · clamp(safety · (h_n/h_{n−1}) · err_n^(−1/k) · (err_{n−1}/err_n)^(1/k),
                              min_factor, max_factor).

    It extrapolates how the error changes from step to step; the I controller
    (:func:`step_factor`) assumes it stays as it was. On a relaxation the error per step falls
    as the trajectory settles, so the I controller's steps lag behind what the tolerance allows
    (measured on etd2-coarse: every step accepted with err 0.3-0.6, factor 1.2-2).
    """
    k = embedded_order + 1
    err = err.clamp_min(1e-300)
    fac = SAFETY * (h / h_prev) * err.pow(-1.0 / k) * (err_prev / err).pow(1.0 / k)
    return fac.nan_to_num(nan=MIN_FACTOR).clamp(MIN_FACTOR, MAX_FACTOR)


def initial_step(field: BoundField, s: States, d: States, order: int, rtol: float,
                 atol: float) -> Tensor:
    """Per-sample first step (Hairer, Nørsett & Wanner, Solving ODEs I, II.4), one evaluation.

    d₀ = ‖s‖/sc, d₁ = ‖f(s)‖/sc, h₀ = 0.01·d₀/d₁ (1e-6 when either is below 1e-5); after an
    Euler step of h₀, d₂ = ‖f(s + h₀f) − f(s)‖/(sc·h₀) and
    h = min(100·h₀, (0.01/max(d₁, d₂))^(1/(p+1))) with p the scheme's order, sc = atol + rtol·|s|.
    """
    f0 = _per_tau(d, field.inv_tau)
    sc = tuple(atol + rtol * x.abs() for x in s)
    d0 = per_sample_max_abs(tuple(x / c for x, c in zip(s, sc, strict=True))).to(torch.float64)
    d1 = per_sample_max_abs(tuple(f / c for f, c in zip(f0, sc, strict=True))).to(torch.float64)
    tiny = (d0 < 1e-5) | (d1 < 1e-5) | ~torch.isfinite(d1)
    h0 = torch.where(tiny, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    s1 = tuple(x + _column(h0, x) * f for x, f in zip(s, f0, strict=True))
    f1 = _rate(field, s1)
    d2 = per_sample_max_abs(tuple((a - b) / c for a, b, c in zip(f1, f0, sc, strict=True)))
    d2 = d2.to(torch.float64) / h0
    big = torch.maximum(d1, d2)
    h1 = torch.where(big <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / big.clamp_min(1e-300)).pow(1.0 / (order + 1)))
    h = torch.minimum(100 * h0, h1)
    return torch.where(torch.isfinite(h) & (h > 0), h, torch.full_like(h, 1e-6))


#: etd2's trial step for its first-step estimate, as a fraction of τ_min (z ≤ 0.01 for every
#: neuron, where the error estimate grows as h²)
TRIAL_STEP_FRACTION = 0.01
#: the first step is at most this multiple of the trial step (100·τ_min), and at least this
#: fraction of it (1e-8·τ_min, far above the failure threshold 1e-12·τ_min)
MAX_FIRST_GROWTH = 1e4
MIN_FIRST_SHRINK = 1e-6


def exponential_initial_step(field: BoundField, s: States, d: States, rtol: float, atol: float,
                             rates: _Rates) -> Tensor:
    """Per-sample first step of ``etd2`` from its own error estimate, one evaluation.

    A trial exponential Euler stage of h₀ = 0.01·τ_min, a₀ = s + φ₁(h₀/τ) ⊙ drive(s), gives
    the error estimate the scheme would make for a step of h₀, e₀ = φ₂(h₀/τ) ⊙ (g(a₀) − g(s)),
    and its norm err₀ (:func:`error_norm`, scaled by max(|s|, |a₀|)). While z = h/τ is small,
    e(h) ≈ e₀·(h/h₀)² (φ₁ ≈ z, φ₂ ≈ z/2 and g(a) − g(s) ≈ J_g·φ₁ ⊙ d); for larger z both
    φ-functions grow more slowly than that, so the model over-estimates the error. The first
    step is the one the controller would take after the trial,

        h = h₀ · clamp(0.9 · err₀^(−1/2), 10⁻⁶, 10⁴)        (h₀ if err₀ is not finite),

    whose estimated error is 0.81 of the tolerance (at tight tolerances h < h₀: the model is
    then more accurate still). Unlike Hairer's heuristic
    (:func:`initial_step`), which bounds the first step by 100 times a trial step of 1e-6 when
    the states are 0 (the usual start of a relaxation), it measures the error of the scheme that
    takes the step: with the leak integrated exactly, that error comes from the change of
    g(s) = s + drive(s) along the step, not from the fast neurons' decay.
    """
    tau_min = 1 / float(rates.row.max())
    h0 = torch.full((s[0].shape[0],), TRIAL_STEP_FRACTION * tau_min, dtype=torch.float64,
                    device=s[0].device)
    a, err = _exponential_stages(field, s, d, h0, rates)
    norm = error_norm(err, s, a, rtol, atol)
    growth = (SAFETY * norm.clamp_min(1e-300).pow(-0.5)).clamp(MIN_FIRST_SHRINK, MAX_FIRST_GROWTH)
    return h0 * torch.where(torch.isfinite(norm), growth, torch.ones_like(growth))


def tolerances(cfg: RelaxConfig) -> tuple[float, float]:
    """(rtol, atol): the config's, or rtol = min(1e-3, tol) and atol = tol/10 (as for
    torchdiffeq; floored at 1e-13 and 1e-15).

    atol must be positive: a state entry that is exactly 0 before and after a step (the zero
    start, a neuron held at the box's edge by the projection) has no relative scale, so with
    atol = 0 its error ratio is 0/0 or e/0 and every step of the sample would be rejected.
    """
    rtol, atol = default_tolerances(cfg)
    if not (rtol >= 0 and atol > 0 and math.isfinite(rtol + atol)):
        raise ValueError(f"rk23/etd2 need a finite rtol ≥ 0 and a finite atol > 0 (a state "
                         f"that is exactly 0 has no relative scale); got rtol {rtol}, "
                         f"atol {atol}")
    return rtol, atol


class _Stepper:
    """The working batch of an adaptive integration: states, drives, per-sample t and h."""

    def __init__(self, scheme: _Scheme, field: BoundField, s: States, rtol: float, atol: float,
                 h0: float | None) -> None:
        self.scheme, self.field, self.rtol, self.atol = scheme, field, rtol, atol
        self.rates = _Rates(field.inv_tau)
        self.h_max = scheme.max_step_factor * max(float((1 / it).max()) for it in field.inv_tau)
        self.s = s
        self.d = field.drive(s)
        batch = s[0].shape[0]
        self.t = torch.zeros(batch, dtype=torch.float64, device=s[0].device)
        self.nfe = 1
        if h0 is None:
            self.h = scheme.first_step(field, s, self.d, rtol, atol, self.rates)
            self.nfe += 1
        else:
            self.h = torch.full_like(self.t, h0)
        self.h = self.h.clamp_max(self.h_max)  # the first step too (given or estimated)
        self.rejected = torch.zeros(batch, dtype=torch.int64, device=s[0].device)
        # error and size of each sample's last accepted step (NaN: none yet)
        self.err_prev = torch.full_like(self.t, math.nan)
        self.h_prev = torch.full_like(self.t, math.nan)

    def step(self, t_end: Tensor | float) -> None:
        """One attempted step of every working sample, clipped so that no t passes ``t_end``."""
        h = torch.minimum(self.h, (t_end - self.t).clamp_min(0.0))
        new, d_new, err = self.scheme.step(self.field, self.s, self.d, h, self.rates)
        self.nfe += self.scheme.evals_per_step
        norm = error_norm(err, self.s, new, self.rtol, self.atol)
        ok = norm <= 1  # False for NaN
        self.s = select_samples(ok, new, self.s)
        self.d = select_samples(ok, d_new, self.d)
        self.t = torch.where(ok, self.t + h, self.t)
        self.rejected = self.rejected + (~ok).to(self.rejected.dtype)
        frozen = h <= 0  # at t_end: keep h as it is (h·factor would shrink it to zero)
        q = self.scheme.embedded_order
        factor = step_factor(norm, q)
        if self.scheme.predictive:  # after two accepted steps in a row; else the I controller
            follows = ok & torch.isfinite(self.err_prev)
            factor = torch.where(follows, predictive_factor(norm, self.err_prev, h, self.h_prev, q),
                                 factor)
            self.err_prev = torch.where(ok, norm, self.err_prev)
            self.h_prev = torch.where(ok, h, self.h_prev)
        grown = (h * factor).clamp_max(self.h_max)
        self.h = torch.where(frozen, self.h, grown)

    def keep(self, mask: Tensor, field: BoundField) -> None:
        """Restrict the working batch to the samples in ``mask``."""
        self.s = tuple(x[mask] for x in self.s)
        self.d = tuple(x[mask] for x in self.d)
        self.t, self.h, self.rejected = self.t[mask], self.h[mask], self.rejected[mask]
        self.err_prev, self.h_prev = self.err_prev[mask], self.h_prev[mask]
        self.field = field


def relax_adaptive(field: BoundField, s0: States, cfg: RelaxConfig) -> Equilibrium:
    """Relax with a per-sample adaptive scheme (``cfg.method`` in ``rk23``, ``etd2``).

    The residual ‖drive‖∞ is read every ``check_every`` steps (0: only after ``max_steps``); a
    sample stops when it is ≤ tol (CONVERGED), when its states are non-finite or beyond
    ``diverge_at`` (DIVERGED), when its time reaches ``max_time`` (MAX_STEPS, default
    500·τ_max; ``math.inf`` leaves ``max_steps`` as the only cap), or when its step underflows
    below 1e-12·τ_min (SOLVER_FAILED). ``dt`` sets every sample's first step (default: the
    per-sample heuristic of :func:`initial_step`, one evaluation). ``t`` is each sample's own
    time; ``nfe`` and ``steps`` count attempted steps (rejected ones included).
    """
    if cfg.method not in SCHEMES:
        raise ValueError(f"unknown adaptive method {cfg.method!r}; known: {', '.join(SCHEMES)}")
    if cfg.record:
        raise ValueError(f"record=True is not available with {cfg.method!r}: each sample has "
                         "its own time, so there are no common check times; use exp_euler or a "
                         "torchdiffeq method to record a trajectory")
    rtol, atol = tolerances(cfg)
    taus = [1 / it for it in field.inv_tau]
    tau_max = max(float(t.max()) for t in taus)
    tau_min = min(float(t.min()) for t in taus)
    max_time = cfg.max_time if cfg.max_time is not None else 500.0 * tau_max
    if not max_time > 0:  # math.inf is allowed: max_steps is then the only cap
        raise ValueError(f"max_time must be positive, got {max_time}")
    if cfg.dt is not None and not (cfg.dt > 0 and math.isfinite(cfg.dt)):
        raise ValueError(f"dt (the first step) must be positive and finite, got {cfg.dt}")
    batch = s0[0].shape[0]
    book = Book(s0, False)
    idx = torch.arange(batch, device=s0[0].device)
    run = _Stepper(SCHEMES[cfg.method], field, s0, rtol, atol, cfg.dt)
    check = cfg.check_every if cfg.check_every > 0 else cfg.max_steps + 1
    h_min = MIN_STEP_FRACTION * tau_min
    step = 0
    while True:
        if step % check == 0 or step == cfg.max_steps:
            count = (step, run.nfe)
            r = per_sample_max_abs(run.d)
            keep = finish_samples(book, idx, run.s, r, cfg.tol, cfg.diverge_at, run.t, count)
            failed = keep & (run.h < h_min)
            out_of_time = keep & (run.t >= max_time)
            stop = (keep if step == cfg.max_steps else failed | out_of_time)
            if bool(stop.any()):  # status stays MAX_STEPS except for step underflow
                si = idx[stop]
                book.write(si, tuple(x[stop] for x in run.s), r[stop], run.t[stop], count)
                book.status[idx[failed]] = int(Status.SOLVER_FAILED)
                keep = keep & ~stop
            if not bool(keep.all()):
                idx = idx[keep]
                run.keep(keep, restrict_field(field, idx, batch))
            if not idx.numel():
                break
        run.step(max_time)
        step += 1
    message = ""
    n_failed = int((book.status == int(Status.SOLVER_FAILED)).sum())
    if n_failed:
        message = (f"{n_failed} sample(s) stopped on a step below {h_min:.3g} "
                   f"(1e-12·τ_min) after repeated rejections")
    return book.result(cfg.method, cfg.tol, message)


@dataclass
class Integration:
    """States of every sample at ``t_end``, with its counters (batch first)."""

    states: States
    t: Tensor
    nfe: int
    steps: int
    rejected: Tensor


def integrate_adaptive(field: BoundField, s0: States, t_end: float, *, method: str = "rk23",
                       rtol: float = 1e-6, atol: float = 1e-8, first_step: float | None = None,
                       max_steps: int = 100_000) -> Integration:
    """Integrate every sample from t = 0 to ``t_end`` with its own step sizes (no stopping on
    the residual); the last step of each sample is clipped to land on ``t_end``. Whether all
    samples have arrived, and whether one is stuck, is read on the host every 16 steps
    (samples that arrive early take zero steps until then).

    Raises:
        ValueError: bad arguments.
        RuntimeError: some sample had not reached ``t_end`` after ``max_steps`` steps, or its
            step fell below 1e-12·τ_min after repeated rejections (non-finite states or error
            estimates: it would never arrive).
    """
    if method not in SCHEMES:
        raise ValueError(f"unknown adaptive method {method!r}; known: {', '.join(SCHEMES)}")
    if not (t_end > 0 and math.isfinite(t_end)):
        raise ValueError(f"t_end must be positive and finite, got {t_end}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be ≥ 1, got {max_steps}")
    rtol, atol = tolerances(RelaxConfig(rtol=rtol, atol=atol))
    with torch.no_grad():
        s = field.energy.clamp(tuple(x.detach().clone() for x in s0))
        run = _Stepper(SCHEMES[method], field, s, rtol, atol, first_step)
        h_min = MIN_STEP_FRACTION * min(float((1 / it).min()) for it in field.inv_tau)
        steps = 0
        while steps < max_steps:
            run.step(t_end)
            steps += 1
            if steps % 16 == 0:
                arrived = run.t >= t_end
                stuck = ~arrived & (run.h < h_min)
                all_arrived, any_stuck = torch.stack([arrived.all(), stuck.any()]).tolist()
                if any_stuck:
                    raise RuntimeError(
                        f"{int(stuck.sum())} sample(s) stopped on a step below {h_min:.3g} "
                        f"(1e-12·τ_min) before t = {t_end:g} (non-finite states or error "
                        "estimates, or a step size that cannot meet the tolerances)")
                if all_arrived:
                    break
        if not bool((run.t >= t_end).all()):
            raise RuntimeError(f"{int((run.t < t_end).sum())} sample(s) did not reach t = "
                               f"{t_end:g} within {max_steps} steps")
    return Integration(run.s, run.t, run.nfe, steps, run.rejected)


def adaptive_on_grid(bound: BoundField, s0: States | None, cfg: RelaxConfig,
                     grid: Tensor) -> GridPath:
    """rk23 / etd2 from each grid time to the next, every sample with its own step sizes
    (:func:`ctep.solve.adaptive.integrate_adaptive`, error control from ``cfg``: rtol, atol,
    ``dt`` as the first step, ``max_steps`` per interval)."""
    rtol, atol = tolerances(cfg)
    s = initial_states(bound, s0)
    out, t_prev, nfe, steps = [], 0.0, 0, 0
    for t in grid.tolist():
        if t > t_prev:
            try:
                run = integrate_adaptive(bound, s, t - t_prev, method=cfg.method, rtol=rtol,
                                         atol=atol, first_step=cfg.dt, max_steps=cfg.max_steps)
            except RuntimeError as err:
                raise RelaxationError(f"{cfg.method} failed on the time grid between "
                                      f"t = {t_prev:g} and {t:g}: {err}") from err
            s, nfe, steps = run.states, nfe + run.nfe, steps + run.steps
        out.append(s)
        t_prev = t
    states = tuple(torch.stack([o[k] for o in out]) for k in range(len(s)))
    b = s[0].shape[0]
    return GridPath(states, torch.full((b,), nfe, dtype=torch.int64),
                    torch.full((b,), steps, dtype=torch.int64))
