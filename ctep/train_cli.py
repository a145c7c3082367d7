"""``ctep train``: train a network from a TOML config into a run folder."""

from __future__ import annotations

import argparse
import pathlib
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=pathlib.Path, default=None,
                   help="TOML config (examples/configs/*.toml); with --resume, the run "
                        "folder's config.toml is used instead")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE",
                   help="override one config value (TOML syntax), repeatable, e.g. "
                        "--set optimizer.lr=[0.1,0.05] --set train.epochs=3")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="run folder (default runs/<config name>)")
    p.add_argument("--data-root", default=None,
                   help="torchvision data root (overrides data.root; default $CTEP_DATA or "
                        "./data)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")


def run(args: argparse.Namespace) -> int:
    # imported here, not at module level: torchvision (via ctep.data) costs seconds to import,
    # and `ctep --help` / `ctep verify` build this subcommand's parser without running it
    from .data import DatasetNotFoundError
    from .train import CheckpointError, TrainingDiverged, load_config, train

    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={_toml_string(args.data_root)}")
    if args.no_progress:
        overrides.append("train.progress=false")
    try:
        if args.resume:
            if args.out is None:
                raise ValueError("--resume needs --out, the run folder to continue")
            if args.config is not None:
                raise ValueError("--resume continues the run folder's own config.toml; drop "
                                 "--config (use --set for changes such as train.epochs)")
            cfg = load_config(args.out / "config.toml", overrides)
            out = args.out
        else:
            if args.config is None:
                raise ValueError("ctep train needs --config FILE.toml (see examples/configs/)")
            cfg = load_config(args.config, overrides)
            out = args.out or pathlib.Path("runs") / args.config.stem
        history = train(cfg, out, resume=args.resume)
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError,
            TrainingDiverged) as exc:
        kind = "data not found" if isinstance(exc, DatasetNotFoundError) else "error"
        print(f"ctep train: {kind}: {exc}", file=sys.stderr)
        return 2
    if history:
        last = history[-1]
        print(f"done: {len(history)} epoch(s), test_acc {last['test_acc']:.4f}; run folder "
              f"{out}")
    return 0


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
