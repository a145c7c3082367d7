"""Training configuration: TOML sections as dataclasses, ``--set`` overrides, TOML output.

A config file has the sections below; every key is optional and unknown sections or keys are
errors (a typo must not silently fall back to a default)::

    [data]      name, root, train_subset, test_subset, val_fraction, batch_size,
                test_batch_size, normalize, augment, seed
    [model]     kind, hidden, activation, form, alpha, init_scale, dtype, device, seed,
                options
    [cost]      name, readout
    [tau]       distribution, mean, spread, seed, per_layer, normalize
    [relax]     method, free_steps, nudged_steps, tol, check_every, damping, dt, eval_steps,
                memory
    [estimator] name, beta, random_sign, points, temperature, on_failure, seed
    [optimizer] name, lr, momentum, nesterov, weight_decay, betas, eps
    [schedule]  name, step_size, gamma, eta_min, warmup_epochs
    [train]     mode, epochs, seed, checkpoint_every, progress, bptt_steps, log_every

``--set section.key=value`` parses ``value`` as a TOML value (``0.1``, ``[0.1, 0.05]``,
``true``, ``"cosine"``); a bare word that is not valid TOML is taken as a string.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import pathlib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class DataConfig:
    """Which dataset, how much of it, and in what batches.

    ``name`` is a :mod:`ctep.data` dataset (``mnist``, ``fashion_mnist``, ``kmnist``,
    ``cifar10``, ``cifar100``) or ``synthetic`` (Gaussian blobs, no files). ``root`` is the
    torchvision root (empty: ``CTEP_DATA`` or ``./data``). ``train_subset``/``test_subset`` (0:
    all) take seeded random subsets; ``val_fraction`` > 0 holds out a seeded validation split
    from the training set, evaluated each epoch.
    """

    name: str = "mnist"
    root: str = ""
    train_subset: int = 0
    test_subset: int = 0
    val_fraction: float = 0.0
    batch_size: int = 50
    test_batch_size: int = 1000
    normalize: bool = False
    augment: bool = False
    seed: int = 0
    synthetic_features: int = 20
    synthetic_classes: int = 4
    synthetic_train: int = 512
    synthetic_test: int = 256


@dataclass
class ModelConfig:
    """The network: ``kind`` is a name in :data:`ctep.models.MODELS`.

    Kinds built from layer widths (``dense``, ``dendritic``, ...) get ``sizes = (input,
    *hidden, classes)`` and the keys below; convolutional kinds (``conv``, ``vgg5``,
    ``hopfield-resnet``, ...) get the input shape, the number of classes, ``form``, ``seed``
    and ``dtype``, and take everything else (``channels``, ``activation``, ...) from
    ``options``, an inline table passed to the builder as keyword arguments.
    """

    kind: str = "dense"
    hidden: list[int] = field(default_factory=lambda: [256])
    activation: str = "hard_sigmoid"
    form: str = "primitive"
    alpha: float = 0.0
    init_scale: float = 1.0
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CostConfig:
    """The nudge cost: ``squared_error`` on the output layer, or ``cross_entropy``; with
    ``readout = true`` a trainable softmax read-out of the last state layer (Laborieux et al.
    2021), so the last state layer is a hidden layer."""

    name: str = "squared_error"
    readout: bool = False


@dataclass
class TauConfig:
    """Per-neuron time constants (``constant``, ``uniform``, ``lognormal``, ``gamma``) with mean
    and coefficient of variation ``spread``; ``per_layer`` lists one spread per state layer
    (overriding ``spread``).

    ``normalize`` says which average the heterogeneous draw keeps equal to the homogeneous
    baseline τ ≡ ``mean`` (THEORY §2.2): ``"tau"`` the distribution's mean time constant E[τ]
    (the draw as it comes), ``"rate"`` each layer's mean rate, mean_i(1/τ_i) = 1/``mean``
    (the drawn τ of the layer rescaled by mean_i(1/τ_i)·``mean``), so the mean unclipped step
    dt/τ_i of the discrete map is that of the baseline and heterogeneity is not confounded
    with a change of average speed.
    """

    distribution: str = "constant"
    mean: float = 1.0
    spread: float = 0.0
    seed: int = 0
    per_layer: list[float] = field(default_factory=list)
    normalize: str = "tau"


@dataclass
class RelaxTrainConfig:
    """Relaxation of the phases.

    With ``check_every = 0`` (the default) the phases run fixed budgets of ``free_steps`` and
    ``nudged_steps`` (the literature's T1/T2) with no host synchronisation, and ``tol`` only
    decides which samples are *reported* as not converged. With ``check_every = k > 0`` each
    sample stops once its residual is ≤ ``tol`` (checked every k steps) and the step counts are
    caps. ``eval_steps`` (0: ``free_steps``) is the free phase at evaluation. ``dt`` (0: the
    method's default) is the step of ``exp_euler`` and torchdiffeq's fixed-grid methods; for
    ``fixed_point`` a positive ``dt`` gives every neuron its own step h_i = min(1,
    damping·dt/τ_i) (0 keeps the τ-free map with h = damping), and the ``bptt`` baseline
    unrolls the same steps. ``method = "anderson"`` iterates that same map with Anderson
    acceleration over the last ``memory`` iterates (:mod:`ctep.solve.anderson`).
    """

    method: str = "fixed_point"
    free_steps: int = 30
    nudged_steps: int = 10
    tol: float = 1e-3
    check_every: int = 0
    damping: float = 1.0
    dt: float = 0.0
    eval_steps: int = 0
    memory: int = 5


@dataclass
class EstimatorConfig:
    """An estimator of :mod:`ctep.estimators` by name, with its options."""

    name: str = "centered"
    beta: float = 0.2
    random_sign: bool = False
    points: int = 4
    temperature: float = 0.0
    on_failure: str = "mask"
    seed: int = 0


@dataclass
class OptimizerConfig:
    """``sgd`` (momentum, Nesterov) or ``adam``. ``lr`` is one rate or one per layer (the
    layers of the network in order, then the read-out if there is one)."""

    name: str = "sgd"
    lr: float | list[float] = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per epoch: ``none``, ``cosine`` (to ``eta_min`` over the run) or
    ``step`` (× ``gamma`` every ``step_size`` epochs), after ``warmup_epochs`` of linear
    warm-up."""

    name: str = "none"
    step_size: int = 10
    gamma: float = 0.1
    eta_min: float = 0.0
    warmup_epochs: int = 0


@dataclass
class TrainLoopConfig:
    """``mode``: ``ep`` (an estimator), ``bp`` (the same architecture as a feedforward net,
    backprop) or ``bptt`` (backprop through ``bptt_steps`` steps of the relaxation).
    ``checkpoint_every`` (batches, 0: end of epoch only) also writes mid-epoch checkpoints."""

    mode: str = "ep"
    epochs: int = 1
    seed: int = 0
    checkpoint_every: int = 0
    progress: bool = True
    bptt_steps: int = 0
    log_every: int = 50


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "cost": CostConfig,
    "tau": TauConfig,
    "relax": RelaxTrainConfig,
    "estimator": EstimatorConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "train": TrainLoopConfig,
}


@dataclass
class TrainConfig:
    """A whole training run (one attribute per TOML section)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    tau: TauConfig = field(default_factory=TauConfig)
    relax: RelaxTrainConfig = field(default_factory=RelaxTrainConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainConfig:
        """Build and validate a config from nested mappings (unknown names are errors)."""
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; known: {list(SECTIONS)}")
        parts = {}
        for name, section_cls in SECTIONS.items():
            values = raw.get(name, {})
            if not isinstance(values, Mapping):
                raise ValueError(f"config section [{name}] must be a table")
            known = {f.name: f for f in fields(section_cls)}
            bad = sorted(set(values) - set(known))
            if bad:
                raise ValueError(f"unknown key(s) {bad} in [{name}]; known: {sorted(known)}")
            default = section_cls()
            kwargs = {k: _coerce(f"{name}.{k}", v, getattr(default, k))
                      for k, v in values.items()}
            parts[name] = section_cls(**kwargs)
        cfg = cls(**parts)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent value."""
        d, m, r, e, o, t = (self.data, self.model, self.relax, self.estimator, self.optimizer,
                            self.train)
        _require(d.batch_size >= 1, "data.batch_size must be ≥ 1")
        _require(d.test_batch_size >= 1, "data.test_batch_size must be ≥ 1")
        _require(d.train_subset >= 0 and d.test_subset >= 0, "data subsets must be ≥ 0")
        _require(0 <= d.val_fraction < 1, "data.val_fraction must lie in [0, 1)")
        for key, least in (("synthetic_features", 1), ("synthetic_classes", 2),
                           ("synthetic_train", 1), ("synthetic_test", 1)):
            value = getattr(d, key)
            _require(value >= least, f"data.{key} must be ≥ {least}, got {value!r}")
        _require(all(isinstance(h, int) and not isinstance(h, bool) and h >= 1
                     for h in m.hidden),
                 f"model.hidden must list integer widths ≥ 1, got {m.hidden!r}")
        _require(m.dtype in DTYPE_NAMES, f"model.dtype must be one of {sorted(DTYPE_NAMES)}")
        _require(m.init_scale > 0 and math.isfinite(m.init_scale), "model.init_scale must be > 0")
        _require(m.alpha >= 0 and math.isfinite(m.alpha), "model.alpha must be ≥ 0 (0: the "
                 "activation's default)")
        _require(self.tau.mean > 0 and math.isfinite(self.tau.mean), "tau.mean must be > 0")
        _require(all(isinstance(v, (int, float)) and not isinstance(v, bool)
                     and math.isfinite(v) and v >= 0
                     for v in (self.tau.spread, *self.tau.per_layer)),
                 f"tau.spread and tau.per_layer must be numbers ≥ 0, got spread "
                 f"{self.tau.spread!r} and per_layer {self.tau.per_layer!r}")
        _require(0 < r.damping <= 1, "relax.damping must lie in (0, 1]")
        _require(r.free_steps >= 1 and r.nudged_steps >= 1,
                 "relax.free_steps and relax.nudged_steps must be ≥ 1")
        _require(r.tol >= 0 and math.isfinite(r.tol),
                 "relax.tol must be finite and ≥ 0 (as for RelaxConfig; 0: no sample stops "
                 "before its budget)")
        _require(r.check_every >= 0 and r.eval_steps >= 0,
                 "relax.check_every and relax.eval_steps must be ≥ 0")
        _require(r.dt >= 0 and math.isfinite(r.dt), "relax.dt must be ≥ 0 (0: the method's "
                 "default)")
        _require(r.memory >= 1, "relax.memory (anderson's history length) must be ≥ 1")
        _require(self.tau.normalize in TAU_NORMALIZATIONS, f"tau.normalize must be one of "
                 f"{list(TAU_NORMALIZATIONS)}, got {self.tau.normalize!r}")
        _require(e.beta > 0 and math.isfinite(e.beta), "estimator.beta must be > 0")
        _require(e.points >= 1, "estimator.points must be ≥ 1")
        _require(e.temperature >= 0 and math.isfinite(e.temperature),
                 "estimator.temperature must be ≥ 0 (0: the estimator's default)")
        lrs = o.lr if isinstance(o.lr, list) else [o.lr]
        _require(len(lrs) > 0 and all(x >= 0 and math.isfinite(x) for x in lrs),
                 "optimizer.lr must be ≥ 0 (one value or one per layer)")
        _require(o.name in ("sgd", "adam"), f"optimizer.name must be sgd or adam, got {o.name!r}")
        _require(0 <= o.momentum < 1, "optimizer.momentum must lie in [0, 1)")
        _require(not o.nesterov or o.momentum > 0, "optimizer.nesterov needs momentum > 0")
        _require(o.weight_decay >= 0 and math.isfinite(o.weight_decay),
                 "optimizer.weight_decay must be ≥ 0")
        _require(len(o.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1
                                           for b in o.betas),
                 f"optimizer.betas must be two numbers in [0, 1), got {o.betas!r}")
        _require(o.eps > 0, "optimizer.eps must be > 0")
        s = self.schedule
        _require(s.name in ("none", "cosine", "step"),
                 f"schedule.name must be none, cosine or step, got {s.name!r}")
        _require(s.step_size >= 1, "schedule.step_size must be ≥ 1")
        _require(s.gamma > 0 and math.isfinite(s.gamma), "schedule.gamma must be > 0")
        _require(0 <= s.eta_min <= 1, "schedule.eta_min (a fraction of each rate) must lie in "
                 "[0, 1]")
        _require(s.warmup_epochs >= 0, "schedule.warmup_epochs must be ≥ 0")
        _require(t.mode in ("ep", "bp", "bptt"), f"train.mode must be ep, bp or bptt, "
                 f"got {t.mode!r}")
        _require(t.mode != "bptt" or r.method == "fixed_point",
                 f"train.mode = \"bptt\" unrolls the fixed_point map (and evaluates with it); "
                 f"relax.method must be \"fixed_point\", got {r.method!r}")
        _require(t.epochs >= 1, "train.epochs must be ≥ 1")
        _require(t.checkpoint_every >= 0, "train.checkpoint_every must be ≥ 0")
        _require(t.bptt_steps >= 0, "train.bptt_steps must be ≥ 0 (0: relax.free_steps)")
        _require(t.log_every >= 0, "train.log_every must be ≥ 0")

    def to_toml(self) -> str:
        """The resolved config as TOML (every key, defaults included)."""
        lines = []
        for name, values in self.to_dict().items():
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
            lines.append("")
        return "\n".join(lines)


DTYPE_NAMES = ("float32", "float64", "bfloat16")
#: what a heterogeneous τ draw keeps equal to the homogeneous baseline (see TauConfig)
TAU_NORMALIZATIONS = ("tau", "rate")

#: keys added to the config after runs had been saved, each with the value that reproduces a
#: run saved without it (the behaviour before the key existed): ``model.options`` (none),
#: ``tau.normalize`` (τ's mean kept), ``relax.memory`` (used by ``anderson`` only)
ADDED_KEYS: dict[str, Any] = {"model.options": {}, "tau.normalize": "tau", "relax.memory": 5}


def with_added_keys(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (sections of key → value, as :meth:`TrainConfig.to_dict` wrote it) with
    each key of :data:`ADDED_KEYS` that it lacks set to that key's value, so that a run saved
    before the key existed compares equal to the same config today (resume, sweep folders)."""
    out = {name: dict(v) if isinstance(v, Mapping) else v for name, v in saved.items()}
    for dotted, value in ADDED_KEYS.items():
        section, key = dotted.split(".")
        if isinstance(out.get(section), dict) and key not in out[section]:
            out[section][key] = copy.deepcopy(value)
    return out


def load_config(path: str | pathlib.Path | None = None,
                overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a TOML file (or start from the defaults) and apply ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc
    for item in overrides:
        apply_override(raw, item)
    return TrainConfig.from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``raw[section][key]`` from ``"section.key=value"`` (value parsed as TOML)."""
    if "=" not in item:
        raise ValueError(f"--set expects section.key=value, got {item!r}")
    dotted, text = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--set expects section.key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    raw.setdefault(parts[0], {})[parts[1]] = value


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _coerce(where: str, value: Any, default: Any) -> Any:
    """Check a value's type against the default's (ints may stand for floats)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and not isinstance(default, bool):
        if isinstance(value, list) and where == "optimizer.lr":
            return [_coerce(where, v, 0.0) for v in value]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a table, got {value!r}")
        return dict(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return list(value)
    return value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if math.isnan(v):
            return "nan"
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")
