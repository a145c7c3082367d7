"""Build the objects of a run from its config: field, estimator, relaxation, optimizer."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from ..dynamics import VectorField
from ..estimators import Estimator, accepted_options, get_estimator
from ..losses import CrossEntropy, SquaredError
from ..models import build_model, model_options
from ..solve import RelaxConfig
from ..timeconstants import TimeConstants, sample_tau
from .batches import DTYPES
from .config import TrainConfig


def build_field(cfg: TrainConfig, input_shape: tuple[int, ...], n_classes: int) -> VectorField:
    """The network (energy + cost + τ) for inputs of ``input_shape`` and ``n_classes`` classes.

    Width-based kinds get ``sizes = (prod(input_shape), *hidden, n_classes)``; with a
    cross-entropy read-out the last hidden layer is the last state layer and the classes are
    read out of it. Convolutional kinds get ``input_shape`` and ``n_out``.
    """
    m, c = cfg.model, cfg.cost
    dtype = DTYPES[m.dtype]
    readout = c.readout
    if readout and c.name not in ("cross_entropy", "ce"):
        raise ValueError("cost.readout needs cost.name = \"cross_entropy\"")
    options = model_options(m.kind)
    n_out = m.hidden[-1] if readout and m.hidden else n_classes
    if "sizes" in options:
        if len(input_shape) != 1:
            raise ValueError(f"model {m.kind!r} needs flat inputs, got shape {input_shape}")
        if readout and not m.hidden:
            raise ValueError("a read-out needs at least one hidden layer")
        sizes = [input_shape[0], *m.hidden] + ([] if readout else [n_classes])
        kwargs = {"sizes": sizes, "activation": m.activation, "form": m.form,
                  "alpha": m.alpha or None, "init_scale": m.init_scale}
    else:
        if readout:
            raise ValueError(f"cost.readout is for width-based models, not {m.kind!r}")
        kwargs = {"input_shape": tuple(input_shape), "n_out": n_classes, "form": m.form}
    kwargs.update(seed=m.seed, dtype=dtype)
    clash = sorted(set(kwargs) & set(m.options) - {"activation", "init_scale", "alpha"})
    if clash:
        raise ValueError(f"model.options may not set {clash}: they come from the data and the "
                         "other [model] keys")
    kwargs.update(m.options)
    energy = build_model(m.kind, **kwargs)
    if c.name in ("cross_entropy", "ce"):
        cost = CrossEntropy((n_out, n_classes) if readout else None, seed=m.seed + 1,
                            dtype=dtype)
    elif c.name in ("squared_error", "mse"):
        cost = SquaredError()
    else:
        raise ValueError(f"unknown cost.name {c.name!r}; known: squared_error, cross_entropy")
    tau = build_tau(cfg, energy.state_shapes, dtype)
    return VectorField(energy, cost, tau)


def build_tau(cfg: TrainConfig, shapes, dtype: torch.dtype) -> TimeConstants:
    """τ per neuron from ``[tau]`` (one spread, or one per state layer).

    With ``normalize = "rate"`` each layer's draw (float64) is rescaled, τ ← τ · m · mean(1/τ),
    so that its mean rate mean(1/τ) is 1/m exactly, m = ``tau.mean``.
    """
    t = cfg.tau
    spreads = list(t.per_layer) or [t.spread] * len(shapes)
    if len(spreads) != len(shapes):
        raise ValueError(f"tau.per_layer lists {len(spreads)} spreads for {len(shapes)} state "
                         "layers")
    gen = torch.Generator().manual_seed(int(t.seed))
    taus = [sample_tau(shape, t.distribution, t.mean, s, generator=gen)
            for shape, s in zip(shapes, spreads, strict=True)]
    if t.normalize == "rate":  # (TrainConfig.validate admits only "tau" and "rate")
        taus = [tau * (t.mean * float((1.0 / tau).mean())) if s > 0 else tau
                for tau, s in zip(taus, spreads, strict=True)]
    return TimeConstants([tau.to(dtype) for tau in taus])


def relax_configs(cfg: TrainConfig) -> tuple[RelaxConfig, RelaxConfig, RelaxConfig]:
    """(free, nudged, evaluation) relaxation settings."""
    r = cfg.relax
    base = RelaxConfig(method=r.method, tol=r.tol, check_every=r.check_every, damping=r.damping,
                       dt=r.dt or None, max_steps=r.free_steps, memory=r.memory)
    return (base, base.replace(max_steps=r.nudged_steps),
            base.replace(max_steps=r.eval_steps or r.free_steps))


def build_estimator(cfg: TrainConfig) -> Estimator:
    """The estimator named in ``[estimator]`` (any name or alias of
    :func:`ctep.estimators.get_estimator`) with the run's relaxation settings, and of
    ``random_sign``, ``points``, ``temperature`` (0: the estimator's default) and ``seed`` the
    ones it takes (:func:`ctep.estimators.accepted_options`)."""
    e = cfg.estimator
    free, nudged, _ = relax_configs(cfg)
    settings = {"random_sign": e.random_sign, "points": e.points, "seed": e.seed,
                "temperature": e.temperature if e.temperature > 0 else None}
    return get_estimator(e.name, e.beta, relax=free, nudged_relax=nudged,
                         on_failure=e.on_failure, **accepted_options(e.name, settings))


def layer_groups(field: VectorField) -> list[list[nn.Parameter]]:
    """The trainable parameters by layer: energy parameters grouped by the first index in their
    name (``weights.0`` and ``biases.0`` are layer 0), then the cost's (the read-out)."""
    groups: dict[int, list[nn.Parameter]] = {}
    for name, p in field.energy.named_parameters():
        found = re.search(r"(\d+)", name)
        groups.setdefault(int(found.group(1)) if found else 0, []).append(p)
    out = [groups[k] for k in sorted(groups)]
    cost_params = list(field.cost.parameters())
    if cost_params:
        out.append(cost_params)
    return out


def build_optimizer(cfg: TrainConfig, field: VectorField) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam, with one learning rate or one per layer."""
    o = cfg.optimizer
    groups = layer_groups(field)
    lrs = o.lr if isinstance(o.lr, list) else [o.lr] * len(groups)
    if len(lrs) != len(groups):
        raise ValueError(f"optimizer.lr lists {len(lrs)} rates but the network has "
                         f"{len(groups)} layers of parameters (one rate per layer, the read-out "
                         "last)")
    params = [{"params": g, "lr": lr, "initial_lr": lr} for g, lr in zip(groups, lrs,
                                                                          strict=True)]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=lrs[0], momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=lrs[0], betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Multiplier of the initial learning rates during ``epoch`` (0-based).

    Warm-up: (e+1)/(w+1) for e < w. Cosine: η_min/η + (1 − η_min/η)(1 + cos(π e'/E'))/2 over the
    E' = epochs − w epochs after warm-up (η_min as a fraction of each group's rate). Step:
    γ^⌊e'/step_size⌋.
    """
    s = cfg.schedule
    w = s.warmup_epochs
    if epoch < w:
        return (epoch + 1) / (w + 1)
    e, total = epoch - w, max(cfg.train.epochs - w, 1)
    if s.name == "cosine":
        return s.eta_min + (1 - s.eta_min) * 0.5 * (1 + math.cos(math.pi * e / total))
    if s.name == "step":
        return s.gamma ** (e // s.step_size)
    return 1.0


def set_epoch_lr(cfg: TrainConfig, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """Set every group's rate for ``epoch``; return the factor (a pure function of the epoch,
    so a resumed run needs no scheduler state)."""
    f = lr_factor(cfg, epoch)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * f
    return f
