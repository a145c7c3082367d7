"""Training cost per MNIST epoch: ctep's EP (one-sided, centered) vs BP vs a literature-style EP.

The network and setting of Laborieux et al. 2021: 784-512-10, hard sigmoid (ctep: clip(u, 0,
1)), squared error, T_free = 30, T_nudge = 10, β = 0.2, batch 50, float32, SGD with momentum
0.9 and per-layer rates (examples/configs/mnist_784-512-10_laborieux.toml).

Configurations:

- ``bp``: ctep's trainer with ``train.mode = "bp"`` (the same layers as a feedforward net).
- ``ep-one-sided``, ``ep-centered``: ctep's trainer (closed-form drive ∂Φ/∂s with the input
  term computed once per phase, fixed budgets with no host synchronisation, one backward pass of
  Σ c_k F(s_k, β_k) in θ for the update).
- ``lit-one-sided``, ``lit-centered``: the literature's code style, written here: every one of
  the T1/T2 steps builds Φ(x, s) with autograd and takes ``torch.autograd.grad(Φ, s)``
  (s ← σ(∂Φ/∂s), the nudge as −β·ℓ inside Φ), and the update is autograd of
  −[Φ(s_β) − Φ(s_−β)]/(2β) (or −[Φ(s_β) − Φ(s_0)]/β). It computes the same update as ctep
  (the script checks this on one batch before timing): the equilibria are bit for bit the
  same, and the updates agree to float32 round-off (ctep forms the phases' difference before
  the input-layer product, which rounds less: 1.7e-6 from a float64 evaluation against the
  literature style's 2.7e-5, whose difference of two large products cancels).

Method of measurement: each configuration trains its own copy of the network on the same
batches; after ``--warmup`` batches, ``--rounds`` rounds each time ``--batches`` batches of every
configuration in turn (interleaved, so a background load hits them alike). Seconds per epoch =
the median over rounds of (round time / batches) × 1200 batches (60000 samples): an
extrapolation that leaves out the per-epoch test evaluation. ``--full-epoch NAME`` instead runs
one whole epoch of a ctep configuration through the trainer (with its test evaluation) and
reports the trainer's own seconds. ``--memory`` runs every configuration in a fresh
subprocess: after the data are loaded and the net is built it resets the kernel's RSS
high-water mark (``/proc/self/clear_refs``), runs the warm-up and timed batches, and reports
that high-water mark (VmHWM) and its rise over the RSS before training; loading MNIST has a
higher transient peak of its own (``resource.getrusage``), reported apart.

    python benchmarks/training.py --data-root ../shared/data --threads 2
    python benchmarks/training.py --data-root ../shared/data --memory --json
    python benchmarks/training.py --data-root ../shared/data --full-epoch ep-centered
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import Tensor

from ctep.train.batches import TrainData, load_train_data, train_batches
from ctep.train.config import TrainConfig, load_config
from ctep.train.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "mnist_784-512-10_laborieux.toml"
CTEP_CONFIGS = {"bp": ["train.mode=\"bp\""],
                "ep-one-sided": ["estimator.name=\"one-sided\""],
                "ep-centered": ["estimator.name=\"centered\""]}
LIT_CONFIGS = {"lit-one-sided": False, "lit-centered": True}
CONFIGS = (*CTEP_CONFIGS, *LIT_CONFIGS)
BATCHES_PER_EPOCH = 1200


def train_config(name: str, data_root: str) -> TrainConfig:
    """The Laborieux-setting config with this configuration's overrides (nothing written)."""
    overrides = [f"data.root={json.dumps(data_root)}", "train.progress=false",  # TOML string
                 "train.checkpoint_every=0", "train.epochs=1"]
    return load_config(CONFIG, overrides + CTEP_CONFIGS.get(name, []))


class LiteratureEP:
    """EP as the literature's code computes it: autograd of Φ at every step and for the update.

    Φ(x, s) = Σ_l s_{l+1}ᵀ(W_l s_l + b_l) with s_0 = x (ctep's dense primitive); the nudged Φ
    is Φ − β·½‖s_L − y‖²; a step is s ← clip(∂Φ/∂s, 0, 1) for every layer at once.
    """

    def __init__(self, trainer: Trainer, centered: bool) -> None:
        energy = trainer.field.energy
        self.weights = [w.detach().clone().requires_grad_(True) for w in energy.weights]
        self.biases = [b.detach().clone().requires_grad_(True) for b in energy.biases]
        cfg = trainer.cfg
        lrs = cfg.optimizer.lr if isinstance(cfg.optimizer.lr, list) else [cfg.optimizer.lr] * 2
        self.optimizer = torch.optim.SGD(
            [{"params": [w, b], "lr": lr} for w, b, lr in
             zip(self.weights, self.biases, lrs, strict=True)],
            lr=lrs[0], momentum=cfg.optimizer.momentum)
        self.t_free, self.t_nudge = cfg.relax.free_steps, cfg.relax.nudged_steps
        self.beta = cfg.estimator.beta
        self.centered = centered
        self.sizes = energy.sizes

    def phi(self, x: Tensor, s: list[Tensor], y: Tensor | None, beta: float) -> Tensor:
        below = [x, *s[:-1]]
        total = sum((hi * (lo @ w.T + b)).sum(dim=1)
                    for w, b, lo, hi in zip(self.weights, self.biases, below, s, strict=True))
        if beta:
            total = total - beta * 0.5 * (s[-1] - y).pow(2).sum(dim=1)
        return total

    def relax(self, x: Tensor, s: list[Tensor], steps: int, y: Tensor | None,
              beta: float) -> list[Tensor]:
        for _ in range(steps):
            s = [t.detach().requires_grad_(True) for t in s]
            phi = self.phi(x, s, y, beta).sum()
            grads = torch.autograd.grad(phi, s)
            s = [g.clamp(0.0, 1.0) for g in grads]
        return [t.detach() for t in s]

    def gradients(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """The EP update (as parameter gradients, batch mean), like ctep's estimators."""
        onehot = torch.nn.functional.one_hot(y, self.sizes[-1]).to(x.dtype)
        s0 = [torch.zeros(x.shape[0], n, dtype=x.dtype) for n in self.sizes[1:]]
        free = self.relax(x, s0, self.t_free, None, 0.0)
        plus = self.relax(x, free, self.t_nudge, onehot, self.beta)
        if self.centered:
            minus = self.relax(x, free, self.t_nudge, onehot, -self.beta)
            objective = -(self.phi(x, plus, None, 0) - self.phi(x, minus, None, 0)) / (
                2 * self.beta)
        else:
            objective = -(self.phi(x, plus, None, 0) - self.phi(x, free, None, 0)) / self.beta
        return list(torch.autograd.grad(objective.mean(), [*self.weights, *self.biases]))

    def train_step(self, x: Tensor, y: Tensor) -> None:
        grads = self.gradients(x, y)
        for p, g in zip([*self.weights, *self.biases], grads, strict=True):
            p.grad = g
        self.optimizer.step()


class Runner:
    """One configuration: trains its own network on the run's batch order."""

    def __init__(self, name: str, data: TrainData, data_root: str) -> None:
        self.name = name
        cfg = train_config(name if name in CTEP_CONFIGS else "ep-centered", data_root)
        self.trainer = Trainer(cfg, None, data=data)
        self.lit = LiteratureEP(self.trainer, LIT_CONFIGS[name]) if name in LIT_CONFIGS else None
        self.order = iter(())
        self.split = data.train
        self.cfg = cfg

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        idx = next(self.order, None)
        if idx is None:
            self.order = (i for _, i in train_batches(len(self.split), self.cfg.data.batch_size,
                                                      self.cfg.data.seed, 0))
            idx = next(self.order)
        x, y = self.split.batch(idx)
        return x.to(torch.float32), y

    def run(self, batches: int) -> float:
        """Seconds for ``batches`` training batches."""
        t0 = time.perf_counter()
        if self.lit is None:
            self.trainer.run(stop_after_batches=batches)
        else:
            for _ in range(batches):
                self.lit.train_step(*self._next_batch())
        return time.perf_counter() - t0


def check_same_update(data: TrainData, data_root: str) -> dict[str, float]:
    """Max relative difference between ctep's and the literature-style update on one batch."""
    out = {}
    for lit_name, est_name in (("lit-centered", "ep-centered"), ("lit-one-sided", "ep-one-sided")):
        runner = Runner(lit_name, data, data_root)
        x, y = runner._next_batch()
        trainer = Trainer(train_config(est_name, data_root), None, data=data)
        est = trainer.estimator(trainer.field, x, y)
        named = est.named(trainer.field)  # same initial weights: both configs use seed 0
        ours = [named[f"energy.{k}"] for k in ("weights.0", "weights.1", "biases.0", "biases.1")]
        theirs = runner.lit.gradients(x, y)  # weights, then biases
        out[lit_name] = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                            for a, b in zip(ours, theirs, strict=True))
    return out


def rss_mb() -> float:
    """The current resident set size (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux ≥ 4.0: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """VmHWM, the RSS high-water mark since the start or the last :func:`reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM line in /proc/self/status")


def worker(name: str, args: argparse.Namespace) -> dict:
    """One configuration in this (fresh) process: the RSS high-water mark of the training
    batches alone (reset after loading the data and building the net: loading MNIST has a
    higher transient peak than training), and the process's lifetime high-water mark."""
    cfg = train_config("ep-centered", args.data_root)
    data = load_train_data(cfg.data, cfg.model)
    runner = Runner(name, data, args.data_root)
    lifetime_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    before = rss_mb()
    if not reset_peak_rss():
        raise RuntimeError("cannot reset the RSS high-water mark (/proc/self/clear_refs)")
    runner.run(args.warmup + args.batches)
    peak = peak_rss_mb()
    return {"config": name, "rss_after_load_mb": before, "rss_peak_training_mb": peak,
            "rss_rise_mb": peak - before, "rss_peak_loading_mb": lifetime_load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("CTEP_DATA", ""),
                        help="torchvision root holding MNIST (default: CTEP_DATA)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="RSS per configuration")
    parser.add_argument("--full-epoch", default="", help="one whole epoch of a ctep config")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.data_root:
        parser.error("MNIST is needed: pass --data-root or set CTEP_DATA (nothing downloads)")
    names = args.configs.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    head = (f"MNIST 784-512-10, batch 50, float32, T 30/10, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
    if args.memory:
        rows = []
        for name in names:
            cmd = [sys.executable, __file__, "--worker", name, "--data-root", args.data_root,
                   "--warmup", str(args.warmup), "--batches", str(args.batches),
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if args.json:
            print(json.dumps({"memory": rows}))
            return
        print(head + f"; {args.warmup + args.batches} batches, fresh process each")
        print("| config | RSS after load (MB) | training high-water (MB) | rise (MB) "
              "| loading high-water (MB) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['config']} | {r['rss_after_load_mb']:.0f} | "
                  f"{r['rss_peak_training_mb']:.0f} | {r['rss_rise_mb']:.1f} | "
                  f"{r['rss_peak_loading_mb']:.0f} |")
        return
    cfg0 = train_config("ep-centered", args.data_root)
    data = load_train_data(cfg0.data, cfg0.model)
    if args.full_epoch:
        if args.full_epoch not in CTEP_CONFIGS:
            parser.error(f"--full-epoch takes one of {', '.join(CTEP_CONFIGS)}")
        trainer = Trainer(train_config(args.full_epoch, args.data_root), None, data=data)
        row = trainer.run()[-1]
        out = {"config": args.full_epoch, "epoch_seconds": row["seconds"],
               "test_acc": row["test_acc"], "train_acc": row["train_acc"]}
        print(json.dumps(out) if args.json else
              f"{head}\n{args.full_epoch}: one epoch in {row['seconds']:.1f} s (trainer's "
              f"seconds, test evaluation included), test accuracy {row['test_acc']:.4f}")
        return
    same = check_same_update(data, args.data_root)
    runners = {n: Runner(n, data, args.data_root) for n in names}
    for r in runners.values():
        r.run(args.warmup)
    per_batch: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n, r in runners.items():
            per_batch[n].append(r.run(args.batches) / args.batches)
    med = {n: statistics.median(v) for n, v in per_batch.items()}
    base = med.get("bp")
    rows = [{"config": n, "seconds_per_batch": med[n],
             "epoch_seconds": med[n] * BATCHES_PER_EPOCH,
             "x_bp": med[n] / base if base else None,  # None (JSON null): not measured
             "lit_over_ctep": (med[n] / med[n.replace("lit-", "ep-")]
                               if n.startswith("lit-") and n.replace("lit-", "ep-") in med
                               else None)} for n in names]
    if args.json:
        print(json.dumps({"results": rows, "same_update_rel_diff": same}))
        return
    print(head + f"; median of {args.rounds} interleaved rounds of {args.batches} batches, "
          f"x {BATCHES_PER_EPOCH} batches per epoch (test evaluation not included)")
    print("| config | ms / batch | s / epoch (extrapolated) | × BP | literature-style ÷ ctep |")
    print("|---|---|---|---|---|")
    for r in rows:
        lit = "" if r["lit_over_ctep"] is None else f"{r['lit_over_ctep']:.2f}"
        x_bp = "" if r["x_bp"] is None else f"{r['x_bp']:.2f}"
        print(f"| {r['config']} | {1e3 * r['seconds_per_batch']:.1f} | "
              f"{r['epoch_seconds']:.0f} | {x_bp} | {lit} |")
    print("literature-style update vs ctep's on one batch, max relative difference: "
          + ", ".join(f"{k} {v:.1e}" for k, v in same.items()))


if __name__ == "__main__":
    main()
