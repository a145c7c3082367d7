"""Per-epoch metrics of a run: ``metrics.csv`` (one row per epoch) and ``metrics.nc`` (xarray).

Columns: epoch, lr_factor, loss (mean free-phase loss over the epoch's training batches),
train_acc (free-phase predictions before each update), val_acc and val_loss (when a
validation split is held out), test_acc and test_loss (free equilibrium of the evaluation
relaxation), seconds (training + evaluation of the epoch), nfe (mean vector-field evaluations
per training sample, all phases), nonconverged (fraction of training samples whose free phase
did not end converged, diverged ones included), diverged (fraction left out as diverged),
residual (mean final free-phase residual). Losses average over the samples used; accuracies
count diverged samples as wrong and are fractions in [0, 1].
"""

from __future__ import annotations

import csv
import io
import pathlib

import numpy as np
import xarray as xr

from .._io import atomic_write, atomic_write_text

COLUMNS = ("epoch", "lr_factor", "loss", "train_acc", "val_acc", "val_loss", "test_acc",
           "test_loss", "seconds", "nfe", "nonconverged", "diverged", "residual")


def write_metrics(folder: str | pathlib.Path, rows: list[dict[str, float]],
                  attrs: dict[str, str] | None = None) -> None:
    """Write ``metrics.csv`` and ``metrics.nc`` in ``folder`` (each atomically)."""
    folder = pathlib.Path(folder)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    atomic_write_text(folder / "metrics.csv", buf.getvalue())
    ds = metrics_dataset(rows, attrs)
    atomic_write(folder / "metrics.nc", ds.to_netcdf)


def metrics_dataset(rows: list[dict[str, float]], attrs: dict[str, str] | None = None
                    ) -> xr.Dataset:
    """The rows as an xarray Dataset with dimension ``epoch`` (missing values are NaN)."""
    epochs = np.array([int(r["epoch"]) for r in rows], dtype=np.int64)
    data = {k: ("epoch", np.array([_num(r.get(k)) for r in rows], dtype=np.float64))
            for k in COLUMNS if k != "epoch"}
    return xr.Dataset(data, coords={"epoch": epochs}, attrs=dict(attrs or {}))


def read_metrics_csv(path: str | pathlib.Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as floats (empty cells are NaN)."""
    with open(path, newline="") as fh:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _num(v) -> float:
    if v is None or v == "":
        return float("nan")
    return float(v)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else repr(v)
    return str(v)
