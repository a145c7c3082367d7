"""The benchmark scripts' machine-readable contracts (they run as subprocesses)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_relaxation_quick_json_schema():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "relaxation.py"), "--quick",
                          "--json"], capture_output=True, text=True, timeout=120, env=env,
                         check=True)
    rows = json.loads(out.stdout)["results"]
    seen = {(r["method"], r["tau"]) for r in rows}
    for method in ("fixed_point", "dopri5"):
        for tau in ("constant", "lognormal-0.5"):
            assert (method, tau) in seen
    for r in rows:
        assert isinstance(r["method"], str) and isinstance(r["tau"], str)
        for key in ("nfe", "seconds", "residual"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["residual"] <= 1e-4  # the same residual tolerance for every method
        assert r["nfe"] >= 2
    fixed = {r["tau"]: r for r in rows if r["method"] == "fixed_point"}
    assert all(f["ratio"] == 1.0 for f in fixed.values())
