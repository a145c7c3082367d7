"""Seconds per training epoch of any ctep config, on the CPU or a GPU (issue 8's VGG5 target).

Runs the config's own trainer (its model, estimator, relaxation budgets, optimizer) on the
config's data, or with ``--synthetic N`` on N random images of the data set's shape (timing
does not depend on the pixels when the phases run fixed budgets, ``relax.check_every = 0``,
as every shipped config does), and reports:

- ``batch_ms``: the median over ``--rounds`` rounds of (round time / ``--batches``), after
  ``--warmup`` untimed batches (first-call allocations, cuDNN autotuning, lazy
  initialisation), all within the first epoch (so no test evaluation runs inside a round;
  more batches than one epoch are refused). On a GPU each round ends with
  ``torch.cuda.synchronize()`` and is timed with CUDA events (``gpu_batch_ms``) as well as
  the host clock; both are reported.
- ``epoch_s``: ``batch_ms`` × the batches of one epoch of the config's training set (50 000
  images for CIFAR-10, 60 000 for MNIST-type sets, less any validation split): an
  extrapolation that leaves out the per-epoch test evaluation and data loading.
- ``samples_per_s``, and on a GPU ``peak_mem_mb`` (``torch.cuda.max_memory_allocated``).

Examples::

    # issue 8's target, on a GPU machine (CIFAR-10 files absent: synthetic images)
    python benchmarks/epoch_time.py --config examples/configs/vgg5_cifar10.toml \\
        --device cuda --synthetic 50000
    # the same code path on the CPU at a tiny width
    python benchmarks/epoch_time.py --config examples/configs/vgg5_cifar10.toml --synthetic 256 \\
        --set "model.options={channels=[8, 16, 16, 16]}" --set data.batch_size=32 \\
        --warmup 1 --batches 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

from ctep.data import get_spec
from ctep.models import model_options
from ctep.train.batches import Split, TrainData, load_train_data, n_batches
from ctep.train.config import TrainConfig, load_config
from ctep.train.trainer import Trainer


def synthetic_data(cfg: TrainConfig, n: int, seed: int) -> TrainData:
    """``n`` standard-normal images (and 1/8 as many test images) of the config's data set
    shape and class count, flattened for dense models; seeded."""
    spec = get_spec(cfg.data.name)
    gen = torch.Generator().manual_seed(seed)
    shape = spec.input_shape
    if "sizes" in model_options(cfg.model.kind):  # dense models take flat inputs
        shape = (math.prod(shape),)
    n_test = max(1, n // 8)

    def split(name: str, count: int) -> Split:
        x = torch.randn(count, *shape, generator=gen)
        y = torch.randint(0, spec.num_classes, (count,), generator=gen)
        return Split(name, x, y)

    return TrainData(split("train", n), None, split("test", n_test), tuple(shape),
                     spec.num_classes)


def measure(cfg: TrainConfig, data: TrainData, warmup: int, batches: int,
            rounds: int, progress: bool = False) -> dict:
    """Time the trainer's batches as the module docstring says. With ``progress`` each round's
    ms per batch goes to stderr as it ends, so a run stopped by a time limit (as in
    ``gpu_checks.sh``) still leaves the rounds it finished."""
    trainer = Trainer(cfg, None, data=data)
    cuda = trainer.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(trainer.device)

    if warmup:
        trainer.run(stop_after_batches=warmup)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
    host, device = [], []
    for _ in range(rounds):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        trainer.run(stop_after_batches=batches)
        sync()
        host.append((time.perf_counter() - t0) / batches)
        if cuda:
            end.record()
            end.synchronize()
            device.append(start.elapsed_time(end) / 1e3 / batches)
        if progress:
            print(f"round {len(host)}/{rounds}: {host[-1] * 1e3:.1f} ms per batch"
                  + (f" (CUDA events {device[-1] * 1e3:.1f})" if cuda else ""),
                  file=sys.stderr, flush=True)
    per_batch = statistics.median(host)
    epoch_batches = n_batches(len(data.train), cfg.data.batch_size)
    out = {"batch_ms": per_batch * 1e3, "epoch_s": per_batch * epoch_batches,
           "epoch_batches": epoch_batches,
           "samples_per_s": cfg.data.batch_size / per_batch,
           "rounds_batch_ms": [h * 1e3 for h in host]}
    if cuda:
        out["gpu_batch_ms"] = statistics.median(device) * 1e3
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a ctep training config (TOML)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, as for `ctep train` (repeatable)")
    parser.add_argument("--device", default=None, help="model.device (cpu, cuda, cuda:1)")
    parser.add_argument("--data-root", default=os.environ.get("CTEP_DATA", ""))
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="N random training images of the data set's shape instead of "
                             "the files")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.batches < 1 or args.rounds < 1 or args.synthetic < 0:
        parser.error("--warmup must be ≥ 0, --batches and --rounds ≥ 1, --synthetic ≥ 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = ["train.progress=false", "train.checkpoint_every=0", *args.set]
    if args.data_root:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    if args.device:
        overrides.append(f"model.device={json.dumps(args.device)}")
    cfg = load_config(args.config, overrides)
    data = (synthetic_data(cfg, args.synthetic, cfg.data.seed) if args.synthetic
            else load_train_data(cfg.data, cfg.model))
    needed = args.warmup + args.batches * args.rounds
    available = n_batches(len(data.train), cfg.data.batch_size)
    if needed > available:  # an epoch's end would run the test evaluation inside a round
        parser.error(f"warm-up and timed batches ({needed}) exceed one epoch of "
                     f"{available} batches: use more data or fewer batches")
    result = measure(cfg, data, args.warmup, args.batches, args.rounds, progress=True)
    result.update({
        "config": args.config, "overrides": args.set, "device": cfg.model.device,
        "device_name": (torch.cuda.get_device_name(torch.device(cfg.model.device))
                        if cfg.model.device.startswith("cuda") else "cpu"),
        "dtype": cfg.model.dtype, "batch_size": cfg.data.batch_size,
        "data": f"synthetic {args.synthetic}" if args.synthetic else cfg.data.name,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "warmup": args.warmup, "batches": args.batches, "rounds": args.rounds})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.config} on {result['device_name']} ({cfg.model.dtype}, batch "
              f"{cfg.data.batch_size}, {result['data']}, torch {torch.__version__})")
        print("| batch ms (median) | epoch s | batches/epoch | samples/s |"
              + (" GPU batch ms | peak MiB |" if "gpu_batch_ms" in result else ""))
        print("|---|---|---|---|" + ("---|---|" if "gpu_batch_ms" in result else ""))
        line = (f"| {result['batch_ms']:.1f} | {result['epoch_s']:.1f} | "
                f"{result['epoch_batches']} | {result['samples_per_s']:.0f} |")
        if "gpu_batch_ms" in result:
            line += f" {result['gpu_batch_ms']:.1f} | {result['peak_mem_mb']:.0f} |"
        print(line)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
