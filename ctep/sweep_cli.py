"""``ctep sweep``: train every point of a grid over a base config; one results.nc, resumable."""

from __future__ import annotations

import argparse
import pathlib
import sys

from .train_cli import _toml_string  # the --data-root value as a TOML string, as ctep train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=pathlib.Path, required=True,
                   help="base TOML config (every grid point starts from it)")
    p.add_argument("--grid", dest="grid", action="append", default=[],
                   metavar="KEY=[V1,V2,...]",
                   help="one axis of the grid, repeatable: a config key section.key or 'seed' "
                        "(sets model/tau/data/estimator/train seeds together) and a TOML "
                        "array, e.g. --grid tau.spread=[0,0.5,1.0] --grid optimizer.lr=[0.05,0.1]")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE",
                   help="override one base-config value (TOML syntax), repeatable")
    p.add_argument("--out", type=pathlib.Path, required=True,
                   help="sweep folder; rerunning the same command there resumes the sweep. "
                        "One sweep at a time per folder (lock file OUT/.sweep.lock)")
    p.add_argument("--data-root", default=None,
                   help="torchvision data root (overrides data.root; default $CTEP_DATA or "
                        "./data). It becomes part of the sweep's base config: a rerun in the "
                        "same --out must give the same root (use $CTEP_DATA to move the data)")
    p.add_argument("--max-runs", type=int, default=None,
                   help="stop after starting or resuming this many runs (rerun to continue)")
    p.add_argument("--chance-margin", type=float, default=0.05,
                   help="a run whose final test accuracy is at most chance + this has "
                        "collapsed (default 0.05)")
    p.add_argument("--collapse-drop", type=float, default=0.2,
                   help="a run whose test accuracy falls by more than this between two epochs "
                        "has collapsed (default 0.2)")
    p.add_argument("--progress", action="store_true",
                   help="progress bars and epoch lines of each run (default: one line per run)")


def run(args: argparse.Namespace) -> int:
    from .data import DatasetNotFoundError
    from .sweep import Outcome, parse_grid, run_sweep
    from .train import CheckpointError, load_config

    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={_toml_string(args.data_root)}")
    overrides.append(f"train.progress={'true' if args.progress else 'false'}")
    try:
        grid = parse_grid(args.grid)
        base = load_config(args.config, overrides)
        outcome = Outcome(args.chance_margin, args.collapse_drop)
        report = run_sweep(base, grid, args.out, outcome=outcome, max_runs=args.max_runs,
                           log=lambda line: print(line, flush=True))
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as exc:
        kind = "data not found" if isinstance(exc, DatasetNotFoundError) else "error"
        print(f"ctep sweep: {kind}: {exc}", file=sys.stderr)
        return 2
    print(f"sweep {args.out}: {report.total} runs; this call started {report.started}, resumed "
          f"{report.resumed}, skipped {report.skipped} finished; {report.diverged} diverged"
          + ("; stopped early (rerun to continue)" if report.stopped_early else "")
          + f"; results in {args.out / 'results.nc'}")
    return 0
