"""Test accuracy of the example configs, EP next to the BP baseline on the same architecture.

    python benchmarks/accuracy.py --data-root ../shared/data       # MNIST + FMNIST 784-512-10
    python benchmarks/accuracy.py --quick                                      # mnist_quick only
    python benchmarks/accuracy.py --configs examples/configs/mnist_784-256-10.toml \
        --epochs 5 --baselines bp,bptt --json

Prints one row per (config, mode): dataset, model, estimator (or bp/bptt), epochs, final and
best test accuracy, seconds per epoch, and the ratio of seconds per epoch to the first mode of
the same config (EP). Each run's folder (config, metrics, checkpoint) goes under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

from ctep.train import Trainer, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = ["examples/configs/mnist_784-512-10_laborieux.toml",
           "examples/configs/fmnist_784-512-10.toml"]


def run_one(config: pathlib.Path, mode: str, args: argparse.Namespace) -> dict:
    overrides = [f'train.mode="{mode}"', "train.progress=false" if args.quiet else
                 "train.progress=true", "train.checkpoint_every=0"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    if args.data_root:
        overrides.append(f'data.root="{args.data_root}"')
    if args.train_subset:
        overrides.append(f"data.train_subset={args.train_subset}")
    cfg = load_config(config, overrides)
    out = pathlib.Path(args.out) / f"{config.stem}-{mode}"
    if out.exists():
        shutil.rmtree(out)
    history = Trainer(cfg, out).run()
    model = "-".join(str(n) for n in cfg.model.hidden)
    seconds = sum(r["seconds"] for r in history) / len(history)
    return {"config": config.stem, "dataset": cfg.data.name,
            "model": f"{cfg.model.kind} {model} {cfg.model.activation}",
            "method": (f"{cfg.estimator.name} β={cfg.estimator.beta:g}" if mode == "ep"
                       else mode),
            "epochs": len(history), "test_acc": history[-1]["test_acc"],
            "best_test_acc": max(r["test_acc"] for r in history),
            "seconds_per_epoch": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=None, help="config files (default: MNIST "
                   "784-512-10 and FMNIST 784-512-10)")
    p.add_argument("--quick", action="store_true", help="only examples/configs/mnist_quick.toml")
    p.add_argument("--epochs", type=int, default=0, help="override train.epochs")
    p.add_argument("--train-subset", type=int, default=0, help="override data.train_subset")
    p.add_argument("--baselines", default="bp", help="comma list of bp, bptt ('' for none)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="runs/benchmark-accuracy")
    p.add_argument("--json", action="store_true", help="print {\"results\": [...]} only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    names = ["examples/configs/mnist_quick.toml"] if args.quick else (args.configs or DEFAULT)
    modes = ["ep"] + [m for m in args.baselines.split(",") if m.strip()]
    rows = []
    for name in names:
        config = pathlib.Path(name) if pathlib.Path(name).exists() else ROOT / name
        first = None
        for mode in modes:
            row = run_one(config, mode, args)
            first = first or row["seconds_per_epoch"]
            row["time_ratio"] = row["seconds_per_epoch"] / first
            rows.append(row)
            if not args.json:
                print(f"finished {config.stem} {mode}: test {row['test_acc']:.4f}",
                      file=sys.stderr)
    if args.json:
        print(json.dumps({"results": rows}))
        return 0
    header = (f"{'dataset':<14} {'model':<28} {'method':<18} {'epochs':>6} {'test acc':>9} "
              f"{'best':>7} {'s/epoch':>8} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['dataset']:<14} {r['model']:<28} {r['method']:<18} {r['epochs']:>6} "
              f"{r['test_acc']:>9.4f} {r['best_test_acc']:>7.4f} "
              f"{r['seconds_per_epoch']:>8.1f} {r['time_ratio']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
