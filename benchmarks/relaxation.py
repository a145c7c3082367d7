"""Relaxation cost per method: wall time and NFE to a residual tolerance.

Dense nets 784-W-10 (hard sigmoid, primitive form, default init), random inputs in [0, 1),
relaxed from zero states until every sample's residual ‖τ ⊙ ds/dt‖∞ ≤ tol. Homogeneous τ and
log-normal τ (coefficient of variation 0.5 and 1.0, mean 1). For each (τ, width, batch) every
method runs once as a warm-up, then ``--repeats`` rounds that time every method in turn
(interleaved, so a background load hits all methods alike); seconds are the median over the
rounds and the ratio column divides by the fixed-point map's median from the same rounds.

    python benchmarks/relaxation.py                        # the main table (width 256, batch 64)
    python benchmarks/relaxation.py --widths 64,256,1024 --batches 16,64,256 \\
        --methods fixed_point,rk23,etd2-loose,dopri5         # the sweep
    python benchmarks/relaxation.py --quick --json         # < 1 minute, JSON only
    python benchmarks/relaxation.py --methods fixed_point,etd2-coarse,etd2-rtol0.3 \\
        --path-error 2                                     # + error of the path at t = 2

``etd2-rtolR`` is error-controlled ``etd2`` at rtol R and atol R/10 (any R > 0);
``fixed_point-dtD`` and ``anderson-dtD`` are the map and its Anderson acceleration with
per-neuron steps h_i = min(1, D/τ_i). ``--beta B`` relaxes nudged phases (random targets) instead
of free ones:

    python benchmarks/relaxation.py --tol 1e-8 --beta 0.5 \\
        --methods fixed_point,anderson,fixed_point-dt0.1,anderson-dt0.1   # anderson vs the map
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time

import torch

from ctep import DenseHopfield, RelaxConfig, TimeConstants, VectorField, relax
from ctep.solve.adaptive import integrate_adaptive, tolerances

TAUS = {"constant": ("constant", 0.0), "lognormal-0.5": ("lognormal", 0.5),
        "lognormal-1.0": ("lognormal", 1.0)}


def method_configs(tol: float, tau_max: float, check_every: int) -> dict[str, RelaxConfig]:
    """Each benchmarked method by its table name: the RelaxConfig it runs with."""
    base = RelaxConfig(tol=tol, max_steps=100_000, check_every=check_every)
    return {
        "fixed_point": base.replace(method="fixed_point"),
        "anderson": base.replace(method="anderson"),  # the map, Anderson-accelerated (m = 5)
        "exp_euler": base.replace(method="exp_euler"),
        # per-sample adaptive, default tolerances (rtol = min(1e-3, tol), atol = tol/10)
        "rk23": base.replace(method="rk23"),
        "etd2": base.replace(method="etd2"),
        # rtol = 1 and h/τ ≥ 10: etd2's stages become the fixed-point map (two map steps per
        # step, local error in effect not controlled); a reference point, not an integration
        "etd2-loose": base.replace(method="etd2", rtol=1.0, atol=tol, dt=10 * tau_max,
                                     max_time=math.inf),
        # error-controlled etd2 at coarse tolerances (rtol 0.1, atol 100·tol)
        "etd2-coarse": base.replace(method="etd2", rtol=0.1, atol=100 * tol),
        "euler": base.replace(method="euler"),
        "dopri5": base.replace(method="dopri5"),
        "bosh3": base.replace(method="bosh3"),
    }


METHODS = ("fixed_point", "anderson", "exp_euler", "rk23", "etd2", "etd2-coarse", "etd2-loose",
           "euler", "dopri5", "bosh3")
QUICK_METHODS = ("fixed_point", "etd2-loose", "rk23", "dopri5")
#: error-controlled etd2 at rtol R and atol R/10: "etd2-rtol0.3"
ETD2_AT_RTOL = re.compile(r"etd2-rtol(\d+(?:\.\d*)?(?:e-?\d+)?)")
#: the map or its Anderson acceleration with per-neuron steps min(1, D/τ_i): "anderson-dt0.1"
MAP_AT_DT = re.compile(r"(fixed_point|anderson)-dt(\d+(?:\.\d*)?(?:e-?\d+)?)")


def is_pattern_name(name: str) -> bool:
    """Whether ``name`` is an ``etd2-rtolR``, ``fixed_point-dtD`` or ``anderson-dtD`` row."""
    return bool(ETD2_AT_RTOL.fullmatch(name) or MAP_AT_DT.fullmatch(name))


def config_for(name: str, tol: float, tau_max: float, check_every: int) -> RelaxConfig:
    """The RelaxConfig of a table name: one of :data:`METHODS` or ``etd2-rtolR``."""
    match = ETD2_AT_RTOL.fullmatch(name)
    if match:
        rtol = float(match.group(1))
        if not rtol > 0:
            raise ValueError(f"{name}: rtol must be positive")
        return RelaxConfig(method="etd2", tol=tol, max_steps=100_000, check_every=check_every,
                           rtol=rtol, atol=rtol / 10)
    match = MAP_AT_DT.fullmatch(name)
    if match:
        dt = float(match.group(2))
        if not dt > 0:
            raise ValueError(f"{name}: dt must be positive")
        return RelaxConfig(method=match.group(1), tol=tol, max_steps=100_000,
                           check_every=check_every, dt=dt)
    configs = method_configs(tol, tau_max, check_every)
    if name not in configs:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}, etd2-rtolR, "
                         "fixed_point-dtD, anderson-dtD")
    return configs[name]


def path_error(bound, cfg: RelaxConfig, t_end: float, reference) -> float:
    """Largest |s(t_end) − s_ref(t_end)| over samples and neurons when ``cfg``'s adaptive
    integrator (its rtol, atol and first step) runs from zero states to ``t_end``; NaN for
    a method that is not ctep's rk23 or etd2."""
    if cfg.method not in ("rk23", "etd2"):
        return math.nan
    rtol, atol = tolerances(cfg)
    s0 = bound.energy.init_states(bound.x.shape[0], dtype=bound.x.dtype)
    out = integrate_adaptive(bound, s0, t_end, method=cfg.method, rtol=rtol, atol=atol,
                             first_step=cfg.dt, max_steps=1_000_000)
    return max(float((a - b).abs().max()) for a, b in zip(out.states, reference, strict=True))


def reference_path(bound, t_end: float) -> tuple:
    """States at ``t_end`` from zero states by rk23 at rtol 1e-10, atol 1e-12 (the reference
    of :func:`path_error`)."""
    s0 = bound.energy.init_states(bound.x.shape[0], dtype=bound.x.dtype)
    return integrate_adaptive(bound, s0, t_end, method="rk23", rtol=1e-10, atol=1e-12,
                              max_steps=1_000_000).states


def run_once(bound, cfg: RelaxConfig) -> tuple[float, object]:
    t0 = time.perf_counter()
    eq = relax(bound, config=cfg)
    return time.perf_counter() - t0, eq


def measure(energy: DenseHopfield, x: torch.Tensor, tau_name: str, methods: list[str],
            tol: float, repeats: int, check_every: int, path_time: float | None = None,
            beta: float = 0.0) -> list[dict]:
    """Interleaved timings of ``methods`` on one (τ, net, batch); one row per method. With
    ``path_time``, the adaptive rows also get ``path_error`` (:func:`path_error`); with
    ``beta`` ≠ 0 the phases are nudged towards random targets (seeded)."""
    dtype = x.dtype
    dist, spread = TAUS[tau_name]
    tau = TimeConstants.sample(energy.state_shapes, dist, 1.0, spread, seed=2, dtype=dtype)
    field = VectorField(energy, "squared_error", tau)
    if beta:
        y = torch.randint(0, energy.sizes[-1], (x.shape[0],),
                          generator=torch.Generator().manual_seed(3))
        bound = field.bind(x, y, beta)
    else:
        bound = field.bind(x)
    tau_max = max(float(t.max()) for t in tau())
    cfgs = {m: config_for(m, tol, tau_max, check_every) for m in methods}
    last = {m: run_once(bound, cfgs[m])[1] for m in methods}  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            seconds, last[m] = run_once(bound, cfgs[m])
            times[m].append(seconds)
    base = statistics.median(times["fixed_point"]) if "fixed_point" in times else math.nan
    reference = None
    if path_time is not None:
        with torch.no_grad():
            reference = reference_path(bound, path_time)
    rows = []
    for m in methods:
        eq = last[m]
        seconds = statistics.median(times[m])
        row = {"method": m, "tau": tau_name, "beta": beta, "width": energy.sizes[1],
               "batch": x.shape[0], "nfe": float(eq.nfe.double().mean()),
               "nfe_max": float(eq.nfe.max()), "seconds": seconds,
               "residual": float(eq.residual.max()),
               "converged": float(eq.converged.double().mean()),
               "ratio": seconds / base}
        if reference is not None:
            with torch.no_grad():
                err = path_error(bound, cfgs[m], path_time, reference)
                row["path_error"] = None if math.isnan(err) else err  # null in the JSON
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_METHODS)} on two τ, one round (< 1 minute)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--widths", default="256", help="hidden widths W of 784-W-10")
    parser.add_argument("--batches", default="64", help="batch sizes")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--taus", default=",".join(TAUS))
    parser.add_argument("--check-every", type=int, default=1,
                        help="residual checks of ctep's loops (fixed_point, exp_euler, rk23, "
                             "etd2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--beta", type=float, default=0.0,
                        help="nudge strength (0: free phases; else random targets)")
    parser.add_argument("--path-error", type=float, default=None, metavar="T",
                        help="also integrate rk23/etd2 rows to time T with their tolerances and "
                             "report the largest state error against rk23 at rtol 1e-10")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    methods = list(QUICK_METHODS) if args.quick else args.methods.split(",")
    taus = ["constant", "lognormal-0.5"] if args.quick else args.taus.split(",")
    unknown = (sorted(m for m in set(methods) - set(METHODS) if not is_pattern_name(m))
               + sorted(set(taus) - set(TAUS)))
    if unknown:
        parser.error(f"unknown method or τ name(s) {unknown}; methods: {', '.join(METHODS)}, "
                     f"etd2-rtolR, fixed_point-dtD, anderson-dtD; τ: {', '.join(TAUS)}")
    if not math.isfinite(args.beta):
        parser.error(f"--beta must be finite, got {args.beta}")
    if args.path_error is not None and not (args.path_error > 0 and math.isfinite(args.path_error)):
        parser.error(f"--path-error must be a positive time, got {args.path_error}")
    if "fixed_point" not in methods:
        methods.insert(0, "fixed_point")  # the baseline of the ratio column
    repeats = 1 if args.quick else args.repeats
    widths = [int(v) for v in args.widths.split(",")]
    batches = [int(v) for v in args.batches.split(",")]
    results = []
    for width in widths:
        energy = DenseHopfield([784, width, 10], "hard_sigmoid", seed=0, dtype=dtype)
        for batch in batches:
            x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64).to(dtype)
            for tau_name in taus:
                results += measure(energy, x, tau_name, methods, args.tol, repeats,
                                   args.check_every, args.path_error, args.beta)
    if args.json:
        print(json.dumps({"results": results}))
        return
    print(f"784-W-10 hard_sigmoid, {args.dtype}, tol {args.tol:g}, β {args.beta:g}, "
          f"check_every "
          f"{args.check_every}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {repeats} interleaved rounds")
    path = args.path_error is not None
    extra = f" path error at t = {args.path_error:g} |" if path else ""
    print("| W | batch | τ | method | NFE mean | NFE max | ms | × fixed_point | max residual "
          f"| converged |{extra}")
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if path else ""))
    for r in results:
        cell = ""
        if path:
            cell = " — |" if r["path_error"] is None else f" {r['path_error']:.1e} |"
        print(f"| {r['width']} | {r['batch']} | {r['tau']} | {r['method']} | {r['nfe']:.1f} | "
              f"{r['nfe_max']:.0f} | {1e3 * r['seconds']:.1f} | {r['ratio']:.2f} | "
              f"{r['residual']:.1e} | {r['converged']:.2f} |{cell}")


if __name__ == "__main__":
    main()
