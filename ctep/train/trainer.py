"""The training loop: estimator (or backprop) → all-reduce → optimizer step, with evaluation,
per-epoch metrics, atomic checkpoints and exact resume.

A run folder holds ``config.toml`` (the resolved config), ``metrics.csv`` and ``metrics.nc``
(one row per epoch) and ``checkpoint.pt`` (weights, optimizer state, position in the epoch,
the epoch's partial sums, every RNG state the run draws from). A run stopped at any point and
resumed from its checkpoint ends with the same weights as an uninterrupted run: the batch order
of an epoch depends only on ``(data.seed, epoch)``, learning rates only on the epoch, and the
estimator's generators are restored.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from typing import Any

import torch
import tqdm
from torch import Tensor

from .._io import atomic_write_text
from ..solve import Status, relax
from . import build
from .baselines import feedforward, unrolled
from .batches import DTYPES, Split, TrainData, eval_batches, load_train_data, train_batches
from .checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig, with_added_keys
from .distributed import DistContext
from .metrics import write_metrics

#: [train] keys a resumed run may change (the rest must match the checkpoint's config)
RESUMABLE_TRAIN_KEYS = ("epochs", "checkpoint_every", "progress", "log_every")
#: sums accumulated over an epoch's training batches (summed over ranks at the end)
_SUMS = ("count", "loss", "correct", "nfe", "nonconverged", "diverged", "residual",
         "residual_count")


class TrainingDiverged(RuntimeError):
    """The parameters became non-finite; the last checkpoint is left as it was."""


class Trainer:
    """One training run.

    Args:
        cfg: the run's config.
        out: the run folder (None: nothing is written).
        resume: continue from ``out/checkpoint.pt`` (its config must match ``cfg`` in every
            section but ``[train]``).
        data: preloaded splits (default: loaded from ``cfg.data``).
        dist: the process group context (default: from torchrun's environment).
    """

    def __init__(self, cfg: TrainConfig, out: str | pathlib.Path | None = None, *,
                 resume: bool = False, data: TrainData | None = None,
                 dist: DistContext | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.out = pathlib.Path(out) if out is not None else None
        self.dist = dist or DistContext.from_env(cfg.model.device)
        self.device = torch.device(cfg.model.device)
        if self.dist.active and self.device.type == "cuda":  # one GPU per process
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if cfg.data.batch_size < self.dist.world:
            raise ValueError(f"data.batch_size ({cfg.data.batch_size}) must be at least the "
                             f"number of processes ({self.dist.world})")
        self.dtype = DTYPES[cfg.model.dtype]
        torch.manual_seed(cfg.train.seed)  # only torchvision augmentation draws from it
        self.data = data or load_train_data(cfg.data, cfg.model)
        self.field = build.build_field(cfg, self.data.input_shape, self.data.n_classes)
        self.field.to(self.device)
        self.params = tuple(self.field.learnable_parameters())
        self.optimizer = build.build_optimizer(cfg, self.field)
        self.estimator = build.build_estimator(cfg) if cfg.train.mode == "ep" else None
        _, _, self.eval_relax = build.relax_configs(cfg)
        if cfg.train.mode == "bptt":
            self.eval_relax = self.eval_relax.replace(max_steps=self._bptt_steps)
        self.dist.broadcast_parameters(self.field)
        self.epoch, self.batch = 0, 0
        self.history: list[dict[str, float]] = []
        self.partial: dict[str, float] = {k: 0.0 for k in (*_SUMS, "seconds")}
        checkpoint = self.out / CHECKPOINT_NAME if self.out is not None else None
        if resume:
            if checkpoint is None:
                raise ValueError("resume needs a run folder")
            self._restore(load_checkpoint(checkpoint))
            if self.dist.is_main:  # the folder's config says what the run now does
                atomic_write_text(self.out / "config.toml", cfg.to_toml())
        elif checkpoint is not None and checkpoint.exists():
            raise FileExistsError(f"{self.out} already holds a run ({CHECKPOINT_NAME}); resume "
                                  "it or choose another output folder")
        elif self.out is not None and self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.toml", cfg.to_toml())

    @property
    def _bptt_steps(self) -> int:
        return self.cfg.train.bptt_steps or self.cfg.relax.free_steps

    # ------------------------------------------------------------------ the loop

    def run(self, *, stop_after_batches: int | None = None) -> list[dict[str, float]]:
        """Train until ``train.epochs``; return the per-epoch metrics.

        ``stop_after_batches`` stops (as if killed, without a final checkpoint) after that many
        batches of this call: for tests of resume.
        """
        cfg = self.cfg
        done = 0
        n_train = len(self.data.train)
        per_epoch = (n_train + cfg.data.batch_size - 1) // cfg.data.batch_size
        while self.epoch < cfg.train.epochs:
            factor = build.set_epoch_lr(cfg, self.optimizer, self.epoch)
            bar = tqdm.tqdm(total=per_epoch, initial=self.batch, desc=f"epoch {self.epoch + 1}",
                            disable=not (cfg.train.progress and self.dist.is_main),
                            leave=False, dynamic_ncols=True)
            start = time.perf_counter()
            for b, idx in train_batches(n_train, cfg.data.batch_size, cfg.data.seed, self.epoch,
                                        self.batch, rank=self.dist.rank, world=self.dist.world):
                self._train_step(self.data.train, idx)
                self.batch = b + 1
                bar.update(1)
                if self.batch % max(cfg.train.log_every, 1) == 0 and self.partial["count"]:
                    n = self.partial["count"]
                    bar.set_postfix(loss=f"{self.partial['loss'] / n:.4f}",
                                    acc=f"{self.partial['correct'] / n:.3f}")
                done += 1
                every = cfg.train.checkpoint_every
                if every and self.batch % every == 0 and self.batch < per_epoch:
                    self.partial["seconds"] += time.perf_counter() - start
                    start = time.perf_counter()
                    self._save()
                if stop_after_batches is not None and done >= stop_after_batches:
                    bar.close()
                    return self.history
            bar.close()
            self.partial["seconds"] += time.perf_counter() - start
            self._end_epoch(factor)
        return self.history

    def _train_step(self, split: Split, idx: Tensor) -> None:
        if len(idx) == 0:  # this rank's shard of a short last batch: join the all-reduce
            for p in self.params:
                p.grad = torch.zeros_like(p)
            self.dist.average_gradients(self.params, 0.0)
            self.optimizer.step()
            return
        x, y = self._batch(split, idx)
        mode = self.cfg.train.mode
        if mode == "ep":
            est = self.estimator(self.field, x, y)
            est.write_grads()
            free, used = est.free, est.used
            nfe = free.nfe.clone()
            for eq in est.nudged:
                nfe += eq.nfe
            loss, states = est.loss, free.states
            self._accumulate_relaxation(free, used, nfe)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                states = (feedforward(self.field, x) if mode == "bp" else
                          unrolled(self.field, x, self._bptt_steps, self.eval_relax.damping,
                                   self.eval_relax.dt))  # the map evaluation relaxes with
                loss = self.field.loss(states, y)
                loss.mean().backward()
            loss = loss.detach()
            used = torch.ones(len(y), dtype=torch.bool, device=loss.device)
            self.partial["nfe"] += (self._bptt_steps if mode == "bptt" else 0) * len(y)
        self.dist.average_gradients(self.params, float(used.sum()))
        self.optimizer.step()
        if not all_finite(self.params):
            raise TrainingDiverged(f"parameters became non-finite at epoch {self.epoch + 1}, "
                                   f"batch {self.batch + 1}; the last checkpoint is unchanged "
                                   "(lower the learning rate or β)")
        with torch.no_grad():
            pred = self.field.cost.predict(states[-1].detach())
            ok = used.bool()
            self.partial["count"] += len(y)
            self.partial["loss"] += float(torch.where(ok, loss, 0).sum())
            self.partial["correct"] += float(((pred == y) & ok).sum())

    def _accumulate_relaxation(self, free, used: Tensor, nfe: Tensor) -> None:
        ok = used.bool()
        self.partial["nfe"] += float(nfe.sum())
        self.partial["nonconverged"] += float((free.status != int(Status.CONVERGED)).sum())
        self.partial["diverged"] += float((~ok).sum())
        res = free.residual[ok & torch.isfinite(free.residual)]
        self.partial["residual"] += float(res.sum())
        self.partial["residual_count"] += res.numel()

    def _batch(self, split: Split, idx: Tensor) -> tuple[Tensor, Tensor]:
        x, y = split.batch(idx)
        return x.to(self.device, self.dtype), y.to(self.device)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, split: Split) -> tuple[float, float]:
        """(accuracy, mean loss) at the free equilibrium (the feedforward pass for ``bp``);
        samples whose relaxation diverged count as wrong."""
        correct = total = loss_sum = n_ok = 0.0
        for idx in eval_batches(len(split), self.cfg.data.test_batch_size, rank=self.dist.rank,
                                world=self.dist.world):
            x, y = self._batch(split, idx)
            if self.cfg.train.mode == "bp":
                states = feedforward(self.field, x)
                ok = torch.ones_like(y, dtype=torch.bool)
            else:
                eq = relax(self.field.bind(x), None, self.eval_relax)
                states = eq.states
                ok = (eq.status != int(Status.DIVERGED)) & (eq.status != int(Status.SOLVER_FAILED))
            pred = self.field.cost.predict(states[-1])
            loss = self.field.loss(states, y)
            correct += float(((pred == y) & ok).sum())
            loss_sum += float(torch.where(ok, loss, 0).sum())
            total += len(y)
            n_ok += float(ok.sum())
        correct, total, loss_sum, n_ok = self.dist.sum([correct, total, loss_sum, n_ok],
                                                       self.device)
        return correct / max(total, 1.0), loss_sum / n_ok if n_ok else math.nan

    # ------------------------------------------------------------------ epochs and files

    def _end_epoch(self, factor: float) -> None:
        start = time.perf_counter()
        sums = self._global_sums()
        n = max(sums["count"], 1.0)
        used = sums["count"] - sums["diverged"]
        row: dict[str, float] = {
            "epoch": self.epoch + 1, "lr_factor": factor,
            "loss": sums["loss"] / used if used > 0 else math.nan,
            "train_acc": sums["correct"] / n, "nfe": sums["nfe"] / n,
            "nonconverged": sums["nonconverged"] / n if self.estimator else math.nan,
            "diverged": sums["diverged"] / n,
            "residual": (sums["residual"] / sums["residual_count"]
                         if sums["residual_count"] else math.nan)}
        if self.data.val is not None:
            row["val_acc"], row["val_loss"] = self.evaluate(self.data.val)
        row["test_acc"], row["test_loss"] = self.evaluate(self.data.test)
        row["seconds"] = self.partial["seconds"] + time.perf_counter() - start
        self.history.append(row)
        self.epoch += 1
        self.batch = 0
        self.partial = {k: 0.0 for k in (*_SUMS, "seconds")}
        self._save()
        if self.dist.is_main and self.cfg.train.progress:
            print(_format_row(row), flush=True)

    def _state(self) -> dict[str, Any]:
        gens = {name: g.get_state() for name, g in _generators(self.estimator).items()}
        gens["torch_global"] = torch.get_rng_state()
        return {"format": FORMAT_VERSION, "model": self.field.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                "batch": self.batch, "history": list(self.history),
                "partial": dict(self.partial), "generators": gens,
                "config": self.cfg.to_dict()}

    def _global_sums(self) -> dict[str, float]:
        """The epoch's partial sums added over the ranks."""
        return dict(zip(_SUMS, self.dist.sum([self.partial[k] for k in _SUMS], self.device),
                        strict=True))

    def _save(self) -> None:
        if self.out is None:
            return
        state = self._state()
        # the checkpoint holds the partial sums of all ranks; on resume rank 0 takes them and
        # the others start from zero, so the epoch's metrics count every sample once
        state["partial"] = {**self._global_sums(), "seconds": self.partial["seconds"]}
        if self.dist.is_main:
            if self.history:  # metrics first: a kill in between loses no row
                write_metrics(self.out, self.history, {"config": self.cfg.to_toml()})
            save_checkpoint(self.out / CHECKPOINT_NAME, state)
        self.dist.barrier()

    def _restore(self, state: dict[str, Any]) -> None:
        saved = with_added_keys(state["config"])  # saved before a key existed: its default
        mine = self.cfg.to_dict()
        differ = sorted(k for k in mine if k != "train" and saved.get(k) != mine[k])
        differ += sorted(f"train.{k}" for k, v in mine["train"].items()
                         if k not in RESUMABLE_TRAIN_KEYS and saved["train"].get(k) != v)
        if differ:
            raise CheckpointError(f"the checkpoint in {self.out} was written with a different "
                                  f"config: section(s) {differ} differ")
        self.field.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.history = [dict(r) for r in state["history"]]
        self.partial = {k: (float(v) if self.dist.is_main or k == "seconds" else 0.0)
                        for k, v in state["partial"].items()}
        gens = dict(state["generators"])
        torch.set_rng_state(gens.pop("torch_global"))
        mine_gens = _generators(self.estimator)
        for name, g in gens.items():
            if name not in mine_gens:
                raise CheckpointError(f"checkpoint holds RNG state {name!r} that this "
                                      "estimator does not have")
            mine_gens[name].set_state(g)


def all_finite(tensors) -> bool:
    """Whether every entry of every tensor is finite, with one host read.

    Uses min and max of each tensor (NaN propagates through both, ±inf shows in one): on CPU
    ~10x cheaper than ``isfinite(p).all()`` (measured 0.18 ms against 2.5 ms for a 512 x 784
    float32 matrix, torch 2.14), and one synchronisation for all tensors instead of one each.
    """
    flags = [torch.isfinite(v) for p in tensors if p.numel()
             for v in (torch.view_as_real(p.detach()) if p.is_complex() else p.detach()).aminmax()]
    return not flags or bool(torch.stack(flags).all())


def _generators(estimator) -> dict[str, torch.Generator]:
    """Every torch.Generator an estimator draws from, by attribute name."""
    if estimator is None:
        return {}
    return {k: v for k, v in vars(estimator).items() if isinstance(v, torch.Generator)}


def _format_row(row: dict[str, float]) -> str:
    parts = [f"epoch {int(row['epoch'])}", f"loss {row['loss']:.4f}",
             f"train {row['train_acc']:.4f}"]
    if "val_acc" in row:
        parts.append(f"val {row['val_acc']:.4f}")
    parts += [f"test {row['test_acc']:.4f}", f"{row['seconds']:.1f} s",
              f"nfe {row['nfe']:.1f}"]
    return " | ".join(parts)


def train(cfg: TrainConfig, out: str | pathlib.Path | None = None, *, resume: bool = False,
          data: TrainData | None = None) -> list[dict[str, float]]:
    """Run (or resume) a training run; return its per-epoch metrics."""
    trainer = Trainer(cfg, out, resume=resume, data=data)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()


__all__ = ["Trainer", "TrainingDiverged", "train"]
