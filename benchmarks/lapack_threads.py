"""Batched LAPACK on the CPU: what ctep's one-thread rule costs, and what it prevents.

ctep runs every dense factorisation (reference solves, Newton steps, spectra, Anderson's Gram
solves) inside ``ctep._linalg.one_thread``. This script measures both sides of that choice:

1. **Cost.** For batches of B matrices of order n (the sizes of ctep's reference solves), the
   median time of ``checked_solve`` (one thread, plus its backward-error check) against a plain
   ``torch.linalg.solve`` on one thread (the ratio: what the check adds; switching the thread
   count itself costs well under a microsecond).
2. **Hazard.** A child process makes ``--calls`` plain batched solves of random sizes on the
   default thread count, under a ``--timeout``; it reports ``ok``, ``wrong`` (oneMKL parameter
   errors or solutions that fail the backward-error check) or ``hung`` (killed at the timeout).
   Then the same with ``checked_solve``.

    python benchmarks/lapack_threads.py                  # both parts, 2 threads
    python benchmarks/lapack_threads.py --json --calls 2000 --timeout 30
    python benchmarks/lapack_threads.py --repeats 3 --calls 50 --no-plain   # a smoke run

Run it with at least 2 threads: on one thread nothing can nest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from ctep._linalg import checked_solve, one_thread

SIZES = ((1, 50), (8, 50), (8, 200), (64, 30))

CHILD = """
import sys, torch
from ctep._linalg import checked_solve, _backward_error_ok
torch.set_num_threads({threads})
gen = torch.Generator().manual_seed(0)
bad = 0
for _ in range({calls}):
    b = int(torch.randint(1, 9, (1,), generator=gen))
    m = int(torch.randint(8, 200, (1,), generator=gen))
    a = torch.randn(b, m, m, generator=gen, dtype=torch.float64) + m * torch.eye(m,
        dtype=torch.float64)
    r = torch.randn(b, m, 1, generator=gen, dtype=torch.float64)
    x = checked_solve(a, r) if {checked} else torch.linalg.solve(a, r)
    bad += not _backward_error_ok(a, r, x)
print("BAD", bad, flush=True)
"""


def _problem(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, n, n, generator=gen, dtype=torch.float64) + n * torch.eye(
        n, dtype=torch.float64)
    return a, torch.randn(batch, n, 1, generator=gen, dtype=torch.float64)


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _plain_one_thread(a: torch.Tensor, b: torch.Tensor) -> None:
    with one_thread():
        torch.linalg.solve(a, b)


def cost(repeats: int) -> list[dict]:
    """Median seconds per call of both variants, for each (B, n) in SIZES."""
    rows = []
    for batch, n in SIZES:
        a, b = _problem(batch, n, seed=batch * 1000 + n)
        base = _median_seconds(lambda a=a, b=b: _plain_one_thread(a, b), repeats)
        checked = _median_seconds(lambda a=a, b=b: checked_solve(a, b), repeats)
        rows.append({"batch": batch, "n": n, "plain_1_thread_s": base,
                     "checked_solve_s": checked, "ratio": checked / base})
    return rows


def hazard(calls: int, timeout: float, checked: bool) -> dict:
    """Run CHILD in a subprocess; classify its outcome as ok, wrong or hung."""
    code = CHILD.format(threads=torch.get_num_threads(), calls=calls, checked=checked)
    start = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired as stop:
        text = (stop.stderr or b"").decode() if isinstance(stop.stderr, bytes) else (
            stop.stderr or "")
        return {"call": "checked_solve" if checked else "linalg.solve", "outcome": "hung",
                "seconds": timeout, "mkl_errors": text.count("oneMKL ERROR")}
    seconds = time.perf_counter() - start
    errors = out.stderr.count("oneMKL ERROR")
    bad = next((int(line.split()[1]) for line in out.stdout.splitlines()
                if line.startswith("BAD")), None)
    if out.returncode != 0 and bad is None:
        outcome = "failed"
    else:
        outcome = "wrong" if errors or bad else "ok"
    return {"call": "checked_solve" if checked else "linalg.solve", "outcome": outcome,
            "seconds": seconds, "mkl_errors": errors, "bad_solutions": bad}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--no-plain", action="store_true",
                        help="run the hazard part with checked_solve only (no hang to wait for)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "cost": cost(args.repeats),
              "hazard": [hazard(args.calls, args.timeout, checked)
                         for checked in ((True,) if args.no_plain else (False, True))]}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{result['threads']} threads, torch {result['torch']}")
    print(f"{'B':>4} {'n':>5} {'plain 1 thread (µs)':>20} {'checked_solve (µs)':>19} {'ratio':>6}")
    for r in result["cost"]:
        print(f"{r['batch']:>4} {r['n']:>5} {1e6 * r['plain_1_thread_s']:>20.1f} "
              f"{1e6 * r['checked_solve_s']:>19.1f} {r['ratio']:>6.2f}")
    print(f"\n{args.calls} batched solves of random size, {result['threads']} threads, "
          f"{args.timeout:g} s limit")
    for h in result["hazard"]:
        print(f"{h['call']:>14}: {h['outcome']:<6} {h['seconds']:6.1f} s, "
              f"{h['mkl_errors']} oneMKL errors, bad solutions: {h.get('bad_solutions')}")


if __name__ == "__main__":
    main()
