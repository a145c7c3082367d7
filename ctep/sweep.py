"""Grid sweeps of training runs, collected into one xarray Dataset, resumable.

A sweep is a base training config and a grid: an ordered list of axes ``key = [v1, v2, ...]``
where ``key`` is a config key ``section.key`` or ``seed`` (shorthand that sets ``model.seed``,
``tau.seed``, ``data.seed``, ``estimator.seed`` and ``train.seed`` together). Every point of the
Cartesian product is one :class:`ctep.train.Trainer` run in ``DIR/runs/<run id>``. The folder
holds::

    DIR/sweep.json        the base config and the grid (a rerun must match them); written
                          once the first run's data has loaded
    DIR/runs/<id>/        the run folder (config.toml, metrics.csv/.nc, checkpoint.pt)
    DIR/runs/<id>/result.json   written when the run has ended (completed or diverged)
    DIR/results.nc        every finished run, one dimension per grid axis (+ ``epoch``)
    DIR/.sweep.lock       while a sweep runs there: its pid and host (see below)

Rerunning the same sweep skips runs with a ``result.json``, resumes runs with a checkpoint and
no result, and starts the rest; ``results.nc`` is rewritten atomically after every run, so a
sweep stopped at any point loses at most the run in progress after its last checkpoint.

One sweep at a time per folder: :func:`run_sweep` holds ``DIR/.sweep.lock`` (created with
``O_CREAT | O_EXCL``, :func:`ctep._lock.folder_lock`) while it runs, and a second sweep started
there meanwhile stops with a :class:`~ctep._lock.FolderLockedError` naming the folder and the
running sweep's pid and host. The file is removed when the sweep returns or raises. A sweep
killed outright leaves it behind: the next sweep on the same host takes it over when that pid
no longer exists; from another host (or after the pid was reused), delete it by hand once the
old sweep is surely gone.

Outcomes of a run (*diverged* is recorded in ``result.json`` when the run ends; *collapsed*
and *trained* are computed from its per-epoch rows when the Dataset is assembled, so other
thresholds only need the Dataset rewritten):

* **diverged**: the parameters became non-finite (:class:`~ctep.train.TrainingDiverged`), a
  relaxation diverged with ``estimator.on_failure = "raise"``
  (:class:`~ctep.solve.RelaxationError`), or the training loss of an epoch is not finite;
* **collapsed** (not diverged): the final test accuracy is at most chance + ``chance_margin``
  (chance = 1/classes), or the test accuracy fell by more than ``collapse_drop`` between two
  consecutive epochs (a run that never left chance counts as collapsed too);
* **trained**: neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import pathlib
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ._io import atomic_write_text
from ._lock import folder_lock
from .record import save_dataset
from .solve import RelaxationError, get_method
from .solve.map_step import per_neuron_steps
from .train import TrainConfig, Trainer, TrainingDiverged
from .train.batches import load_train_data
from .train.checkpoint import CHECKPOINT_NAME
from .train.config import SECTIONS, with_added_keys

SWEEP_FORMAT = 1
SPEC_NAME = "sweep.json"
LOCK_NAME = ".sweep.lock"
RESULT_NAME = "result.json"
RESULTS_NAME = "results.nc"
#: the config keys the ``seed`` shorthand sets
SEED_KEYS = ("model.seed", "tau.seed", "data.seed", "estimator.seed", "train.seed")
#: base-config keys a rerun may change (they do not change results: resume is exact wherever
#: the checkpoints fall)
COSMETIC_KEYS = ("train.progress", "train.log_every", "train.checkpoint_every")
#: per-epoch columns of the run metrics copied into the Dataset
EPOCH_VARIABLES = ("loss", "train_acc", "test_acc", "test_loss", "nonconverged", "nfe",
                   "residual", "seconds")


class SweepMismatchError(ValueError):
    """The sweep folder was made with another grid or base config."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Thresholds that classify a finished run (see the module docstring)."""

    chance_margin: float = 0.05
    collapse_drop: float = 0.2

    def __post_init__(self) -> None:
        if not (0 <= self.chance_margin < 1 and 0 < self.collapse_drop <= 1):
            raise ValueError("chance_margin must lie in [0, 1) and collapse_drop in (0, 1]")


Grid = list[tuple[str, list[Any]]]


def parse_grid(items: Iterable[str]) -> Grid:
    """Axes from ``"key=[v1, v2, ...]"`` strings (values parsed as a TOML array), in order."""
    grid: Grid = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid expects key=[v1, v2, ...], got {item!r}")
        key, text = (part.strip() for part in item.split("=", 1))
        try:
            values = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--grid {key}: {text!r} is not a TOML array ({exc})") from exc
        if not isinstance(values, list):
            raise ValueError(f"--grid {key}: expected a list of values, got {text!r}")
        grid.append((key, values))
    check_grid(grid)
    return grid


def check_grid(grid: Grid) -> None:
    """Raise ``ValueError`` for an empty grid, unknown or repeated keys, or empty or repeated
    values."""
    if not grid:
        raise ValueError("a sweep needs at least one --grid axis")
    seen: set[str] = set()
    for key, values in grid:
        if key != "seed":
            parts = key.split(".")
            if len(parts) != 2 or parts[0] not in SECTIONS:
                raise ValueError(f"grid key {key!r} is not 'seed' or section.key with a section "
                                 f"in {list(SECTIONS)}")
            known = {f.name for f in dataclasses.fields(SECTIONS[parts[0]])}
            if parts[1] not in known:
                raise ValueError(f"grid key {key!r}: [{parts[0]}] has no key {parts[1]!r}; "
                                 f"known: {sorted(known)}")
        if key in seen:
            raise ValueError(f"grid key {key!r} appears twice")
        seen.add(key)
        if not values:
            raise ValueError(f"grid key {key!r} has no values")
        canon = [_value_key(v) for v in values]
        if len(set(canon)) != len(canon):
            raise ValueError(f"grid key {key!r} repeats a value: {values}")
    if "seed" in seen and seen & set(SEED_KEYS):
        raise ValueError(f"grid key 'seed' sets {list(SEED_KEYS)}; do not grid those as well")


def expand_grid(grid: Grid) -> list[dict[str, Any]]:
    """Every point of the grid (the Cartesian product, last axis fastest)."""
    check_grid(grid)
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(values for _, values in grid))]


def run_id(point: Mapping[str, Any]) -> str:
    """A stable folder name for a grid point: readable ``key-value`` parts and a short hash of
    the point (so distinct points never share a folder)."""
    readable = "__".join(f"{k}-{_canonical(v)}" for k, v in point.items())
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", readable)[:120]
    digest = hashlib.sha1(_canonical(dict(point)).encode()).hexdigest()[:8]
    return f"{readable}__{digest}"


def point_config(base: TrainConfig, point: Mapping[str, Any]) -> TrainConfig:
    """The base config with the point's values set (``seed`` sets every key of SEED_KEYS)."""
    raw = base.to_dict()
    for key, value in point.items():
        for dotted in (SEED_KEYS if key == "seed" else (key,)):
            section, name = dotted.split(".")
            raw[section][name] = value
    try:
        return TrainConfig.from_dict(raw)
    except ValueError as exc:
        raise ValueError(f"grid point {dict(point)}: {exc}") from exc


@dataclasses.dataclass
class SweepReport:
    """What one call of :func:`run_sweep` did."""

    total: int
    skipped: int = 0
    resumed: int = 0
    started: int = 0
    diverged: int = 0
    stopped_early: bool = False


def run_sweep(base: TrainConfig, grid: Grid, out: str | pathlib.Path, *,
              outcome: Outcome | None = None, max_runs: int | None = None,
              stop_after_batches: int | None = None,
              log: Callable[[str], None] | None = None) -> SweepReport:
    """Run (or continue) the sweep of ``base`` over ``grid`` in folder ``out``.

    Args:
        base: the base training config (every grid point starts from it).
        grid: ordered axes from :func:`parse_grid`.
        out: the sweep folder; if it exists it must hold the same sweep.
        outcome: thresholds of the diverged/collapsed classification.
        max_runs: stop after this many runs have been started or resumed in this call.
        stop_after_batches: stop the first run this call starts or resumes after that many
            batches, as if killed (no result, no final checkpoint): for tests of resume.
        log: called with one line per run (e.g. ``print``).

    Returns:
        A :class:`SweepReport`; ``results.nc`` holds the results.
    """
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"max_runs must be ≥ 1, got {max_runs}")
    outcome = outcome or Outcome()
    out = pathlib.Path(out)
    points = expand_grid(grid)
    configs = [point_config(base, p) for p in points]  # every point validated before any run
    ids = [run_id(p) for p in points]
    spec = _sweep_spec(base, grid)
    if out.exists() and not out.is_dir():
        raise SweepMismatchError(f"{out} exists and is not a folder")
    with folder_lock(out, LOCK_NAME, "sweep"):  # one sweep at a time in a folder
        unclaimed = _check_folder(out, spec)  # sweep.json is written once the first data loads
        report = SweepReport(total=len(points))
        say = log or (lambda _line: None)
        # runs that share their data settings run next to each other: the data is loaded once
        order = sorted(range(len(points)), key=lambda i: _data_key(configs[i]))
        cache: tuple[str, Any] | None = None
        for n, i in enumerate(order, 1):
            folder = out / "runs" / ids[i]
            if (folder / RESULT_NAME).exists():
                report.skipped += 1
                continue
            if max_runs is not None and report.started + report.resumed >= max_runs:
                report.stopped_early = True
                break
            cfg = configs[i]
            key = _data_key(cfg)
            if cache is None or cache[0] != key:
                cache = None  # free the previous splits first
                cache = (key, load_train_data(cfg.data, cfg.model))
            if unclaimed:  # a first call that cannot load its data leaves no folder behind
                atomic_write_text(out / SPEC_NAME, json.dumps(spec, indent=1, allow_nan=True))
                unclaimed = False
            resume = (folder / CHECKPOINT_NAME).exists()
            report.resumed += resume
            report.started += not resume
            stop = stop_after_batches if report.started + report.resumed == 1 else None
            result = _run_point(cfg, points[i], ids[i], folder, resume, cache[1], stop)
            if result is None:  # stopped as if killed
                report.stopped_early = True
                break
            report.diverged += result["status"] == "diverged"
            write_results(out, outcome)
            last = result["history"][-1]["test_acc"] if result["history"] else math.nan
            say(f"[{n}/{len(points)}] {ids[i]}: {result['status']}, test_acc {last:.4f}, "
                f"{result['seconds']:.1f} s")
        write_results(out, outcome)
        return report


def _run_point(cfg: TrainConfig, point: dict[str, Any], rid: str, folder: pathlib.Path,
               resume: bool, data, stop: int | None) -> dict[str, Any] | None:
    """Train one grid point; write and return its result (None if stopped early)."""
    start = time.perf_counter()
    trainer = Trainer(cfg, folder, resume=resume, data=data)
    done_before = sum(r["seconds"] for r in trainer.history)
    status, message = "completed", ""
    try:
        history = trainer.run(stop_after_batches=stop)
        if stop is not None and trainer.epoch < cfg.train.epochs:
            return None
    except (TrainingDiverged, RelaxationError) as exc:  # a relaxation error: on_failure="raise"
        status, message = "diverged", f"{type(exc).__name__}: {exc}"
        history = trainer.history
    finally:
        trainer.dist.close()
    seconds = sum(r["seconds"] for r in history)
    if status == "diverged":  # the partial epoch since the last completed one
        seconds += max(time.perf_counter() - start - (seconds - done_before), 0.0)
    if any(not math.isfinite(r["loss"]) for r in history):
        status = "diverged"
        message = message or "a training loss is not finite"
    result = {"id": rid, "point": point, "status": status, "message": message,
              "history": [dict(r) for r in history], "seconds": seconds,
              "n_classes": data.n_classes, "epochs": cfg.train.epochs,
              **_tau_summary(trainer, cfg)}
    atomic_write_text(folder / RESULT_NAME, json.dumps(result, indent=1, allow_nan=True))
    return result


def _tau_summary(trainer: Trainer, cfg: TrainConfig) -> dict[str, float]:
    """τmax/τmin of the run's draw, and the mean over neurons of the step the discrete map
    takes, plain or Anderson-accelerated (:func:`~ctep.solve.map_step.per_neuron_steps`,
    h_i = min(1, damping·dt/τ_i), with ``relax.dt``; else the τ-free damping; NaN for other
    methods)."""
    import torch

    tau = tuple(t.detach() for t in trainer.field.tau())
    taus = torch.cat([t.reshape(-1).double().cpu() for t in tau])
    r = cfg.relax
    is_map = get_method(r.method).family == "map"
    if is_map and r.dt > 0:  # the steps the run took, in its dtype
        h = per_neuron_steps(tau, r.dt, r.damping)
        step = float(torch.cat([x.reshape(-1).double().cpu() for x in h]).mean())
    elif is_map:
        step = r.damping
    else:
        step = math.nan
    return {"tau_ratio": float(taus.max() / taus.min()), "mean_step": step}


def _sweep_spec(base: TrainConfig, grid: Grid) -> dict[str, Any]:
    """What ``sweep.json`` holds: the format, the base config (less COSMETIC_KEYS), the grid."""
    return {"format": SWEEP_FORMAT, "base": _comparable(base.to_dict()),
            "grid": [[k, list(v)] for k, v in grid]}


def _check_folder(out: pathlib.Path, spec: Mapping[str, Any]) -> bool:
    """Whether the folder ``out`` (which exists: it holds this sweep's lock) is new
    (``sweep.json`` still to be written); raise :class:`SweepMismatchError` if it holds another
    sweep, or files but no ``sweep.json``."""
    path = out / SPEC_NAME
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SweepMismatchError(f"{path} is not valid JSON ({exc})") from exc
        if old.get("format") != SWEEP_FORMAT:
            raise SweepMismatchError(f"{path} has format {old.get('format')}, expected "
                                     f"{SWEEP_FORMAT}")
        if _canonical(old.get("grid")) != _canonical(spec["grid"]):
            raise SweepMismatchError(
                f"{out} holds a sweep over another grid ({_grid_text(old.get('grid', []))}; "
                f"asked for {_grid_text(spec['grid'])}); use another --out folder")
        # a sweep written before a config key existed ran with that key's ADDED_KEYS value;
        # one written before a key became cosmetic still holds it
        differ = _differences(_comparable(with_added_keys(old.get("base", {}))), spec["base"])
        if differ:
            raise SweepMismatchError(f"{out} holds a sweep with another base config: "
                                     f"{', '.join(differ)} differ; use another --out folder")
        return False
    if any(not p.name.startswith(LOCK_NAME) for p in out.iterdir()):  # lock, its guard
        raise SweepMismatchError(f"{out} exists and holds no {SPEC_NAME}: not a sweep folder")
    return True


def _comparable(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {s: dict(v) for s, v in raw.items()}
    for dotted in COSMETIC_KEYS:
        section, name = dotted.split(".")
        out.get(section, {}).pop(name, None)
    return json.loads(json.dumps(out, allow_nan=True))


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for name in sorted(set(a) | set(b)):
            if _canonical(a.get(name)) != _canonical(b.get(name)):
                keys.append(f"{section}.{name} ({a.get(name)!r} then, {b.get(name)!r} now)")
    return keys


def _grid_text(grid) -> str:
    return ", ".join(f"{k}={v}" for k, v in grid)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _value_key(value: Any) -> Any:
    """What makes two grid values the same point: numbers by value (1 and 1.0 give the same
    config), anything else (booleans included) by its canonical JSON."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return _canonical(value)


def _data_key(cfg: TrainConfig) -> str:
    return _canonical([dataclasses.asdict(cfg.data), cfg.model.dtype, cfg.model.kind])


# ---------------------------------------------------------------------- the results Dataset

def dim_name(key: str) -> str:
    """The Dataset dimension of a grid key: ``tau.spread`` → ``tau_spread``."""
    return key.replace(".", "_")


def read_results(out: str | pathlib.Path) -> list[dict[str, Any]]:
    """The ``result.json`` of every finished run in the sweep folder."""
    runs = pathlib.Path(out) / "runs"
    if not runs.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(runs.glob(f"*/{RESULT_NAME}"))]


def results_dataset(grid: Grid, results: Sequence[Mapping[str, Any]],
                    outcome: Outcome | None = None, attrs: Mapping[str, Any] | None = None
                    ) -> xr.Dataset:
    """One Dataset with a dimension per grid axis (+ ``epoch`` for per-epoch variables).

    Grid points without a result have ``finished = 0`` and NaN everywhere else. ``epoch`` runs
    to the longest ``train.epochs`` among the finished runs; a shorter run (another
    ``train.epochs`` on the grid, or one that diverged) is NaN after its last epoch. Variables:
    ``final_test_acc`` (last epoch; NaN for diverged runs), ``best_test_acc`` (best completed
    epoch), ``epochs_done``, ``diverged``, ``collapsed``, ``trained`` (0/1, −1 unfinished),
    ``nonconverged`` (fraction of training samples whose free phase had not converged in the
    last epoch), ``seconds``, ``tau_ratio``, ``mean_step``, and per epoch ``loss``,
    ``train_acc``, ``test_acc``, ``test_loss``, ``nonconverged_epoch``, ``nfe``, ``residual``,
    ``seconds_epoch``.
    """
    outcome = outcome or Outcome()
    check_grid(grid)
    dims = [dim_name(k) for k, _ in grid]
    shape = [len(v) for _, v in grid]
    index = {_canonical(p): np.unravel_index(i, shape)
             for i, p in enumerate(expand_grid(grid))}
    n_epochs = max([int(r.get("epochs", 0)) for r in results] + [1])
    full = np.full(shape, np.nan)
    per_epoch = {k: np.full([*shape, n_epochs], np.nan) for k in EPOCH_VARIABLES}
    scalars = {k: full.copy() for k in ("final_test_acc", "best_test_acc", "epochs_done",
                                         "nonconverged", "seconds", "tau_ratio", "mean_step")}
    flags = {k: np.full(shape, -1, dtype=np.int8) for k in ("diverged", "collapsed", "trained")}
    finished = np.zeros(shape, dtype=np.int8)
    for r in results:
        at = index.get(_canonical(r["point"]))
        if at is None:
            continue  # a result of a point no longer on the grid
        hist = r["history"]
        for e, row in enumerate(hist[:n_epochs]):
            for k in EPOCH_VARIABLES:
                per_epoch[k][(*at, e)] = _num(row.get(k))
        diverged = r["status"] == "diverged"
        accs = [_num(row.get("test_acc")) for row in hist]
        collapsed = (not diverged) and is_collapsed(accs, int(r["n_classes"]), outcome)
        finished[at] = 1
        flags["diverged"][at] = diverged
        flags["collapsed"][at] = collapsed
        flags["trained"][at] = not (diverged or collapsed)
        scalars["final_test_acc"][at] = math.nan if diverged or not accs else accs[-1]
        scalars["best_test_acc"][at] = max(accs) if accs else math.nan
        scalars["epochs_done"][at] = len(hist)
        scalars["nonconverged"][at] = _num(hist[-1].get("nonconverged")) if hist else math.nan
        scalars["seconds"][at] = float(r["seconds"])
        scalars["tau_ratio"][at] = _num(r.get("tau_ratio"))
        scalars["mean_step"][at] = _num(r.get("mean_step"))
    data: dict[str, tuple] = {k: (dims, v) for k, v in scalars.items()}
    data.update({k: (dims, v) for k, v in flags.items()})
    data["finished"] = (dims, finished)
    renamed = {"nonconverged": "nonconverged_epoch", "seconds": "seconds_epoch"}
    data.update({renamed.get(k, k): ([*dims, "epoch"], v) for k, v in per_epoch.items()})
    coords: dict[str, Any] = {dim_name(k): _coordinate(v) for k, v in grid}
    coords["epoch"] = np.arange(1, n_epochs + 1)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update({"grid": json.dumps([[k, v] for k, v in grid]),
                     "chance_margin": outcome.chance_margin,
                     "collapse_drop": outcome.collapse_drop,
                     "seed_keys": ", ".join(SEED_KEYS), **dict(attrs or {})})
    return ds


def is_collapsed(test_accs: Sequence[float], n_classes: int, outcome: Outcome) -> bool:
    """Final accuracy ≤ chance + margin, or a drop of more than ``collapse_drop`` between two
    consecutive epochs (NaN accuracies count as 0)."""
    accs = [a if math.isfinite(a) else 0.0 for a in test_accs]
    if not accs:
        return False
    if accs[-1] <= 1.0 / n_classes + outcome.chance_margin:
        return True
    return any(b < a - outcome.collapse_drop for a, b in itertools.pairwise(accs))


def write_results(out: str | pathlib.Path, outcome: Outcome | None = None) -> xr.Dataset:
    """Assemble ``results.nc`` from the sweep folder's results and write it atomically."""
    out = pathlib.Path(out)
    spec = json.loads((out / SPEC_NAME).read_text())
    grid = [(k, v) for k, v in spec["grid"]]
    ds = results_dataset(grid, read_results(out), outcome,
                         {"base_config": json.dumps(spec["base"])})
    save_dataset(ds, out / RESULTS_NAME)  # temporary file, fsync, rename
    return ds


def _coordinate(values: list[Any]) -> np.ndarray:
    """Numbers stay numbers; anything else (lists, strings, booleans) becomes its TOML-like
    text."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.float64 if any(isinstance(v, float) for v in values)
                        else np.int64)
    return np.array([v if isinstance(v, str) else json.dumps(v) for v in values], dtype=object)


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    return float(v)


__all__ = ["Outcome", "SweepMismatchError", "SweepReport", "check_grid", "dim_name",
           "expand_grid", "is_collapsed", "parse_grid", "point_config", "read_results",
           "results_dataset", "run_id", "run_sweep", "write_results"]
