"""The ``ctep`` command: ``ctep <subcommand> [options]``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) ->
int``; :data:`SUBCOMMANDS` maps names to those modules (imported only when used).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("ctep.verify_cli", "check EP gradients against reference gradients"),
    "train": ("ctep.train_cli", "train a network from a TOML config into a run folder"),
    "dynamics": ("ctep.dynamics_cli", "record a relaxation: trajectories.nc, convergence "
                 "diagnostics and figures"),
    "sweep": ("ctep.sweep_cli", "train every point of a grid over a config; one results.nc, "
              "resumable"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctep", description="continuous-time Equilibrium "
                                     "Propagation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
