"""``ctep dynamics``: relax a random, configured or trained network on a few samples and write
the recorded path (``trajectories.nc``), its diagnostics (``diagnostics.json``) and figures.

Heavy packages (xarray, matplotlib, torchvision) are imported inside :func:`run` only.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

from ._cli_args import int_list

#: options of the random network, refused together with --config / --checkpoint
RANDOM_NET_OPTIONS = ("sizes", "activation", "form", "tau", "tau_mean", "tau_spread", "dtype")
RANDOM_NET_DEFAULTS = {"sizes": (20, 32, 16, 4), "activation": "sigmoid", "form": "primitive",
                       "tau": "lognormal", "tau_mean": 1.0, "tau_spread": 1.0,
                       "dtype": "float64"}


def parse_times(text: str) -> tuple[float, ...]:
    """``"START:STOP:NUM"`` (NUM evenly spaced times, both ends included) or a comma list."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            n = int(num)
            if n < 1:
                raise ValueError
            a, b = float(start), float(stop)
            return tuple(a + (b - a) * k / max(n - 1, 1) for k in range(n))
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--times expects START:STOP:NUM or t1,t2,..., got "
                                         f"{text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=pathlib.Path, default=None,
                     help="training config (TOML): its network, untrained, on samples of its "
                          "dataset's test split")
    src.add_argument("--checkpoint", type=pathlib.Path, default=None,
                     help="a ctep train run folder or its checkpoint.pt: the trained network "
                          "on samples of its dataset's test split")
    p.add_argument("--out", type=pathlib.Path, required=True,
                   help="folder for trajectories.nc, diagnostics.json and the PNG figures "
                        "(required: nothing is written to a default place)")
    p.add_argument("--samples", type=int, default=6, help="samples to relax (default "
                   "%(default)s)")
    p.add_argument("--method", default=None, help="relaxation method (default: exp_euler for "
                   "the random network, the config's relax.method otherwise)")
    p.add_argument("--tol", type=float, default=None, help="residual tolerance (default 1e-6, "
                   "or the config's relax.tol)")
    p.add_argument("--dt", type=float, default=None, help="step of fixed-step methods")
    p.add_argument("--max-steps", type=int, default=2000,
                   help="iteration cap (loops) or steps per check window (default %(default)s)")
    p.add_argument("--times", type=parse_times, default=None, metavar="SPEC",
                   help="record on this time grid (START:STOP:NUM or t1,t2,...) instead of the "
                        "solver's check times")
    p.add_argument("--beta", type=float, default=0.0, help="nudge β (default 0: free phase)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random network and inputs, or of the sample choice")
    p.add_argument("--data-root", default=None, help="torchvision data root (overrides the "
                   "config's data.root; default $CTEP_DATA or ./data)")
    p.add_argument("--max-jacobian", type=int, default=2048,
                   help="skip the Jacobian spectrum above this many neurons (default "
                        "%(default)s)")
    g = p.add_argument_group("random network (no --config / --checkpoint)")
    d = RANDOM_NET_DEFAULTS
    g.add_argument("--sizes", type=int_list, default=None,
                   help=f"layer widths, input first (default {','.join(map(str, d['sizes']))})")
    g.add_argument("--activation", default=None, help=f"default {d['activation']}")
    g.add_argument("--form", default=None, choices=["primitive", "classical"],
                   help=f"default {d['form']}")
    g.add_argument("--tau", default=None, help=f"τ distribution (default {d['tau']})")
    g.add_argument("--tau-mean", type=float, default=None, help=f"default {d['tau_mean']}")
    g.add_argument("--tau-spread", type=float, default=None,
                   help=f"coefficient of variation of τ (default {d['tau_spread']})")
    g.add_argument("--dtype", default=None, choices=["float64", "float32"],
                   help=f"default {d['dtype']}")


def run(args: argparse.Namespace) -> int:
    from .data import DatasetNotFoundError
    from .solve import RelaxationError
    from .train import CheckpointError

    try:
        _check_args(args)
        field, x, y, source, relax_cfg = _problem(args)
        written, summary = _record_and_write(args, field, x, y, source, relax_cfg)
    except (ValueError, FileNotFoundError, CheckpointError, RelaxationError) as exc:
        kind = "data not found" if isinstance(exc, DatasetNotFoundError) else "error"
        print(f"ctep dynamics: {kind}: {exc}", file=sys.stderr)
        return 2
    _print_summary(summary)
    for path in written:
        print(f"wrote {path}")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.samples < 1:
        raise ValueError(f"--samples must be ≥ 1, got {args.samples}")
    if args.tol is not None and not (args.tol >= 0 and math.isfinite(args.tol)):
        raise ValueError(f"--tol must be finite and ≥ 0, got {args.tol}")
    if args.max_steps < 1:
        raise ValueError(f"--max-steps must be ≥ 1, got {args.max_steps}")
    if args.max_jacobian < 0:
        raise ValueError(f"--max-jacobian must be ≥ 0, got {args.max_jacobian}")
    if args.dt is not None and not (args.dt > 0 and math.isfinite(args.dt)):
        raise ValueError(f"--dt must be positive and finite, got {args.dt}")
    if not math.isfinite(args.beta):
        raise ValueError(f"--beta must be finite, got {args.beta}")
    if args.method is not None:
        from .solve import available_methods

        if args.method not in available_methods():
            raise ValueError(f"unknown --method {args.method!r}; known: "
                             f"{', '.join(available_methods())}")
    if args.config is not None or args.checkpoint is not None:
        given = [f"--{k.replace('_', '-')}" for k in RANDOM_NET_OPTIONS
                 if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} describe the random network; they cannot be "
                             "combined with --config or --checkpoint")


def _problem(args: argparse.Namespace):
    """(field, x, y, source description, relax config) for the chosen network."""
    import torch

    from .solve import RelaxConfig

    if args.config is None and args.checkpoint is None:
        from .verify import VerifyConfig, random_problem

        opts = {k: (getattr(args, k) if getattr(args, k) is not None else v)
                for k, v in RANDOM_NET_DEFAULTS.items()}
        if len(opts["sizes"]) < 2:
            raise ValueError(f"--sizes needs an input and at least one state layer, got "
                             f"{list(opts['sizes'])}")
        vc = VerifyConfig(sizes=tuple(opts["sizes"]), activation=opts["activation"],
                          form=opts["form"], tau=opts["tau"], tau_mean=opts["tau_mean"],
                          tau_spread=opts["tau_spread"], dtype=opts["dtype"], seed=args.seed,
                          batch=args.samples)
        field, x, y = random_problem(vc)
        source = (f"random DenseHopfield {list(vc.sizes)} {vc.activation} ({vc.form} form), "
                  f"weights at spectral norm {vc.weight_norm}, τ {vc.tau} (mean "
                  f"{vc.tau_mean:g}, spread {vc.tau_spread:g}), inputs U[0,1), seed {args.seed}")
        relax_cfg = RelaxConfig(method=args.method or "exp_euler",
                                tol=1e-6 if args.tol is None else args.tol,
                                max_steps=args.max_steps, dt=args.dt, check_every=1)
        return field, x, y, source, relax_cfg
    from .train import TrainConfig, load_checkpoint, load_config
    from .train.batches import load_train_data
    from .train.build import build_field, relax_configs
    from .train.checkpoint import CHECKPOINT_NAME

    state = None
    if args.checkpoint is not None:
        path = args.checkpoint
        path = path / CHECKPOINT_NAME if path.is_dir() else path
        state = load_checkpoint(path)
        cfg = TrainConfig.from_dict(state["config"])
        source = f"trained network from {path} (epoch {int(state['epoch'])})"
    else:
        cfg = load_config(args.config)
        source = f"untrained network of {args.config} (model.seed {cfg.model.seed})"
    if args.data_root is not None:
        cfg.data.root = args.data_root
    cfg.model.device = "cpu"
    data = load_train_data(cfg.data, cfg.model)
    field = build_field(cfg, data.input_shape, data.n_classes)
    if state is not None:
        try:
            field.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"the checkpoint's weights do not fit the network its config "
                             f"builds: {exc}") from exc
    n_test = len(data.test)
    if args.samples > n_test:
        raise ValueError(f"--samples {args.samples} exceeds the {n_test} test samples")
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(n_test, generator=gen)[: args.samples]
    x, y = data.test.batch(idx)
    source += f"; {cfg.data.name} test samples {idx.tolist()}"
    _, _, ev = relax_configs(cfg)
    relax_cfg = ev.replace(method=args.method or ev.method,
                           tol=ev.tol if args.tol is None else args.tol,
                           max_steps=args.max_steps, check_every=1,
                           dt=args.dt if args.dt is not None else ev.dt)
    return field, x, y, source, relax_cfg


def _record_and_write(args, field, x, y, source, relax_cfg):
    import torch

    from ._io import atomic_write, atomic_write_text
    from .diagnostics import energy_monotone, jacobian_spectrum, time_to_tolerance
    from .plot import (
        plot_residual_energy,
        plot_tau_histogram,
        plot_time_to_convergence_vs_tau,
        plot_trajectories,
    )
    from .record import layer_states, record_relaxation, save_dataset
    from .solve import Status, get_method

    if not get_method(relax_cfg.method).records_check_times and args.times is None:
        raise ValueError(f"method {relax_cfg.method} gives every sample its own time steps, so "
                         "it records only on a time grid: pass --times (or --method exp_euler "
                         "or a torchdiffeq method)")
    ds = record_relaxation(field, x, y, args.beta, config=relax_cfg, times=args.times)
    ds.attrs["source"] = source
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    written = [save_dataset(ds, out / "trajectories.nc")]
    mono = energy_monotone(ds)
    ttol = time_to_tolerance(ds)
    n = sum(int(t.numel()) for t in field.tau())
    final = tuple(layer_states(ds, i)[-1] for i in range(1, int(ds.attrs["layers"]) + 1))
    spectrum = None
    if n <= args.max_jacobian:
        spectrum = jacobian_spectrum(field, x, final, y, args.beta)
        rates, times = spectrum.slowest_rate(), spectrum.convergence_time()
        stiffness, inertia = spectrum.stiffness_ratio(), spectrum.inertia()
    status = [Status(int(s)).name for s in ds["status"].values]
    samples = []
    for b in range(ds.sizes["sample"]):
        row = {"sample": b, "status": status[b], "t_stop": float(ds["t_stop"].values[b]),
               "nfe": int(ds["nfe"].values[b]),
               "residual_end": float(ds["residual"].values[-1, b]),
               "t_tol": float(ttol["t_tol"].values[b]),
               "energy_max_increase": float(mono["max_increase"].values[b]),
               "energy_monotone": bool(mono["monotone"].values[b])}
        if spectrum is not None:
            counted = int(inertia[b].sum())  # 0: non-finite states (NaN spectrum)
            row.update(slowest_rate=float(rates[b]), convergence_time=float(times[b]),
                       stiffness_ratio=float(stiffness[b]),
                       stable=bool(inertia[b, 1:].sum() == 0) if counted else None)
        samples.append({k: _json_value(v) for k, v in row.items()})
    taus = torch.cat([t.detach().reshape(-1).double() for t in field.tau()])
    report = {"source": source, "mode": ds.attrs["mode"], "method": relax_cfg.method,
              "tol": relax_cfg.tol, "beta": args.beta, "neurons": n,
              "tau": {"min": float(taus.min()), "max": float(taus.max()),
                      "mean": float(taus.mean())},
              "spectrum": "skipped (more than --max-jacobian neurons)" if spectrum is None
              else {"symmetric": spectrum.symmetric,
                    "note": "at the last recorded states (a fixed point only for "
                            "CONVERGED samples)"},
              "samples": samples}
    written.append(atomic_write_text(out / "diagnostics.json",
                                     json.dumps(report, indent=2, ensure_ascii=False) + "\n"))
    figures = {"trajectories": plot_trajectories(ds, 1, neurons=_spread_neurons(ds)),
               "residual_energy": plot_residual_energy(ds),
               "tau_histogram": plot_tau_histogram(ds),
               "time_to_tolerance_vs_tau": plot_time_to_convergence_vs_tau(ds)}
    for name, fig in figures.items():
        written.append(atomic_write(out / f"{name}.png",
                                    lambda tmp, fig=fig: fig.savefig(tmp, dpi=120,
                                                                     format="png")))
    return written, report


def _spread_neurons(ds, count: int = 8) -> list[int]:
    """Up to ``count`` neurons of layer 1 spread over its range of τ (slowest to fastest)."""
    import numpy as np

    order = np.argsort(ds["tau_1"].values)
    pick = np.unique(np.linspace(0, order.size - 1, min(count, order.size)).round().astype(int))
    return [int(order[i]) for i in pick]


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _print_summary(report: dict) -> None:
    print(report["source"])
    tau = report["tau"]
    print(f"{report['neurons']} neurons, τ from {tau['min']:.3g} to {tau['max']:.3g}; method "
          f"{report['method']}, tol {report['tol']:g}, β {report['beta']:g}, recorded at "
          f"{report['mode'].replace('_', ' ')}")
    spectral = isinstance(report["spectrum"], dict)
    head = f"{'sample':>6} {'status':<13}{'t_stop':>9}{'nfe':>7}{'t_tol':>9}{'F mono':>8}"
    if spectral:
        head += f"{'λ_slow':>10}{'1/λ_slow':>10}{'stiffness':>11}"
    print(head)
    for r in report["samples"]:
        line = (f"{r['sample']:>6} {r['status']:<13}{_num(r['t_stop']):>9}{r['nfe']:>7}"
                f"{_num(r['t_tol']):>9}{'yes' if r['energy_monotone'] else 'NO':>8}")
        if spectral:
            line += (f"{_num(r['slowest_rate']):>10}{_num(r['convergence_time']):>10}"
                     f"{_num(r['stiffness_ratio']):>11}")
        print(line)
    if not spectral:
        print(f"Jacobian spectrum: {report['spectrum']}")


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else str(v)
