"""``ctep verify``: EP gradients against reference gradients, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys

from ._cli_args import float_list, int_list
from .activations import get_activation
from .estimators import ESTIMATORS
from .reference import REFERENCES
from .solve import RelaxationError, available_methods
from .timeconstants import DISTRIBUTIONS
from .verify import DTYPES, MODELS, VerifyConfig, run_verification, write_report


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = VerifyConfig()
    p.add_argument("--model", default=d.model, choices=MODELS,
                   help="dense (--sizes, --activation, ...), a small random conv, "
                        "hopfield-resnet or dendritic instance, or the skew-gradient "
                        "fitzhugh-nagumo / Lagrangian oscillator-chain check "
                        "(default %(default)s)")
    p.add_argument("--sizes", type=int_list, default=d.sizes, help="layer widths, input first "
                   f"(default {','.join(map(str, d.sizes))})")
    p.add_argument("--activation", default=d.activation, help="tanh, sigmoid, hard_sigmoid, "
                   "relu6, relu_alpha, identity (default %(default)s)")
    p.add_argument("--alpha", type=float, default=None, help="clip value of relu_alpha")
    p.add_argument("--form", default=d.form, choices=["primitive", "classical"])
    p.add_argument("--cost", default=d.cost, choices=["squared_error", "cross_entropy"])
    p.add_argument("--tau", default=d.tau, choices=DISTRIBUTIONS, help="τ distribution")
    p.add_argument("--tau-mean", type=float, default=d.tau_mean)
    p.add_argument("--tau-spread", type=float, default=d.tau_spread,
                   help="coefficient of variation of τ (default %(default)s)")
    p.add_argument("--method", default=d.method, help="relaxation method: "
                   + ", ".join(available_methods()) + " (default %(default)s)")
    p.add_argument("--tol", type=float, default=d.tol, help="residual tolerance")
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    p.add_argument("--polish", type=int, default=d.polish, help="Newton steps after relaxing")
    p.add_argument("--dtype", default=d.dtype, choices=sorted(DTYPES))
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--weight-norm", type=float, default=d.weight_norm,
                   help="spectral norm of each weight matrix")
    p.add_argument("--betas", type=float_list, default=d.betas, help="comma-separated β values")
    p.add_argument("--estimators", type=_names, default=d.estimators,
                   help="comma-separated: " + ", ".join(ESTIMATORS))
    p.add_argument("--points", type=int, default=d.points,
                   help="points on the circle for holomorphic EP (default %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help="temperature T of the langevin estimator (default: its own)")
    p.add_argument("--references", type=_names, default=d.references,
                   help="comma-separated: " + ", ".join(REFERENCES))
    p.add_argument("--gdu", action="store_true", help="also run the step-by-step GDU check "
                   "(EP updates of the nudged phase vs BPTT gradients, per layer and step)")
    p.add_argument("--gdu-steps", type=int, default=d.gdu_steps,
                   help="K, nudged steps of the GDU check (default %(default)s)")
    p.add_argument("--gdu-beta", type=float, default=d.gdu_beta,
                   help="β of the GDU check (default %(default)g)")
    p.add_argument("--gdu-dt", type=float, default=None, help="GDU map: per-neuron steps "
                   "h_i = min(1, damping·dt/τ_i) with the relaxation's damping, as fixed_point "
                   "with dt steps (default: the relaxation's τ-free map, h = its damping)")
    p.add_argument("--gdu-centered", action="store_true",
                   help="GDU with ±β phases (error O(β²) instead of O(β))")
    p.add_argument("--out", default=None, help="folder for verify.nc (xarray/netCDF) and "
                   "error_vs_beta.png (with a GDU panel under --gdu)")
    p.add_argument("--json", action="store_true", help="print JSON only")


def run(args: argparse.Namespace) -> int:
    cfg = VerifyConfig(model=args.model, sizes=args.sizes, activation=args.activation,
                       alpha=args.alpha, form=args.form,
                       cost=args.cost, tau=args.tau, tau_mean=args.tau_mean,
                       tau_spread=args.tau_spread, method=args.method, tol=args.tol,
                       max_steps=args.max_steps, polish=args.polish, dtype=args.dtype,
                       seed=args.seed, batch=args.batch, weight_norm=args.weight_norm,
                       betas=args.betas, estimators=args.estimators, references=args.references,
                       points=args.points, temperature=args.temperature, gdu=args.gdu,
                       gdu_steps=args.gdu_steps, gdu_beta=args.gdu_beta, gdu_dt=args.gdu_dt,
                       gdu_centered=args.gdu_centered)
    try:
        get_activation(args.activation, args.alpha)  # fail early on an unknown name
        report = run_verification(cfg)
    except (ValueError, RelaxationError) as exc:
        print(f"ctep verify: error: {exc}", file=sys.stderr)
        return 2
    written = write_report(report, args.out) if args.out else {}
    if args.json:
        print(json.dumps(report))
        return 0
    eq = report["equilibrium"]
    if cfg.model in ("fitzhugh-nagumo", "oscillator-chain"):
        print(f"model {cfg.model} (seed {cfg.seed}, {cfg.dtype}): " + ", ".join(
            f"{k} {_short(v)}" for k, v in eq.items() if k != "tau"))
    else:
        tau = eq["tau"]
        net = (f"network {list(cfg.sizes)} {cfg.activation}" if cfg.model == "dense"
               else f"model {cfg.model} (small random instance)")
        print(f"{net} ({cfg.form} form), {cfg.dtype}, τ {cfg.tau} (spread "
              f"{cfg.tau_spread:g}: τmin {tau['min']:.3g}, τmax {tau['max']:.3g}), "
              f"method {cfg.method}")
        print(f"free phase: residual {eq['residual_max']:.2e}, mean NFE {eq['nfe_mean']:.0f}")
    print()
    head = f"{'estimator':<14}{'reference':<11}{'beta':>9}{'rel_error':>12}{'cosine':>14}" \
           f"{'sign_agree':>12}"
    print(head)
    print("-" * len(head))
    for r in report["results"]:
        print(f"{r['estimator']:<14}{r['reference']:<11}{r['beta']:>9.1e}{r['rel_error']:>12.3e}"
              f"{r['cosine']:>14.10f}{r['sign_agreement']:>12.3f}")
    gdu = report.get("gdu")
    if gdu:
        print()
        print(f"GDU check: β {gdu['beta']:g}{' (centered)' if gdu['centered'] else ''}, "
              f"{gdu['steps']} steps, h = {gdu['step']}; relative RMSE of EP updates vs BPTT "
              "over the resolved steps")
        print(f"{'layer':<14}{'kind':<12}{'max_rel_rmse':>14}{'resolved':>10}")
        for i, name in enumerate(gdu["layers"]):
            worst = gdu["max_rel_rmse"][name]
            n_ok = sum(gdu["resolved"][i])
            text = "n/a" if worst is None else f"{worst:.3e}"
            print(f"{name:<14}{gdu['kinds'][i]:<12}{text:>14}{n_ok:>6}/{gdu['steps']}")
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    return 0


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
