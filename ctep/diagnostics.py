"""Convergence diagnostics of a relaxation: energy descent, time to tolerance, and the spectrum
of the Jacobian at the fixed point.

The functions taking ``ds`` read a Dataset from :func:`ctep.record.record_relaxation`; their
resolution is that of its time axis (check times or the requested grid).
:func:`jacobian_spectrum` works on a field and states directly.

Linear picture (THEORY.md §2.1). Near a fixed point s*, e = s − s* obeys ė = J e with
J = T⁻¹ J_d, T = diag(τ) and J_d = ∂ drive/∂s. For a gradient field J_d = −H (H = ∂²F/∂s²,
symmetric), and T⁻¹H is similar to T^{-1/2} H T^{-1/2}, which is congruent to H: the signs of
the eigenvalues do not depend on τ (Sylvester), their sizes do. The slowest mode decays like
exp(−λ_slow t) with λ_slow = −max Re λ(J), so the residual needs about ln(r₀/tol)/λ_slow to
reach tol; τ ≡ c divides every eigenvalue by c.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._linalg import batched_jacobian, checked_eigvals, checked_eigvalsh
from ._nudge import real_beta
from ._states import States, per_sample_all_finite
from .dynamics import VectorField


def energy_monotone(ds, *, rtol: float | None = None, atol: float = 0.0):
    """Largest increase of F = E + β·ℓ between consecutive recorded times, per sample.

    With ΔF_k = F(t_{k+1}) − F(t_k), returns an ``xarray.Dataset`` with ``max_increase``
    = max_k ΔF_k (0 for a single time), ``scale`` = max_k |F(t_k)|, and ``monotone`` =
    (max_increase ≤ rtol·scale + atol), false for any non-finite F. ``rtol`` defaults to
    100·ε of the states' dtype (attr ``dtype``): the round-off of F itself (2.2e-14 in float64,
    1.2e-5 in float32). F is a Lyapunov function of the continuous flow of both forms of ctep's
    layered energies, for any τ > 0 (``docs/equations.md``, Lyapunov argument); it is not one
    for skew-gradient or other non-gradient fields. A discrete path keeps the descent only for
    small enough steps, and an adaptive solver's path only up to its local error (near the
    equilibrium F can rise by about residual × atol), which is what this measures.
    """
    import xarray as xr

    if rtol is None:
        rtol = 100 * float(np.finfo(np.dtype(ds.attrs.get("dtype", "float64"))).eps)
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"rtol and atol must be ≥ 0, got {rtol}, {atol}")
    f = ds["energy"].transpose("time", "sample").values
    finite = np.isfinite(f).all(axis=0)
    inc = np.diff(f, axis=0).max(axis=0) if f.shape[0] > 1 else np.zeros(f.shape[1])
    scale = np.abs(f).max(axis=0)
    ok = finite & (inc <= rtol * scale + atol)
    return xr.Dataset({"max_increase": ("sample", inc), "scale": ("sample", scale),
                       "monotone": ("sample", ok)}, coords={"sample": ds["sample"].values})


def time_to_tolerance(ds, tol: float | None = None):
    """First recorded time after which a quantity stays at or below ``tol``.

    For a quantity q(t_k) on the recorded times t_0 < … < t_{K−1}:
    t*(q) = min{ t_k : q(t_j) ≤ tol for every j ≥ k }, and +∞ when q(t_{K−1}) > tol (NaN counts
    as above). Returns an ``xarray.Dataset`` with ``t_tol`` (sample) for the residual
    ‖τ ⊙ ds/dt‖∞ and ``t_tol_l`` (sample, neuron_l) for each neuron's |drive_i| = |τ_i ds_i/dt|.
    ``tol`` defaults to the relaxation's tolerance (attr ``tol``). On a grid of spacing Δt the
    true first time lies in (t* − Δt, t*].
    """
    import xarray as xr

    tol = float(ds.attrs["tol"] if tol is None else tol)
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be finite and ≥ 0, got {tol}")
    t = ds["time"].values
    out = {"t_tol": (("sample",), _first_time_below(ds["residual"].transpose(
        "time", "sample").values, t, tol))}
    for i in range(1, int(ds.attrs["layers"]) + 1):
        dim = f"neuron_{i}"
        d = np.abs(ds[f"drive_{i}"].transpose("time", "sample", dim).values)
        out[f"t_tol_{i}"] = (("sample", dim), _first_time_below(d, t, tol))
    coords = {k: ds[k].values for k in ds.coords if k == "sample" or k.startswith("neuron_")}
    res = xr.Dataset(out, coords=coords)
    res.attrs["tol"] = tol
    return res


def _first_time_below(q: np.ndarray, t: np.ndarray, tol: float) -> np.ndarray:
    """t* along axis 0 of ``q`` (see :func:`time_to_tolerance`)."""
    above = ~(q <= tol)
    k = q.shape[0]
    # index of the last time above tol (−1 when none)
    last = np.where(above.any(axis=0), k - 1 - np.argmax(above[::-1], axis=0), -1)
    out = np.full(last.shape, np.inf)
    reached = last < k - 1
    out[reached] = t[last[reached] + 1]
    return out


def measured_decay_rate(ds, tol_high: float, tol_low: float) -> np.ndarray:
    """Per-sample decay rate of the residual between two tolerances:
    ln(tol_high/tol_low) / (t*(tol_low) − t*(tol_high)), with t* from
    :func:`time_to_tolerance`. In the linear regime this approaches λ_slow."""
    if not (0 < tol_low < tol_high):
        raise ValueError(f"need 0 < tol_low < tol_high, got {tol_low}, {tol_high}")
    hi = time_to_tolerance(ds, tol_high)["t_tol"].values
    lo = time_to_tolerance(ds, tol_low)["t_tol"].values
    with np.errstate(divide="ignore", invalid="ignore"):
        return math.log(tol_high / tol_low) / (lo - hi)


@dataclass
class Spectrum:
    """Eigenvalues of J = ∂(ds/dt)/∂s = T⁻¹ ∂drive/∂s per sample.

    Attributes:
        eigenvalues: ``(B, n)``, real (symmetric similarity, ascending) or complex (sorted by
            real part); a sample with k pinned neurons has its n − k eigenvalues first and NaN
            in the last k slots; a sample with a non-finite Jacobian is all NaN.
        symmetric: whether ∂drive/∂s was symmetric (a gradient field), so that the real
            symmetric matrix T^{-1/2} (∂drive/∂s) T^{-1/2} was used.
        pinned: ``(B, n)``: neurons whose Jacobian row is identically zero (a clipped unit held
            at its bound by the projected flow); they are left out of the spectrum.
    """

    eigenvalues: Tensor
    symmetric: bool
    pinned: Tensor

    def real(self) -> Tensor:
        return self.eigenvalues.real if self.eigenvalues.is_complex() else self.eigenvalues

    def slowest_rate(self) -> Tensor:
        """λ_slow = −max_i Re λ_i per sample (> 0 at a stable fixed point)."""
        return -_nanmax(self.real())

    def convergence_time(self) -> Tensor:
        """1/λ_slow: the e-folding time of the slowest mode (inf or negative when unstable)."""
        return 1.0 / self.slowest_rate()

    def fastest_rate(self) -> Tensor:
        """max_i |Re λ_i| per sample."""
        return _nanmax(self.real().abs())

    def stiffness_ratio(self) -> Tensor:
        """max_i |Re λ_i| / min_i |Re λ_i| per sample."""
        return self.fastest_rate() / -_nanmax(-self.real().abs())

    def inertia(self) -> Tensor:
        """``(B, 3)``: counts of eigenvalues with Re λ < 0, = 0 and > 0 (pinned ones left out).
        Exact zeros only: eigenvalues this close to zero should be looked at, not counted."""
        r = self.real()
        valid = ~torch.isnan(r)
        return torch.stack([((r < 0) & valid).sum(1), ((r == 0) & valid).sum(1),
                            ((r > 0) & valid).sum(1)], dim=1)

    def to_dict(self) -> dict:
        """JSON-ready per-sample lists (eigenvalues as [real, imag] pairs)."""
        ev = self.eigenvalues.to(torch.complex128)
        return {"symmetric": self.symmetric,
                "slowest_rate": _floats(self.slowest_rate()),
                "convergence_time": _floats(self.convergence_time()),
                "stiffness_ratio": _floats(self.stiffness_ratio()),
                "pinned": [int(v) for v in self.pinned.sum(1)],
                "eigenvalues": [[[_json_float(float(z.real)), _json_float(float(z.imag))]
                                 for z in row] for row in ev]}


def jacobian_spectrum(field: VectorField, x: Tensor, states: States, y: Tensor | None = None,
                      beta: float = 0.0, *, symmetric: bool | None = None,
                      symmetry_tol: float = 1e-10) -> Spectrum:
    """The spectrum of the Jacobian of ds/dt = T⁻¹ drive(s) at ``states``, per sample.

    J_d = ∂drive/∂s comes from :func:`ctep._linalg.batched_jacobian` (dense: small nets). If J_d
    is symmetric (a gradient field: J_d = −∂²F/∂s²), the eigenvalues of T⁻¹J_d are those of the
    symmetric T^{-1/2} J_d T^{-1/2}, computed by ``eigvalsh`` (real); otherwise ``eigvals`` of
    T⁻¹J_d (complex). ``symmetric=None`` decides by max|J_d − J_dᵀ| ≤ symmetry_tol·max|J_d| over
    the samples with a finite J_d; ``symmetric=True`` uses the symmetric part ½(J_d + J_dᵀ), so
    pass it only for a field known to be a gradient field.
    Rows of J_d that are identically zero (pinned clipped units) are removed with their columns:
    det(J − λI) = (−λ)·det(J' − λI) for such a row, so the rest of the spectrum is that of the
    reduced J'. A sample whose states or J_d are not finite (a diverged relaxation) gets NaN
    eigenvalues instead of a failed or meaningless decomposition.
    """
    beta = real_beta(beta)
    states = tuple(states)
    if any(s.shape[0] != x.shape[0] for s in states):
        raise ValueError(f"states have batch {[int(s.shape[0]) for s in states]}, inputs have "
                         f"{x.shape[0]}")
    bound = field.bind(x, y, beta)
    jd = batched_jacobian(bound.drive, tuple(s.detach() for s in states)).to(torch.float64)
    tau = torch.cat([t.detach().reshape(-1) for t in field.tau()]).to(torch.float64)
    jd = jd.to(tau.device)
    with torch.no_grad():  # a clip can hide a NaN state from J_d: test states and drive too
        drive = bound.drive(states)
    finite = (torch.isfinite(jd).all(dim=2).all(dim=1)
              & per_sample_all_finite(states).to(jd.device)
              & per_sample_all_finite(drive).to(jd.device))
    if symmetric is None:
        ok = jd[finite]
        scale = float(ok.abs().max()) if ok.numel() else 0.0
        asym = float((ok - ok.transpose(1, 2)).abs().max()) if ok.numel() else 0.0
        symmetric = asym <= symmetry_tol * max(scale, 1e-300)
    pinned = (jd == 0).all(dim=2) & finite[:, None]
    b, n = pinned.shape
    dtype = torch.float64 if symmetric else torch.complex128
    eig = torch.full((b, n), float("nan"), dtype=dtype, device=jd.device)
    plain = finite & ~pinned.any(dim=1)
    groups = [(torch.nonzero(plain).flatten(), torch.ones(n, dtype=torch.bool, device=jd.device))] \
        if bool(plain.any()) else []
    groups += [(torch.tensor([i], device=jd.device), ~pinned[i])
               for i in torch.nonzero(finite & pinned.any(dim=1)).flatten().tolist()]
    for rows, free in groups:
        m = jd[rows][:, free][:, :, free]
        t = tau[free]
        if m.shape[-1] == 0:
            continue
        if symmetric:
            root = t.rsqrt()
            vals = checked_eigvalsh(0.5 * (m + m.transpose(1, 2)) * root[:, None]
                                    * root[None, :])
        else:
            vals = checked_eigvals(m / t[:, None])
            vals = torch.gather(vals, 1, torch.argsort(vals.real, dim=1))
        eig[rows, : vals.shape[1]] = vals.to(dtype)
    return Spectrum(eig, bool(symmetric), pinned)


def _nanmax(v: Tensor) -> Tensor:
    filled = torch.where(torch.isnan(v), torch.full_like(v, -math.inf), v)
    out = filled.max(dim=1).values
    return torch.where(torch.isnan(v).all(1), torch.full_like(out, math.nan), out)


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _floats(t: Tensor) -> list:
    return [_json_float(float(v)) for v in t]
