"""ctep's training batch against the floor: the same arithmetic written as a minimal loop.

For each row (a shipped training config, on synthetic inputs of its data set's shape) and each
thread count, one interleaved run times:

- ``ctep_ep``: the config's own trainer, ``train.mode = "ep"`` (relaxations, estimator,
  optimizer step and the trainer's bookkeeping);
- ``loop``: the same EP batch as a minimal hand-written loop in this file (plain torch, no
  ctep code: the input product once, T map steps of the plain map s ← clip(∂Φ/∂s − β∂ℓ/∂s)
  for every layer at once, the centered update in closed form, the same SGD step);
- ``loop_compiled``: that loop's relaxation phases under ``torch.compile`` (optional);
- ``ctep_bp``: the trainer with ``train.mode = "bp"``;
- ``plain_bp``: a plain ``nn.Sequential`` step of the same feedforward net (Linear, clip)
  with the same loss and SGD.

Each column is the median over ``--rounds`` rounds of ms per batch; the columns are timed in
turn within each round, so a background load hits all alike. Ratios: ``ctep_ep / loop``,
``loop_compiled / loop`` and ``ctep_bp / plain_bp``.

The loop is checked against the trainer before timing: from the same weights and batch, one
step of each must give the same weights to float32 round-off (``--check-only`` runs just that).

    python benchmarks/floor.py                               # dense rows, 1 and 2 threads
    python benchmarks/floor.py --rows mnist-512 --threads 1 --no-compile --json

Rows: dense hard-sigmoid nets and the dendritic 784-256-10 net (ReLU branches), with squared
error and centered EP; the dendritic row has no BP columns (ctep's BP baseline is for dense
nets) and no compiled loop. The conv (VGG5) row needs its own minimal loop: not written yet.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch
from torch import nn

from ctep.train.config import TrainConfig, load_config
from ctep.train.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from epoch_time import synthetic_data  # noqa: E402  (a sibling script, not a package)

ROWS = {
    "mnist-512": ROOT / "examples" / "configs" / "mnist_784-512-10_laborieux.toml",
    "fmnist-256-256": ROOT / "examples" / "configs" / "fmnist_784-256-256-10.toml",
    "dendritic-256": ROOT / "examples" / "configs" / "dendritic_mnist_784-256-10.toml",
}


def supported(cfg: TrainConfig) -> None:
    """Refuse configs whose arithmetic the minimal loops do not reproduce."""
    ok = (cfg.model.kind in ("dense", "dendritic") and cfg.model.activation == "hard_sigmoid"
          and cfg.estimator.name == "centered" and cfg.relax.method == "fixed_point"
          and cfg.relax.dt == 0 and cfg.relax.damping == 1 and cfg.optimizer.name == "sgd"
          and cfg.cost.name == "squared_error")
    if not ok:
        raise ValueError("the minimal loops cover dense and dendritic hard-sigmoid nets, squared "
                         "error, centered EP, the plain map and SGD")


# ----------------------------------------------------------------------------- the floor


def layer_sgd(cfg: TrainConfig, layers: list[list[torch.Tensor]]) -> torch.optim.SGD:
    """The config's SGD with one learning rate per layer's parameters, as the trainer's."""
    o = cfg.optimizer
    lrs = o.lr if isinstance(o.lr, list) else [o.lr] * len(layers)
    return torch.optim.SGD([{"params": p, "lr": lr} for p, lr in zip(layers, lrs, strict=True)],
                           lr=lrs[0], momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay)


def relax_phase(x_drive: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                s: list[torch.Tensor], steps: int, beta: float,
                target: torch.Tensor | None) -> list[torch.Tensor]:
    """``steps`` steps of the plain map for all layers at once (primitive form, hard sigmoid):
    s_l ← clip(W_{l−1} s_{l−1} + b_{l−1} + W_lᵀ s_{l+1}, 0, 1), the output nudged by
    −β(s_L − y); ``x_drive`` = W_0 x + b_0."""
    n = len(s)
    for _ in range(steps):
        new = []
        for layer in range(n):
            u = x_drive if layer == 0 else torch.addmm(biases[layer], s[layer - 1],
                                                       weights[layer].T)
            if layer + 1 < n:
                u = u + s[layer + 1] @ weights[layer + 1]
            if layer == n - 1 and beta != 0:
                u = u - beta * (s[layer] - target)
            new.append(u.clamp(0.0, 1.0))
        s = new
    return s


class MinimalEP:
    """One centered-EP batch of a dense net, written plainly."""

    def __init__(self, cfg: TrainConfig, weights: list[torch.Tensor],
                 biases: list[torch.Tensor], compile_phases: bool = False) -> None:
        self.w = [nn.Parameter(w.detach().clone()) for w in weights]
        self.b = [nn.Parameter(b.detach().clone()) for b in biases]
        self.opt = layer_sgd(cfg, [[w, b] for w, b in zip(self.w, self.b, strict=True)])
        self.beta = cfg.estimator.beta
        self.t_free, self.t_nudged = cfg.relax.free_steps, cfg.relax.nudged_steps
        self.classes = weights[-1].shape[0]
        self.phase = torch.compile(relax_phase, dynamic=False) if compile_phases else relax_phase

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        w, b = [p.detach() for p in self.w], [p.detach() for p in self.b]
        target = torch.nn.functional.one_hot(y, self.classes).to(x.dtype)
        x_drive = torch.addmm(b[0], x, w[0].T)
        zeros = [x.new_zeros(x.shape[0], wi.shape[0]) for wi in w]
        free = self.phase(x_drive, w, b, zeros, self.t_free, 0.0, None)
        plus = self.phase(x_drive, w, b, free, self.t_nudged, self.beta, target)
        minus = self.phase(x_drive, w, b, free, self.t_nudged, -self.beta, target)
        scale = -1.0 / (2 * self.beta * x.shape[0])  # ∂E/∂W = −∂Φ/∂W, centered, batch mean
        for layer in range(len(w)):
            lo_p = x if layer == 0 else plus[layer - 1]
            lo_m = x if layer == 0 else minus[layer - 1]
            self.w[layer].grad = scale * (plus[layer].T @ lo_p - minus[layer].T @ lo_m)
            self.b[layer].grad = scale * (plus[layer].sum(0) - minus[layer].sum(0))
        self.opt.step()


class MinimalDendriticEP:
    """One centered-EP batch of a dendritic net (ReLU branches, hard-sigmoid somas), written
    plainly: z_{l,k} = (M ⊙ W)_{l,k} r_l + c_{l,k}, g_l = mean_k relu(z_{l,k}), the soma input
    u_l = g_{l−1} + α (1/K) Σ_k (M ⊙ W)_{l,k}ᵀ [1(z_{l,k} > 0) ⊙ s_{l+1}], s_l ← clip(u_l, 0, 1),
    and the update autograd of −[Φ̃(s⁺) − Φ̃(s⁻)]/(2β) with Φ̃ = Σ_l λ_{l+1} s_{l+1}ᵀ g_l."""

    def __init__(self, cfg: TrainConfig, energy) -> None:
        self.w = [nn.Parameter(w.detach().clone()) for w in energy.weights]
        self.c = [nn.Parameter(c.detach().clone()) for c in energy.branch_biases]
        self.masks = [energy.mask(i).detach().clone() for i in range(len(self.w))]
        self.alpha, self.k = energy.apical_scale, energy.branches
        self.lam = energy.layer_weights
        self.opt = layer_sgd(cfg, [[w, c] for w, c in zip(self.w, self.c, strict=True)])
        self.beta = cfg.estimator.beta
        self.t_free, self.t_nudged = cfg.relax.free_steps, cfg.relax.nudged_steps
        self.classes = self.w[-1].shape[1]

    def _z(self, layer: int, r: torch.Tensor, mw: list[torch.Tensor]) -> torch.Tensor:
        return torch.einsum("bn,kon->bko", r, mw[layer]) + self.c[layer].detach()

    def _phase(self, g0: torch.Tensor, mw: list[torch.Tensor], s: list[torch.Tensor],
               steps: int, beta: float, target: torch.Tensor | None) -> list[torch.Tensor]:
        n = len(s)
        for _ in range(steps):
            u = [g0] + [None] * (n - 1)
            for layer in range(1, n):
                z = self._z(layer, s[layer - 1], mw)
                u[layer] = torch.relu(z).mean(1)
                gate = (z > 0).to(z.dtype) * s[layer].unsqueeze(1)
                u[layer - 1] = u[layer - 1] + self.alpha * torch.einsum(
                    "bko,kon->bn", gate, mw[layer]) / self.k
            if beta != 0:
                u[-1] = u[-1] - beta * (s[-1] - target)
            s = [v.clamp(0.0, 1.0) for v in u]
        return s

    def _phi(self, x: torch.Tensor, s: list[torch.Tensor]) -> torch.Tensor:
        below = [x, *s[:-1]]
        return sum(lam * (hi * torch.relu(
            torch.einsum("bn,kon->bko", lo, w * m) + c).mean(1)).sum(1)
            for lam, lo, hi, w, m, c in zip(self.lam, below, s, self.w, self.masks, self.c,
                                            strict=True))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            mw = [w.detach() * m for w, m in zip(self.w, self.masks, strict=True)]
            target = torch.nn.functional.one_hot(y, self.classes).to(x.dtype)
            g0 = torch.relu(self._z(0, x, mw)).mean(1)
            zeros = [x.new_zeros(x.shape[0], w.shape[1]) for w in self.w]
            free = self._phase(g0, mw, zeros, self.t_free, 0.0, None)
            plus = self._phase(g0, mw, free, self.t_nudged, self.beta, target)
            minus = self._phase(g0, mw, free, self.t_nudged, -self.beta, target)
        self.opt.zero_grad(set_to_none=True)
        loss = -(self._phi(x, plus) - self._phi(x, minus)).mean() / (2 * self.beta)
        loss.backward()
        self.opt.step()


class PlainBP:
    """The feedforward net as ``nn.Sequential`` (Linear, clip to [0, 1]) with ½‖r_L − y‖²."""

    def __init__(self, cfg: TrainConfig, weights: list[torch.Tensor],
                 biases: list[torch.Tensor]) -> None:
        layers: list[nn.Module] = []
        for w, b in zip(weights, biases, strict=True):
            lin = nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            layers += [lin, nn.Hardtanh(0.0, 1.0)]
        self.net = nn.Sequential(*layers)
        self.opt = layer_sgd(cfg, [list(m.parameters()) for m in self.net
                                   if isinstance(m, nn.Linear)])
        self.classes = weights[-1].shape[0]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        out = self.net(x)
        target = torch.nn.functional.one_hot(y, self.classes).to(x.dtype)
        (0.5 * (out - target).pow(2).sum(1)).mean().backward()
        self.opt.step()


# ----------------------------------------------------------------------------- timing


def _trainer(path: pathlib.Path, mode: str, n: int) -> Trainer:
    cfg = load_config(path, [f'train.mode="{mode}"', "train.progress=false",
                             "train.checkpoint_every=0", "train.epochs=1000"])
    return Trainer(cfg, None, data=synthetic_data(cfg, n, seed=0))


def _params(trainer: Trainer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    e = trainer.field.energy
    return [w.detach() for w in e.weights], [b.detach() for b in e.biases]


def check(path: pathlib.Path) -> float:
    """Largest |Δ| between the trainer's weights and the loop's after one batch from the same
    weights and inputs, relative to the largest weight."""
    cfg = load_config(path)
    trainer = _trainer(path, "ep", 4 * cfg.data.batch_size)
    loop = _minimal(cfg, trainer)
    x, y = trainer.data.train.batch(torch.arange(cfg.data.batch_size))
    trainer._train_step(trainer.data.train, torch.arange(cfg.data.batch_size))
    loop.step(x.to(trainer.dtype), y)
    ws = [w.detach() for w in trainer.field.energy.weights]
    worst = max(float((a - b.detach()).abs().max()) for a, b in zip(ws, loop.w, strict=True))
    return worst / max(float(w.abs().max()) for w in ws)


def _minimal(cfg: TrainConfig, trainer: Trainer, compile_phases: bool = False):
    """The minimal loop of the config's model, from the trainer's current weights."""
    if cfg.model.kind == "dendritic":
        if compile_phases:
            raise ValueError("the compiled loop covers the dense rows only")
        return MinimalDendriticEP(cfg, trainer.field.energy)
    return MinimalEP(cfg, *_params(trainer), compile_phases=compile_phases)


def time_row(path: pathlib.Path, rounds: int, batches: int, warmup: int,
             compile_loop: bool) -> dict:
    cfg = load_config(path)
    n = (warmup + rounds * batches + 1) * cfg.data.batch_size
    dense = cfg.model.kind == "dense"
    ep = _trainer(path, "ep", n)
    bp = _trainer(path, "bp", n) if dense else None  # ctep's BP baseline is for dense nets
    loop = _minimal(cfg, ep)
    compiled = _minimal(cfg, ep, compile_phases=True) if compile_loop and dense else None
    plain = PlainBP(cfg, *_params(ep)) if dense else None
    data = ep.data.train
    gen = torch.Generator().manual_seed(1)
    bs = cfg.data.batch_size

    def minimal(model) -> callable:
        def run(count: int) -> None:
            for _ in range(count):
                idx = torch.randint(0, len(data), (bs,), generator=gen)
                x, y = data.batch(idx)
                model.step(x.to(ep.dtype), y)
        return run

    columns = {"ctep_ep": lambda c: ep.run(stop_after_batches=c), "loop": minimal(loop)}
    if dense:
        columns["ctep_bp"] = lambda c: bp.run(stop_after_batches=c)
        columns["plain_bp"] = minimal(plain)
    if compiled is not None:
        columns["loop_compiled"] = minimal(compiled)
    for run in columns.values():
        run(warmup)
    times: dict[str, list[float]] = {k: [] for k in columns}
    for _ in range(rounds):
        for name, run in columns.items():
            start = time.perf_counter()
            run(batches)
            times[name].append((time.perf_counter() - start) / batches * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    out = {f"{k}_ms": v for k, v in ms.items()}
    out["ep_ratio"] = ms["ctep_ep"] / ms["loop"]
    if dense:
        out["bp_ratio"] = ms["ctep_bp"] / ms["plain_bp"]
    if compiled is not None:
        out["compiled_ratio"] = ms["loop_compiled"] / ms["loop"]
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10, help="batches per column per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for row in args.rows.split(","):
        if row not in ROWS:
            parser.error(f"unknown row {row!r}; known: {', '.join(ROWS)}")
        cfg = load_config(ROWS[row])
        supported(cfg)
        rel = check(ROWS[row])
        if rel > 1e-5:
            raise SystemExit(f"{row}: the minimal loop disagrees with the trainer ({rel:.2e} "
                             "relative to the largest weight): it is not the same arithmetic")
        if args.check_only:
            results.append({"row": row, "check_rel_diff": rel})
            continue
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            r = time_row(ROWS[row], args.rounds, args.batches, args.warmup, not args.no_compile)
            results.append({"row": row, "threads": threads, "check_rel_diff": rel, **r})
    if args.json:
        print(json.dumps(results, indent=1))
        return results
    print(f"torch {torch.__version__}; ms per batch, median of {args.rounds} rounds")
    head = (f"{'row':<15} {'thr':>3} {'ctep EP':>8} {'loop':>7} {'compiled':>9} {'ctep BP':>8} "
            f"{'plain BP':>9} {'EP/loop':>8} {'comp/loop':>10} {'BP/plain':>9}")
    print(head)
    for r in results:
        if "ctep_ep_ms" not in r:
            print(f"{r['row']:<15} check {r['check_rel_diff']:.2e}")
            continue
        nan = float("nan")
        print(f"{r['row']:<15} {r['threads']:>3} {r['ctep_ep_ms']:>8.2f} {r['loop_ms']:>7.2f} "
              f"{r.get('loop_compiled_ms', nan):>9.2f} {r.get('ctep_bp_ms', nan):>8.2f} "
              f"{r.get('plain_bp_ms', nan):>9.2f} {r['ep_ratio']:>8.2f} "
              f"{r.get('compiled_ratio', nan):>10.2f} {r.get('bp_ratio', nan):>9.2f}")
    return results


if __name__ == "__main__":
    main()
