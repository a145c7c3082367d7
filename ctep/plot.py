"""Figures from recorded dynamics and verification reports, one function each.

Every function builds a ``matplotlib.figure.Figure`` directly (no pyplot, no global figure
registry, no display needed) and returns it; ``fig.savefig(path)`` writes it. matplotlib is
imported inside the functions so that importing ctep stays light.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .record import check_layer
from .solve import RelaxConfig, get_method


def _time_label(ds) -> str:
    """"iteration" for the τ-free fixed-point map and its Anderson acceleration (their time
    axis counts iterations)."""
    import json

    dt = json.loads(ds.attrs.get("relax_config", "{}")).get("dt")
    try:
        method = get_method(ds.attrs.get("method", ""))
    except ValueError:  # a file written with a method this session has not registered
        return "time t"
    return "iteration" if method.counts_iterations(RelaxConfig(dt=dt)) else "time t"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _plain_log_ticks(axis) -> None:
    """Ticks at 1, 2, 5 × 10^k labelled as plain numbers (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_trajectories(ds, layer: int = 1, samples: Sequence[int] | None = None,
                      neurons: Sequence[int] | None = None):
    """States s_i(t) of a few neurons of ``layer`` (1-based), one panel per sample.

    ``samples`` and ``neurons`` are positions along the ``sample`` and ``neuron_l`` dims (the
    panel titles show the ``sample`` coordinate, the index in the recorded batch).
    Defaults: the first three samples and the first eight neurons of the layer. A dashed line
    marks each sample's time to tolerance (the residual stays ≤ tol from there on, see
    :func:`ctep.diagnostics.time_to_tolerance`); line colour follows the neuron's τ.
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    from .diagnostics import time_to_tolerance

    check_layer(ds, layer)
    dim = f"neuron_{layer}"
    n_samples, n_neurons = ds.sizes["sample"], ds.sizes[dim]
    samples = list(range(min(3, n_samples))) if samples is None else list(samples)
    neurons = list(range(min(8, n_neurons))) if neurons is None else list(neurons)
    _check_indices("samples", samples, n_samples)
    _check_indices("neurons", neurons, n_neurons)
    tau = ds[f"tau_{layer}"].values
    lo, hi = float(tau.min()), float(tau.max())
    varied = hi > lo * (1 + 1e-9)
    norm = LogNorm(lo, hi) if varied else None
    cmap = colormaps["viridis"]
    t = ds["time"].values
    t_tol = time_to_tolerance(ds)["t_tol"].values
    fig = _figure(3.6 * len(samples), 3.2)
    axes = fig.subplots(1, len(samples), squeeze=False, sharey=True)[0]
    for ax, b in zip(axes, samples, strict=True):
        s = ds[f"s_{layer}"].isel(sample=b).transpose("time", dim).values
        for i in neurons:
            ax.plot(t, s[:, i], color=cmap(norm(tau[i])) if varied else None, lw=1.2)
        if np.isfinite(t_tol[b]):
            ax.axvline(float(t_tol[b]), color="0.5", ls="--", lw=0.8)
        ax.set_title(f"sample {ds['sample'].values[b]}", fontsize=9)
        ax.set_xlabel(_time_label(ds))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"state s of layer {layer}")
    if varied:
        fig.colorbar(_mappable(cmap, norm), ax=list(axes), label="τ of the neuron")
    else:
        axes[-1].text(0.98, 0.02, f"τ = {lo:g} for every neuron", transform=axes[-1].transAxes,
                      ha="right", va="bottom", fontsize=8)
    fig.suptitle(f"relaxation, {ds.attrs.get('method', '?')} (β = "
                 f"{float(ds.attrs.get('beta', 0.0)):g}); dashed: residual ≤ tol "
                 f"{float(ds.attrs.get('tol', 0.0)):g} from here on", fontsize=10)
    return fig


def plot_residual_energy(ds):
    """Left: residual ‖τ ⊙ ds/dt‖∞ against time per sample, with the tolerance. Right: the
    energy gap F(t) − F(t_end) per sample (log scale; zero gaps are not drawn)."""
    t = ds["time"].values
    r = ds["residual"].transpose("time", "sample").values
    f = ds["energy"].transpose("time", "sample").values
    fig = _figure(9.0, 3.4)
    ax_r, ax_f = fig.subplots(1, 2, squeeze=True)
    for b in range(r.shape[1]):
        ax_r.semilogy(t, np.where(r[:, b] > 0, r[:, b], np.nan), lw=1)
        gap = f[:, b] - f[-1, b]
        ax_f.semilogy(t, np.where(gap > 0, gap, np.nan), lw=1)
    tol = float(ds.attrs.get("tol", 0.0))
    if tol > 0:
        ax_r.axhline(tol, color="k", ls=":", lw=1, label=f"tol {tol:g}")
        ax_r.legend(fontsize=8)
    ax_r.set_xlabel(_time_label(ds))
    ax_r.set_ylabel("residual ‖τ ⊙ ds/dt‖∞")
    ax_f.set_xlabel(_time_label(ds))
    ax_f.set_ylabel("F(t) − F(t_end)")
    for ax in (ax_r, ax_f):
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{ds.sizes['sample']} samples, {ds.attrs.get('method', '?')}", fontsize=10)
    return fig


def plot_tau_histogram(tau, bins: int | None = None):
    """Histogram of the time constants, stacked by layer, on log-spaced bins (default: one bin
    per four neurons, between 5 and 40).

    ``tau`` is a recorded Dataset (variables ``tau_l``), a
    :class:`~ctep.timeconstants.TimeConstants`, or a sequence of per-layer tensors/arrays.
    """
    from matplotlib.ticker import MaxNLocator

    layers = _tau_layers(tau)
    if not layers:
        raise ValueError("τ must be a non-empty set of positive finite values (no layers given)")
    flat = np.concatenate([v for v in layers.values()])
    if flat.size == 0 or not np.all(np.isfinite(flat)) or np.any(flat <= 0):
        raise ValueError("τ must be a non-empty set of positive finite values")
    lo, hi = float(flat.min()), float(flat.max())
    bins = int(np.clip(flat.size // 4, 5, 40)) if bins is None else int(bins)
    if bins < 1:
        raise ValueError(f"bins must be ≥ 1, got {bins}")
    edges = np.geomspace(lo, hi, bins + 1) if hi > lo * 1.0001 else np.array(
        [lo * 0.95, lo * 1.05])
    fig = _figure(5.0, 3.4)
    ax = fig.subplots()
    ax.hist(list(layers.values()), bins=edges, stacked=True, label=list(layers))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if edges.size > 2:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("τ")
    ax.set_ylabel("neurons")
    ax.set_title(f"{flat.size} neurons: τ from {lo:.3g} to {hi:.3g} (mean {flat.mean():.3g})",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


def plot_time_to_convergence_vs_tau(ds, tol: float | None = None):
    """Each neuron's time to tolerance (:func:`ctep.diagnostics.time_to_tolerance`, the first
    time after which |τ_i ds_i/dt| stays ≤ tol), median over samples, against its τ_i; one
    colour per layer, log-log. Neurons whose median never reaches tol, and those at tol from
    t = 0 on (no place on a log axis), are left out and counted in the title."""
    from .diagnostics import time_to_tolerance

    tt = time_to_tolerance(ds, tol)
    fig = _figure(5.0, 3.6)
    ax = fig.subplots()
    missing = at_start = 0
    for i in range(1, int(ds.attrs["layers"]) + 1):
        times = tt[f"t_tol_{i}"].transpose("sample", f"neuron_{i}").values
        med = np.median(times, axis=0)
        ok = np.isfinite(med) & (med > 0)
        missing += int((~np.isfinite(med)).sum())
        at_start += int((med == 0).sum())
        ax.loglog(ds[f"tau_{i}"].values[ok], med[ok], "o", ms=3, alpha=0.8, label=f"layer {i}")
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("τ of the neuron")
    ax.set_ylabel(f"{_time_label(ds).replace(' t', '')} to |τ ds/dt| ≤ tol (median over "
                  "samples)")
    notes = ([f"{missing} neuron(s) never reach it"] if missing else []) + (
        [f"{at_start} at it from t = 0 (not drawn)"] if at_start else [])
    ax.set_title("; ".join([f"tol {tt.attrs['tol']:g}", *notes]), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_error_vs_beta(ds, reference: str | None = None):
    """Log-log relative error against β, one line per estimator, from a verification report
    (the dict of :func:`ctep.verify.run_verification` or its Dataset,
    :func:`ctep.verify.report_dataset`), and, when it has GDU curves, a second panel with them
    (:func:`plot_gdu`); returns the figure."""
    if isinstance(ds, dict):
        from .verify import report_dataset

        ds = report_dataset(ds)
    ref = reference or str(ds.reference.values[0])
    has_gdu = "gdu_rel_rmse" in ds
    fig = _figure(10 if has_gdu else 5, 4)
    axes = fig.subplots(1, 2 if has_gdu else 1, squeeze=False)
    ax = axes[0, 0]
    if has_gdu:
        plot_gdu(ds, axes[0, 1])
    for est in ds.estimator.values:
        err = ds.rel_error.sel(estimator=est, reference=ref)
        ax.loglog(ds.beta.values, err.values, "o-", label=str(est))
    ax.set_xlabel("β (|β| for holomorphic)")
    ax.set_ylabel(f"relative error vs {ref}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def plot_gdu(ds, ax) -> None:
    """GDU relative RMSE per layer against the step, on a log scale (resolved steps only: the
    others measure round-off); neurons solid, parameters dashed. Draws into ``ax``."""
    rmse = np.where(ds.gdu_resolved.values.astype(bool), ds.gdu_rel_rmse.values, np.nan)
    for i, (layer, kind) in enumerate(zip(ds.layer.values, ds.gdu_kind.values, strict=True)):
        row = rmse[i]
        if np.isfinite(row).any():
            ax.semilogy(ds.step.values, row, "-" if kind == "neurons" else "--", marker=".",
                        label=str(layer))
    ax.set_xlabel("step t of the nudged phase")
    ax.set_ylabel("GDU relative RMSE, EP vs BPTT")
    ax.set_title(f"β = {ds.attrs.get('gdu_beta', float('nan')):g}, h = "
                 f"{ds.attrs.get('gdu_step', '?')}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _tau_layers(tau) -> dict[str, np.ndarray]:
    import torch

    if hasattr(tau, "data_vars"):  # a recorded Dataset
        n = int(tau.attrs.get("layers", 0))
        if n < 1:
            raise ValueError("the Dataset has no τ (expected variables tau_1, tau_2, ...)")
        return {f"layer {i}": np.asarray(tau[f"tau_{i}"].values, dtype=float).ravel()
                for i in range(1, n + 1)}
    if isinstance(tau, torch.nn.Module):
        tau = tau()
    if isinstance(tau, (list, tuple)):
        return {f"layer {i}": np.asarray(t.detach().cpu() if torch.is_tensor(t) else t,
                                         dtype=float).ravel()
                for i, t in enumerate(tau, start=1)}
    raise TypeError("tau must be a recorded Dataset, TimeConstants, or a sequence of per-layer "
                    f"arrays, got {type(tau).__name__}")


def _check_indices(name: str, idx: Sequence[int], size: int) -> None:
    if not idx or any((not isinstance(i, (int, np.integer))) or not 0 <= i < size
                      for i in idx):
        raise ValueError(f"{name} must be a non-empty list of indices in [0, {size}), got "
                         f"{list(idx)}")


def _mappable(cmap, norm):
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    return sm
