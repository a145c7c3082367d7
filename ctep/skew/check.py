"""Gradient check of EP on a small random FitzHugh–Nagumo network (for ``ctep verify``).

:func:`small_instance` draws a network whose free equilibrium is stable (checked, redrawn
otherwise); :func:`gradient_check` relaxes it with the dynamics (dopri5, then Newton polish),
checks stability, and compares each EP estimator at each β with implicit differentiation
through the dynamics' Jacobian at the saddle of H. Its report has the layout of
:func:`ctep.verify.run_verification` (``results``, ``parameters``, ``equilibrium``, ``config``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..estimators import get_estimator
from ..reference import compare, implicit_gradient
from ..solve import RelaxConfig
from .fhn import fitzhugh_nagumo
from .field import SkewGradientField, StableEP, find_critical_point, settle

#: relaxation of the gradient check: the dynamics must reach 1e-8 on their own, Newton polishes
CHECK_RELAX = RelaxConfig(method="dopri5", tol=1e-8, max_time=2000.0)
CHECK_POLISH = 8


def small_instance(seed: int = 0, dtype: torch.dtype = torch.float64, *, n_units: int | None = None,
                   n_inputs: int | None = None, batch: int = 3, tau_v: float | None = None,
                   max_draws: int = 50) -> tuple[SkewGradientField, Tensor, Tensor]:
    """A random small FitzHugh–Nagumo problem ``(field, x, y)`` with a stable free equilibrium.

    Drawn from ``torch.Generator().manual_seed(seed)``: n ∈ [3, 6] units (all pairs coupled,
    g_ij ~ U(0, 0.3)), n_in ∈ [1, 3] inputs in [0, 1), W ~ U(−0.2, 0.2)/√n_in, b ~ U(−0.4, 0),
    γ = 0.8, a = 0.7, τ_u = 1, τ_v ~ U(1, 12.5), the last one or two units as outputs, targets
    ~ U(−1.4, −0.9). Draws whose free critical point is not stable (max Re λ ≥ −0.005) are
    rejected.
    """
    gen = torch.Generator().manual_seed(int(seed))

    def uniform(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)

    for _ in range(max_draws):
        n = n_units or int(torch.randint(3, 7, (), generator=gen))
        m = n_inputs or int(torch.randint(1, 4, (), generator=gen))
        n_out = min(n, int(torch.randint(1, 3, (), generator=gen)))
        tv = tau_v if tau_v is not None else float(uniform(1.0, 12.5))
        field = fitzhugh_nagumo(n, m, n_out, tau_u=1.0, tau_v=tv,
                                seed=int(torch.randint(0, 2**31 - 1, (), generator=gen)),
                                dtype=dtype)
        energy = field.energy
        with torch.no_grad():
            energy.couplings.copy_(uniform(0.0, 0.3, energy.couplings.numel()).to(dtype))
            energy.input_weight.copy_((uniform(-0.2, 0.2, n, m) / m ** 0.5).to(dtype))
            energy.input_bias.copy_(uniform(-0.4, 0.0, n).to(dtype))
        x = uniform(0.0, 1.0, batch, m).to(dtype)
        y = uniform(-1.4, -0.9, batch, n_out).to(dtype)
        crit = find_critical_point(field, x)
        if not bool(crit.converged.all()):
            continue
        rep = field.stability(x, crit)
        if bool((rep.max_real < -0.005).all()):
            return field, x, y
    raise RuntimeError(f"no stable FitzHugh–Nagumo instance in {max_draws} draws (seed {seed})")


def gradient_check(seed: int = 0, dtype: torch.dtype = torch.float64,
                   betas: tuple[float, ...] = (1e-1, 1e-2, 1e-3),
                   estimators: tuple[str, ...] = ("one-sided", "centered"),
                   relax_config: RelaxConfig | None = None, polish: int = CHECK_POLISH) -> dict:
    """EP vs implicit differentiation on :func:`small_instance` ``(seed, dtype)``.

    Returns ``{"results": [records], "parameters": [...], "equilibrium": {...}, "config":
    {...}}``; each record has ``estimator, reference, beta, rel_error, cosine, sign_agreement,
    max_abs_error, per_parameter``. Raises :class:`~ctep.skew.field.UnstableEquilibriumError`
    if a phase is not stable (it never reports a gradient of an unreachable state).
    """
    cfg = relax_config or CHECK_RELAX
    field, x, y = small_instance(seed, dtype)
    free, report = settle(field, x, config=cfg, polish=polish)
    report.check("free equilibrium")
    ref = implicit_gradient(field, x, y, free.states)
    results = []
    nudged_max_real = []
    for name in estimators:
        for beta in betas:
            est = StableEP(get_estimator(name, beta, relax=cfg.replace(polish=polish)),
                           polish=polish)
            out = est(field, x, y, free=free)
            nudged_max_real.extend(out.info["nudged_max_real_eig"])
            per = [compare((g,), (r,))["rel_error"] for g, r in zip(out.grads, ref, strict=True)]
            results.append({"estimator": name, "reference": "implicit", "beta": float(beta),
                            **compare(out.grads, ref), "per_parameter": per})
    summary = free.summary()
    names = [n for n, _ in field.named_parameters() if not n.startswith("tau.")]
    return {
        "results": results,
        "parameters": names,
        "equilibrium": {
            "residual_max": summary["residual_max"], "nfe_mean": summary["nfe_mean"],
            "max_real_eig": float(report.max_real.max()),
            "nudged_max_real_eig": max(nudged_max_real) if nudged_max_real else float("nan"),
            "hessian_negative": int(report.hessian_negative.min()),
            "hessian_positive": int(report.hessian_positive.min()),
            "tau": field.tau.stats(),
        },
        "config": {"model": "fitzhugh-nagumo", "seed": int(seed), "dtype": str(dtype),
                   "n_units": field.energy.n_units, "n_inputs": field.energy.n_inputs,
                   "batch": int(x.shape[0]), "method": cfg.method, "tol": cfg.tol,
                   "polish": polish, "betas": list(betas), "estimators": list(estimators)},
    }
