"""Gradient verification: EP estimators against reference gradients on a random network.

:func:`random_problem` builds a small network whose couplings are rescaled to a spectral norm
below one (so the equilibrium is unique and stable and every reference is well defined), with
time constants from a chosen distribution; :func:`run_verification` relaxes it and returns one
record per (estimator, reference, β) and, optionally, the step-by-step GDU curves
(:func:`ctep.reference.gdu_check`) of the nudged phase.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ._linalg import spectral_norm
from .dynamics import VectorField
from .energies import DenseHopfield
from .estimators import accepted_options, canonical_name, get_estimator
from .plot import plot_error_vs_beta, plot_gdu  # noqa: F401  (the report's figure; re-exported)
from .reference import compare, gdu_check, get_reference
from .solve import RelaxConfig, relax
from .timeconstants import TimeConstants

DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: energies built by :func:`ctep.models.small_instance` and run through the common pipeline
ENERGY_MODELS = ("dense", "conv", "hopfield-resnet", "dendritic")
#: variants with their own gradient check (:mod:`ctep.skew`, :mod:`ctep.lagrangian`)
OWN_CHECK_MODELS = ("fitzhugh-nagumo", "oscillator-chain")
MODELS = ENERGY_MODELS + OWN_CHECK_MODELS


@dataclass
class VerifyConfig:
    """What :func:`run_verification` checks (the CLI's options).

    ``model`` is ``dense`` (the network given by ``sizes``, ``activation``, ``form``, ...),
    ``conv``, ``hopfield-resnet`` or ``dendritic`` (the tiny random instances of
    :func:`ctep.models.small_instance`, with ``form`` and the τ options applied), or
    ``fitzhugh-nagumo`` / ``oscillator-chain`` (skew-gradient and Lagrangian EP, each with its
    own small instance, relaxation and the implicit reference only).
    """

    model: str = "dense"
    sizes: tuple[int, ...] = (8, 12, 10, 4)
    activation: str = "tanh"
    alpha: float | None = None
    form: str = "primitive"
    cost: str = "squared_error"
    tau: str = "lognormal"
    tau_mean: float = 1.0
    tau_spread: float = 1.0
    method: str = "fixed_point"
    tol: float = 1e-11
    max_steps: int = 100_000
    polish: int = 0
    dtype: str = "float64"
    seed: int = 0
    batch: int = 8
    weight_norm: float = 0.5
    betas: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
    estimators: tuple[str, ...] = ("one-sided", "centered")
    references: tuple[str, ...] = ("implicit",)
    points: int = 4
    temperature: float | None = None
    gdu: bool = False
    gdu_steps: int = 30
    gdu_beta: float = 1e-5
    gdu_dt: float | None = None
    gdu_centered: bool = False

    def relax_config(self) -> RelaxConfig:
        # the classical form's flow has a unit leak plus ρ' terms: a damped map is safer
        damping = 0.5 if self.form == "classical" else 1.0
        return RelaxConfig(method=self.method, tol=self.tol, max_steps=self.max_steps,
                           damping=damping, polish=self.polish)


def random_problem(cfg: VerifyConfig) -> tuple[VectorField, Tensor, Tensor]:
    """A random network, inputs in [0, 1) and class targets, all from ``cfg.seed``.

    Each weight matrix is rescaled to spectral norm ``cfg.weight_norm`` and biases are drawn
    from U(−0.3, 0.3). The block-tridiagonal coupling matrix then has norm at most
    2·weight_norm (√2·weight_norm with one hidden layer), so with |σ'| ≤ 1 the map s ← σ(∂Φ/∂s)
    contracts and the equilibrium is unique and stable for weight_norm < 0.5; the default 0.5
    sits on that bound for deep nets and inside it for one hidden layer.
    """
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; known: {', '.join(DTYPES)}")
    dtype = DTYPES[cfg.dtype]
    if cfg.model != "dense":
        return _registry_problem(cfg, dtype)
    energy = DenseHopfield(cfg.sizes, cfg.activation, form=cfg.form, alpha=cfg.alpha,
                           seed=cfg.seed, dtype=dtype)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        for w in energy.weights:
            w.mul_(cfg.weight_norm / spectral_norm(w.double()).to(dtype))
        for b in energy.biases:
            b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) * 0.6 - 0.3)
    tau = TimeConstants.sample(energy.state_shapes, cfg.tau, cfg.tau_mean, cfg.tau_spread,
                               seed=cfg.seed + 2, dtype=dtype)
    field_ = VectorField(energy, cfg.cost, tau)
    x = torch.rand(cfg.batch, cfg.sizes[0], generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, cfg.sizes[-1], (cfg.batch,), generator=gen)
    return field_, x, y


def _registry_problem(cfg: VerifyConfig, dtype: torch.dtype
                      ) -> tuple[VectorField, Tensor, Tensor]:
    """A :func:`ctep.models.small_instance` of ``cfg.model`` with inputs in [0, 1), class
    targets and τ from the config, all from ``cfg.seed``."""
    from .models import small_instance

    if cfg.model not in ENERGY_MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; known: {', '.join(MODELS)}")
    energy, in_shape = small_instance(cfg.model, seed=cfg.seed, dtype=dtype, form=cfg.form)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    tau = TimeConstants.sample(energy.state_shapes, cfg.tau, cfg.tau_mean, cfg.tau_spread,
                               seed=cfg.seed + 2, dtype=dtype)
    x = torch.rand(cfg.batch, *in_shape, generator=gen, dtype=torch.float64).to(dtype)
    n_out = energy.state_shapes[-1][0]
    y = torch.randint(0, n_out, (cfg.batch,), generator=gen)
    return VectorField(energy, cfg.cost, tau), x, y


def _own_check(cfg: VerifyConfig) -> dict:
    """Skew-gradient or Lagrangian EP: their own small instance and gradient check."""
    if tuple(cfg.references) != ("implicit",):
        raise ValueError(f"model {cfg.model!r} is checked against the implicit reference only, "
                         f"got references {list(cfg.references)}")
    unsupported = [e for e in cfg.estimators if canonical_name(e) not in ("one-sided", "centered")]
    if unsupported:
        raise ValueError(f"model {cfg.model!r} supports the one-sided and centered estimators, "
                         f"not {unsupported}")
    if cfg.gdu:
        raise ValueError(f"--gdu needs a gradient field; model {cfg.model!r} is not one")
    if cfg.model == "fitzhugh-nagumo":
        from .skew import gradient_check
    else:
        from .lagrangian import gradient_check
    return gradient_check(cfg.seed, DTYPES[cfg.dtype], betas=tuple(cfg.betas),
                          estimators=tuple(cfg.estimators))


def run_verification(cfg: VerifyConfig) -> dict:
    """Relax, compute each reference once and each estimator at each β; compare.

    Returns ``{"results": [records], "parameters": [...], "equilibrium": {...}, "config":
    {...}}`` where each record has ``estimator, reference, beta, rel_error, cosine,
    sign_agreement, max_abs_error, per_parameter``; with ``cfg.gdu`` also ``"gdu"``
    (:meth:`ctep.reference.gdu.GDUResult.to_dict` plus ``max_rel_rmse`` per layer over the
    resolved steps), computed with the relaxation's map (h = its damping) or, with
    ``cfg.gdu_dt``, the per-neuron steps h_i = min(1, damping·dt/τ_i) of ``fixed_point``.
    """
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; known: {', '.join(MODELS)}")
    if cfg.model in OWN_CHECK_MODELS:
        return _own_check(cfg)
    field_, x, y = random_problem(cfg)
    rc = cfg.relax_config()
    free = relax(field_.bind(x), config=rc)
    free.check(allow_max_steps=False)
    refs = {name: get_reference(name)(field_, x, y, free, rc) for name in cfg.references}
    results = []
    for est_name in cfg.estimators:
        for beta in cfg.betas:
            est = get_estimator(est_name, beta, relax=rc, **estimator_options(est_name, cfg))
            out = est(field_, x, y, free=free)
            for eq in out.nudged:
                eq.check(allow_max_steps=False)
            for ref_name, ref in refs.items():
                per_param = [compare((g,), (r,))["rel_error"]
                             for g, r in zip(out.grads, ref, strict=True)]
                results.append({"estimator": est_name, "reference": ref_name,
                                "beta": float(beta), **compare(out.grads, ref),
                                "per_parameter": per_param})
    summary = free.summary()
    names = [n for n, _ in field_.named_parameters() if not n.startswith("tau.")]
    report = {"results": results, "parameters": names,
              "equilibrium": {"nfe_mean": summary["nfe_mean"],
                              "residual_max": summary["residual_max"],
                              "tau": field_.tau.stats()},
              "config": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in asdict(cfg).items()}}
    if cfg.gdu:
        gdu = gdu_check(field_, x, y, free.states, beta=cfg.gdu_beta, steps=cfg.gdu_steps,
                        damping=rc.damping, dt=cfg.gdu_dt, centered=cfg.gdu_centered)
        report["gdu"] = {**gdu.to_dict(), "max_rel_rmse": {
            k: (None if math.isnan(v) else v) for k, v in gdu.max_rel_rmse().items()}}
    return report


def estimator_options(name: str, cfg: VerifyConfig) -> dict:
    """The options ``ctep verify`` passes to estimator ``name``: of ``cfg.points`` and
    ``cfg.temperature`` (when set), those the estimator takes
    (:func:`ctep.estimators.accepted_options`): ``points`` to holomorphic and finite-nudge EP,
    ``temperature`` to Langevin EP, nothing to the others."""
    return accepted_options(name, {"points": cfg.points, "temperature": cfg.temperature})


METRICS = ("rel_error", "cosine", "sign_agreement", "max_abs_error")


def report_dataset(report: dict):
    """The report as an ``xarray.Dataset``: the metrics over (estimator, reference, beta), the
    relative error per parameter over (estimator, reference, beta, parameter) and, when the
    report has GDU curves, ``gdu_rel_rmse``, ``gdu_sign_agreement`` and ``gdu_resolved`` over
    (layer, step), with ``gdu_kind`` ("neurons" / "parameters") along layer."""
    import numpy as np
    import xarray as xr

    rows = report["results"]
    ests = list(dict.fromkeys(r["estimator"] for r in rows))
    refs = list(dict.fromkeys(r["reference"] for r in rows))
    betas = sorted({r["beta"] for r in rows}, reverse=True)
    params = report["parameters"]
    shape = (len(ests), len(refs), len(betas))
    data = {m: np.full(shape, np.nan) for m in METRICS}
    per = np.full((*shape, len(params)), np.nan)
    for r in rows:
        i, j, k = ests.index(r["estimator"]), refs.index(r["reference"]), betas.index(r["beta"])
        for m in METRICS:
            data[m][i, j, k] = r[m]
        per[i, j, k] = r["per_parameter"]
    dims = ("estimator", "reference", "beta")
    ds = xr.Dataset({m: (dims, v) for m, v in data.items()},
                    coords={"estimator": ests, "reference": refs, "beta": betas,
                            "parameter": params})
    ds["rel_error_per_parameter"] = ((*dims, "parameter"), per)
    gdu = report.get("gdu")
    if gdu:
        def grid(rows):
            return np.array([[np.nan if v is None else v for v in row] for row in rows],
                            dtype=float)

        ds = ds.assign_coords(layer=list(gdu["layers"]), step=np.arange(gdu["steps"]),
                              gdu_kind=("layer", list(gdu["kinds"])))
        ds["gdu_rel_rmse"] = (("layer", "step"), grid(gdu["rel_rmse"]))
        ds["gdu_sign_agreement"] = (("layer", "step"), grid(gdu["sign_agreement"]))
        ds["gdu_resolved"] = (("layer", "step"), np.array(gdu["resolved"], dtype=np.int8))
        ds.attrs["gdu_beta"] = gdu["beta"]
        ds.attrs["gdu_step"] = str(gdu["step"])
        ds.attrs["gdu_centered"] = int(bool(gdu["centered"]))
    for key, value in report["config"].items():
        ds.attrs[f"config_{key}"] = str(value)
    ds.attrs["free_residual_max"] = report["equilibrium"]["residual_max"]
    return ds


def write_report(report: dict, out_dir) -> dict[str, str]:
    """Write ``verify.nc`` (netCDF) and ``error_vs_beta.png`` (with a GDU panel when the report
    has GDU curves) into ``out_dir``; return the paths."""
    from pathlib import Path

    from ._io import atomic_write
    from .record import save_dataset

    out = Path(out_dir)
    ds = report_dataset(report)
    nc = save_dataset(ds, out / "verify.nc")  # atomic: unique temporary file, fsync, rename
    fig = plot_error_vs_beta(ds)
    png = atomic_write(out / "error_vs_beta.png",
                       lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return {"netcdf": str(nc), "figure": str(png)}
