"""Figures and tables of the HTS study (docs/hts.md) from the sweeps' results.nc files.

Usage: python examples/hts_report.py OUT [--figures DIR] [--table FILE]

OUT holds one sweep folder per dataset and regime: ``{mnist,fmnist}_{budget,tol}``, each swept
over ``tau.spread`` x ``optimizer.lr`` x ``seed`` (examples/hts_study.sh), plus optional
``<dataset>_<regime>_<suffix>`` folders with more learning rates. A run *fails* when
it diverged or collapsed (ctep.sweep: final accuracy within 5 points of chance, or a drop of
more than 20 points between epochs). An (lr, spread) cell *trains* when none of its seeds
failed and every seed ended within ``MARGIN`` (10 points) of the panel's best mean accuracy
(the best cell of that dataset and regime).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np
import xarray as xr

from ctep._io import atomic_write, atomic_write_text

DATASETS = (("mnist", "MNIST"), ("fmnist", "Fashion-MNIST"))
REGIMES = (("budget", "(a) fixed budget"), ("tol", "(b) to tolerance"))
#: a cell trains when every seed ends within this of the panel's best mean accuracy
MARGIN = 0.10


#: the grid axes (results.nc dimensions) every sweep of the study has
SWEPT = ("tau_spread", "optimizer_lr", "seed")


def load(out: pathlib.Path) -> dict[tuple[str, str], xr.Dataset]:
    """The results of every sweep folder under ``out``; folders ``<dataset>_<regime>_more_lr*``
    (the same sweep at other learning rates) are joined to ``<dataset>_<regime>`` along lr.
    Other folders (``*_budget_matched_step``: another dt) are not part of these tables."""
    found = {}
    for ds, _ in DATASETS:
        for regime, _ in REGIMES:
            paths = [p for p in (out / f"{ds}_{regime}" / "results.nc",
                                 *sorted(out.glob(f"{ds}_{regime}_more_lr*/results.nc")))
                     if p.exists()]
            parts = [read_sweep(p) for p in paths]
            check_joinable(paths, parts)
            if parts:
                found[(ds, regime)] = xr.concat(parts, dim="optimizer_lr",
                                                combine_attrs="drop_conflicts"
                                                ).sortby("optimizer_lr")
    if not found:
        raise SystemExit(f"no results.nc under {out}/<dataset>_<regime>/")
    return found


def read_sweep(path: pathlib.Path) -> xr.Dataset:
    """One sweep's results.nc, refused (naming its folder) unless it was swept over τ spread,
    learning rate and seed and records its base config."""
    ds = xr.load_dataset(path)
    missing = [d for d in SWEPT if d not in ds.dims]
    if missing:
        raise SystemExit(f"{path.parent}: not swept over {', '.join(missing)} (the study grids "
                         "tau.spread, optimizer.lr and seed)")
    if "base_config" not in ds.attrs:
        raise SystemExit(f"{path}: no base_config attribute (not written by ctep sweep?)")
    return ds


def _fixed_settings(ds: xr.Dataset) -> dict:
    """The sweep's base config without the keys its grid sets (their base values are unused)."""
    cfg = json.loads(ds.attrs["base_config"])
    seed_keys = [k.strip() for k in ds.attrs.get("seed_keys", "").split(",") if k.strip()]
    for key, _ in json.loads(ds.attrs["grid"]):
        for name in (seed_keys if key == "seed" else [key]):
            section, _, field = name.partition(".")
            cfg.get(section, {}).pop(field, None)
    return cfg


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        u, v = a.get(k), b.get(k)
        if isinstance(u, dict) and isinstance(v, dict):
            out += _differences(u, v, f"{prefix}{k}.")
        elif u != v:
            out.append(f"{prefix}{k}")
    return out


def check_joinable(paths: list[pathlib.Path], parts: list[xr.Dataset]) -> None:
    """Sweeps joined along lr must share every setting but the gridded ones, and no learning
    rate may be in two of them; otherwise exit naming the folders."""
    seen: dict[float, pathlib.Path] = {}
    for path, ds in zip(paths, parts, strict=True):
        diff = _differences(_fixed_settings(parts[0]), _fixed_settings(ds))
        if diff:
            raise SystemExit(f"{path.parent} was swept from another base config than "
                             f"{paths[0].parent} (differs in {', '.join(diff)}); only the "
                             "learning rates may differ between sweeps joined along lr")
        for lr in ds["optimizer_lr"].values:
            if float(lr) in seen:
                raise SystemExit(f"learning rate {float(lr):g} is in both "
                                 f"{seen[float(lr)].parent} and {path.parent}")
            seen[float(lr)] = path


def regime_label(ds: xr.Dataset, regime: str) -> str:
    """The regime's name with its relaxation settings, read from the sweep's base config."""
    relax = json.loads(ds.attrs["base_config"])["relax"]
    name = dict(REGIMES)[regime]
    if regime == "budget":
        return (f"{name} {relax['free_steps']} + {relax['nudged_steps']} steps/phase, "
                f"dt {relax['dt']:g}")
    return f"{name} {relax['tol']:.0e}, dt {relax['dt']:g}".replace("e-0", "e-")


def tau_label(ds: xr.Dataset) -> str:
    """The τ distribution of the sweep (legend title)."""
    tau = json.loads(ds.attrs["base_config"])["tau"]
    return f"{tau['distribution']} τ"


def cell_stats(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Per (spread, lr): runs finished, failed fraction, accuracy mean and std over seeds."""
    fin = ds["finished"] == 1
    failed = ((ds["diverged"] == 1) | (ds["collapsed"] == 1)) & fin
    acc = ds["final_test_acc"].where(fin)
    ok_acc = acc.where(~failed)
    best = float(ok_acc.mean("seed").max())
    below = fin & (failed | ~(acc >= best - MARGIN))
    return {"n": fin.sum("seed"), "failed": failed.sum("seed"), "below": below.sum("seed"),
            "diverged": ((ds["diverged"] == 1) & fin).sum("seed"),
            "mean": ok_acc.mean("seed"), "std": ok_acc.std("seed", ddof=1),
            "nfe": ds["nfe"].isel(epoch=-1).where(fin).mean("seed"),
            "nonconv": ds["nonconverged"].where(fin).mean("seed")}


def largest_training_lr(stats: dict[str, xr.DataArray], spread: float) -> float:
    """The largest lr at which every finished seed of ``spread`` trained: none failed, and all
    ended within MARGIN of the panel's best mean accuracy (NaN if none)."""
    n = stats["n"].sel(tau_spread=spread)
    bad = stats["below"].sel(tau_spread=spread)
    good = [float(lr) for lr in n["optimizer_lr"].values
            if int(n.sel(optimizer_lr=lr)) > 0 and int(bad.sel(optimizer_lr=lr)) == 0]
    return max(good) if good else math.nan


def table(results: dict[tuple[str, str], xr.Dataset]) -> str:
    """Markdown: per dataset, regime and spread, failures, accuracy per lr, largest lr."""
    lines = []
    for (name, label) in DATASETS:
        for regime, _ in REGIMES:
            ds = results.get((name, regime))
            if ds is None:
                continue
            rlabel = regime_label(ds, regime)
            st = cell_stats(ds)
            lrs = [float(v) for v in ds["optimizer_lr"].values]
            lines += [f"**{label}, {rlabel}** (test accuracy %, mean ± std over the seeds "
                      "that did not fail; [k/n] = k of n seeds failed)", "",
                      "| τ spread | mean step | τmax/τmin | failed (div.) | "
                      + " | ".join(f"lr {lr:g}" for lr in lrs)
                      + " | largest lr that trains | std where it trains | NFE/sample |",
                      "|---|---|---|---|" + "---|" * len(lrs) + "---|---|---|"]
            for spread in ds["tau_spread"].values:
                sp = float(spread)
                n = int(st["n"].sel(tau_spread=sp).sum())
                fail = int(st["failed"].sel(tau_spread=sp).sum())
                div = int(st["diverged"].sel(tau_spread=sp).sum())
                cells = []
                for lr in lrs:
                    at = {"tau_spread": sp, "optimizer_lr": lr}
                    m, s = float(st["mean"].sel(at)), float(st["std"].sel(at))
                    k, nn = int(st["failed"].sel(at)), int(st["n"].sel(at))
                    text = "–" if math.isnan(m) else (f"{100 * m:.1f} ± {100 * s:.1f}"
                                                      if not math.isnan(s) else f"{100 * m:.1f}")
                    cells.append(text + (f" [{k}/{nn}]" if k else ""))
                trains = (st["below"].sel(tau_spread=sp) == 0) & (st["n"].sel(tau_spread=sp) > 0)
                stds = st["std"].sel(tau_spread=sp).where(trains).values
                mean_std = np.nanmean(stds) if np.isfinite(stds).any() else math.nan
                step = float(ds["mean_step"].sel(tau_spread=sp).mean())
                ratio = float(ds["tau_ratio"].sel(tau_spread=sp).mean())
                nfe = float(st["nfe"].sel(tau_spread=sp).mean())
                lines.append(f"| {sp:g} | {step:.3f} | {ratio:.0f} | {fail}/{n} ({div}) | "
                             + " | ".join(cells)
                             + f" | {_or_dash(largest_training_lr(st, sp), '{:g}')} | "
                             f"{_or_dash(100 * mean_std, '{:.1f}')} | {nfe:.0f} |")
            lines.append("")
    return "\n".join(lines)


def _or_dash(value: float, fmt: str) -> str:
    return "none" if math.isnan(value) else fmt.format(value)


def figures(results: dict[tuple[str, str], xr.Dataset], folder: pathlib.Path) -> list[str]:
    """hts_accuracy.png (accuracy vs lr) and hts_failures.png (failed fraction vs lr)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for kind in ("accuracy", "failures"):
        fig, axes = plt.subplots(2, 2, figsize=(8, 6), sharex=True, sharey=True, dpi=90)
        for row, (name, label) in enumerate(DATASETS):
            for col, (regime, rlabel) in enumerate(REGIMES):
                ax = axes[row, col]
                ds = results.get((name, regime))
                if ds is None:
                    ax.set_title(f"{label}, {rlabel}", fontsize=8)
                    ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)
                    continue
                ax.set_title(f"{label}, {regime_label(ds, regime)}", fontsize=8)
                st = cell_stats(ds)
                lrs = ds["optimizer_lr"].values
                for i, spread in enumerate(ds["tau_spread"].values):
                    at = {"tau_spread": float(spread)}
                    shift = 1 + 0.04 * (i - 1)  # spread the markers apart along lr
                    if kind == "accuracy":
                        ax.errorbar(lrs * shift, 100 * st["mean"].sel(at),
                                    yerr=100 * st["std"].sel(at).fillna(0), marker="o",
                                    ms=4, capsize=2, label=f"spread {float(spread):g}")
                    else:
                        n = st["n"].sel(at)
                        line, = ax.plot(lrs * shift, st["failed"].sel(at) / n, marker="o",
                                        ms=4, label=f"spread {float(spread):g}")
                        ax.plot(lrs * shift, st["below"].sel(at) / n, ls="--", marker="x",
                                ms=4, color=line.get_color())
                ax.set_xscale("log")
                ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
                ax.minorticks_off()
                ax.grid(alpha=0.3)
                if row == 1:
                    ax.set_xlabel("learning rate (SGD, momentum 0.9)")
                if col == 0:
                    ax.set_ylabel("final test accuracy (%)" if kind == "accuracy"
                                  else "fraction of seeds")
        first = next(iter(results.values()))
        axes[0, 0].legend(fontsize=7, title=tau_label(first), title_fontsize=7)
        seeds = max(ds.sizes["seed"] for ds in results.values())
        fig.suptitle("HTS study: " + ("test accuracy of the runs that did not fail (mean ± std, "
                                      f"{seeds} seeds)" if kind == "accuracy" else
                                      "seeds that diverged or collapsed (solid) and that ended "
                                      f"> {100 * MARGIN:.0f} points below the best (dashed)"),
                     fontsize=9)
        fig.tight_layout()
        path = atomic_write(folder / f"hts_{kind}.png",
                            lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        written.append(str(path))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="folder with the sweep folders")
    parser.add_argument("--figures", type=pathlib.Path, default=None,
                        help="write hts_accuracy.png and hts_failures.png here")
    parser.add_argument("--table", type=pathlib.Path, default=None,
                        help="also write the markdown table here (it is always printed)")
    args = parser.parse_args()
    results = load(args.out)
    text = table(results)
    if args.table is not None:
        atomic_write_text(args.table, text)
    print(text)
    if args.figures is not None:
        for path in figures(results, args.figures):
            print("wrote", path)


if __name__ == "__main__":
    main()
