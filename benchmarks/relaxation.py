"""Relaxation cost per method: wall time and NFE to a residual tolerance.

A 784-256-10 dense net (hard sigmoid, primitive form, default init), batch 64, float64, random
inputs in [0, 1), relaxed from zero states until every sample's residual ‖τ ⊙ ds/dt‖∞ ≤ tol.
Homogeneous τ and log-normal τ (coefficient of variation 0.5 and 1.0, mean 1). Seconds are the
median of ``--repeats`` runs after one warm-up; the last column is the ratio to the fixed-point
map with the same τ in the same run.

    python benchmarks/relaxation.py            # full table
    python benchmarks/relaxation.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ctep import DenseHopfield, RelaxConfig, TimeConstants, VectorField, relax

TAUS = {"constant": ("constant", 0.0), "lognormal-0.5": ("lognormal", 0.5),
        "lognormal-1.0": ("lognormal", 1.0)}
METHODS = ["fixed_point", "exp_euler", "euler", "dopri5", "bosh3"]


def measure(field: VectorField, x: torch.Tensor, cfg: RelaxConfig, repeats: int) -> dict:
    bound = field.bind(x)
    relax(bound, config=cfg)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        eq = relax(bound, config=cfg)
        times.append(time.perf_counter() - t0)
    return {"nfe": float(eq.nfe.double().mean()), "nfe_max": float(eq.nfe.max()),
            "seconds": statistics.median(times), "residual": float(eq.residual.max()),
            "converged": float(eq.converged.double().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fixed_point and dopri5, two τ")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", default="784,256,10")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    sizes = [int(v) for v in args.sizes.split(",")]
    methods = ["fixed_point", "dopri5"] if args.quick else METHODS
    taus = ["constant", "lognormal-0.5"] if args.quick else list(TAUS)
    repeats = 1 if args.quick else args.repeats
    energy = DenseHopfield(sizes, "hard_sigmoid", seed=0, dtype=dtype)
    x = torch.rand(args.batch, sizes[0], generator=torch.Generator().manual_seed(1),
                   dtype=torch.float64).to(dtype)
    results = []
    for tau_name in taus:
        dist, spread = TAUS[tau_name]
        tau = TimeConstants.sample(energy.state_shapes, dist, 1.0, spread, seed=2, dtype=dtype)
        field = VectorField(energy, "squared_error", tau)
        base = None
        for method in methods:
            cfg = RelaxConfig(method=method, tol=args.tol, max_steps=100_000)
            r = measure(field, x, cfg, repeats)
            base = r["seconds"] if method == "fixed_point" else base
            results.append({"method": method, "tau": tau_name, **r,
                            "ratio": r["seconds"] / base if base else float("nan")})
    if args.json:
        print(json.dumps({"results": results}))
        return
    print(f"net {sizes} hard_sigmoid, batch {args.batch}, {args.dtype}, tol {args.tol:g}, "
          f"{torch.get_num_threads()} threads, median of {repeats}")
    head = f"{'tau':<15}{'method':<13}{'NFE mean':>10}{'NFE max':>9}{'ms':>10}{'x fixed_pt':>12}" \
           f"{'residual':>11}{'conv':>6}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['tau']:<15}{r['method']:<13}{r['nfe']:>10.1f}{r['nfe_max']:>9.0f}"
              f"{1e3 * r['seconds']:>10.1f}{r['ratio']:>12.2f}{r['residual']:>11.2e}"
              f"{r['converged']:>6.2f}")


if __name__ == "__main__":
    main()
