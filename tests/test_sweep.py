"""``ctep sweep``: grid expansion and ids, the results Dataset, resume, refusal of a changed
sweep, diverged runs recorded, collapse rule, CLI (synthetic data, float64)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from ctep._lock import FolderLockedError
from ctep.cli import main as ctep_main
from ctep.sweep import (
    LOCK_NAME,
    Outcome,
    SweepMismatchError,
    expand_grid,
    is_collapsed,
    parse_grid,
    point_config,
    run_id,
    run_sweep,
)
from ctep.train import load_config
from ctep.train.metrics import read_metrics_csv

BASE = [
    'data.name="synthetic"', "data.synthetic_features=12", "data.synthetic_classes=3",
    "data.synthetic_train=96", "data.synthetic_test=48", "data.batch_size=16",
    "data.test_batch_size=48", "model.hidden=[10]", 'model.activation="sigmoid"',
    'model.dtype="float64"', "model.init_scale=0.5", "relax.free_steps=12",
    "relax.nudged_steps=5", "relax.dt=0.5", 'tau.distribution="lognormal"',
    'tau.normalize="rate"', "estimator.beta=0.5", "optimizer.lr=0.2", "train.epochs=2",
    "train.progress=false", "train.checkpoint_every=2",
]
GRID = ["tau.spread=[0.0, 1.0]", "optimizer.lr=[0.1, 0.3]", "seed=[0, 1]"]


def base(*extra: str):
    return load_config(None, [*BASE, *extra])


def test_grid_expansion_ids_and_point_configs():
    grid = parse_grid(GRID)
    assert [k for k, _ in grid] == ["tau.spread", "optimizer.lr", "seed"]
    points = expand_grid(grid)
    assert len(points) == 8
    assert points[0] == {"tau.spread": 0.0, "optimizer.lr": 0.1, "seed": 0}
    assert points[1] == {"tau.spread": 0.0, "optimizer.lr": 0.1, "seed": 1}  # last axis fastest
    ids = [run_id(p) for p in points]
    assert len(set(ids)) == 8
    assert ids == [run_id(json.loads(json.dumps(p))) for p in points]  # stable through JSON
    assert [i[-8:] for i in ids] == [run_id(dict(reversed(list(p.items()))))[-8:]
                                     for p in points]  # the hash does not depend on key order
    assert ids[0].startswith("tau.spread-0.0__optimizer.lr-0.1__seed-0__")
    cfg = point_config(base(), points[-1])
    assert (cfg.tau.spread, cfg.optimizer.lr) == (1.0, 0.3)
    assert {cfg.model.seed, cfg.tau.seed, cfg.data.seed, cfg.estimator.seed,
            cfg.train.seed} == {1}


@pytest.mark.parametrize("items, message", [
    ([], "at least one --grid"),
    (["tau.spread"], "key=\\[v1"),
    (["tau.spread=0.5"], "list of values"),
    (["tau.sprd=[0.5]"], "has no key 'sprd'"),
    (["taus.spread=[0.5]"], "section.key"),
    (["tau.spread=[0.5, 0.5]"], "repeats a value"),
    (["tau.spread=[]"], "no values"),
    (["seed=[0]", "model.seed=[1]"], "do not grid those"),
    (["tau.spread=[0.5]", "tau.spread=[1.0]"], "twice"),
    (["optimizer.lr=[1, 1.0]"], "repeats a value"),  # the same config twice
])
def test_bad_grids_are_refused(items, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(items)


def test_bad_grid_values_are_refused_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="grid point .*optimizer.lr must be"):
        run_sweep(base(), parse_grid(["optimizer.lr=[0.1, -1.0]"]), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_sweep_dataset_dims_and_values(tmp_path):
    grid = parse_grid(GRID)
    out = tmp_path / "sweep"
    report = run_sweep(base(), grid, out)
    assert (report.total, report.started, report.skipped) == (8, 8, 0)
    ds = xr.load_dataset(out / "results.nc")
    assert dict(ds.sizes) == {"tau_spread": 2, "optimizer_lr": 2, "seed": 2, "epoch": 2}
    assert ds["test_acc"].dims == ("tau_spread", "optimizer_lr", "seed", "epoch")
    assert ds["final_test_acc"].dims == ("tau_spread", "optimizer_lr", "seed")
    np.testing.assert_array_equal(ds["tau_spread"], [0.0, 1.0])
    np.testing.assert_array_equal(ds["seed"], [0, 1])
    assert int(ds["finished"].sum()) == 8 and int(ds["diverged"].sum()) == 0
    for point in expand_grid(grid):
        rows = read_metrics_csv(out / "runs" / run_id(point) / "metrics.csv")
        at = {"tau_spread": point["tau.spread"], "optimizer_lr": point["optimizer.lr"],
              "seed": point["seed"]}
        assert float(ds["final_test_acc"].sel(at)) == rows[-1]["test_acc"]
        np.testing.assert_array_equal(ds["loss"].sel(at), [r["loss"] for r in rows])
        np.testing.assert_array_equal(ds["train_acc"].sel(at), [r["train_acc"] for r in rows])
        assert float(ds["best_test_acc"].sel(at)) == max(r["test_acc"] for r in rows)
        assert float(ds["seconds"].sel(at)) > 0
    # homogeneous τ: ratio 1 and the step dt/τ = 0.5 everywhere; heterogeneous: spread, clipped
    assert np.all(ds["tau_ratio"].sel(tau_spread=0.0) == 1.0)
    assert np.all(ds["mean_step"].sel(tau_spread=0.0) == 0.5)
    assert np.all(ds["tau_ratio"].sel(tau_spread=1.0) > 3)
    assert np.all(ds["mean_step"].sel(tau_spread=1.0) < 0.5)  # clipped at 1: below the mean
    # different seeds give different runs, different τ spreads different paths
    acc = ds["final_test_acc"]
    assert not np.array_equal(acc.sel(seed=0), acc.sel(seed=1))
    loss = ds["loss"]  # fixed budget with per-neuron steps: τ changes the training
    assert not np.array_equal(loss.sel(tau_spread=0.0), loss.sel(tau_spread=1.0))
    assert json.loads(ds.attrs["grid"])[0] == ["tau.spread", [0.0, 1.0]]


def test_sweep_resumes_where_it_stopped(tmp_path):
    grid = parse_grid(["tau.spread=[0.0, 1.0]", "optimizer.lr=[0.1, 0.3]"])
    whole = tmp_path / "whole"
    run_sweep(base(), grid, whole)
    parts = tmp_path / "parts"
    first = run_sweep(base(), grid, parts, max_runs=1)
    assert (first.started, first.stopped_early) == (1, True)
    partial = xr.load_dataset(parts / "results.nc")
    assert int(partial["finished"].sum()) == 1
    assert np.isnan(partial["final_test_acc"]).sum() == 3
    # the next run is killed mid-epoch after a checkpoint (checkpoint_every = 2 batches)
    second = run_sweep(base(), grid, parts, stop_after_batches=5)
    assert (second.skipped, second.started, second.stopped_early) == (1, 1, True)
    assert int(xr.load_dataset(parts / "results.nc")["finished"].sum()) == 1
    third = run_sweep(base(), grid, parts)
    assert (third.skipped, third.resumed, third.started) == (1, 1, 2)
    fourth = run_sweep(base(), grid, parts)
    assert (fourth.skipped, fourth.resumed, fourth.started) == (4, 0, 0)
    a, b = xr.load_dataset(whole / "results.nc"), xr.load_dataset(parts / "results.nc")
    for name in ("final_test_acc", "test_acc", "loss", "train_acc", "nonconverged_epoch"):
        np.testing.assert_array_equal(a[name], b[name])  # resume is exact


def test_a_changed_sweep_is_refused(tmp_path):
    grid = parse_grid(["optimizer.lr=[0.1, 0.3]"])
    out = tmp_path / "s"
    run_sweep(base("train.epochs=1"), grid, out, max_runs=1)
    with pytest.raises(SweepMismatchError, match="another grid"):
        run_sweep(base("train.epochs=1"), parse_grid(["optimizer.lr=[0.1, 0.2]"]), out)
    with pytest.raises(SweepMismatchError, match=r"estimator.beta \(0.5 then, 0.3 now\)"):
        run_sweep(base("train.epochs=1", "estimator.beta=0.3"), grid, out)
    # cosmetic keys may change
    run_sweep(base("train.epochs=1", "train.progress=true", "train.log_every=7",
                   "train.checkpoint_every=3"), grid, out, max_runs=1)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(SweepMismatchError, match="not a sweep folder"):
        run_sweep(base(), grid, other)
    with pytest.raises(SweepMismatchError, match="not a folder"):
        run_sweep(base(), grid, other / "notes.txt")


def test_a_diverging_run_is_recorded_not_raised(tmp_path):
    cfg = base('model.activation="identity"', "model.init_scale=3.0", 'train.mode="bp"',
               "train.epochs=1")
    out = tmp_path / "s"
    report = run_sweep(cfg, parse_grid(["optimizer.lr=[0.001, 1e6]"]), out)
    assert (report.started, report.diverged) == (2, 1)
    ds = xr.load_dataset(out / "results.nc")
    assert ds["diverged"].values.tolist() == [0, 1]
    assert ds["trained"].sel(optimizer_lr=1e6) == 0
    assert np.isnan(float(ds["final_test_acc"].sel(optimizer_lr=1e6)))
    assert np.isfinite(float(ds["final_test_acc"].sel(optimizer_lr=0.001)))
    result = json.loads(next((out / "runs").glob("optimizer.lr-1000000.0*/result.json"))
                        .read_text())
    assert result["status"] == "diverged" and "non-finite" in result["message"]
    # rerunning skips both (a diverged run is finished)
    assert run_sweep(cfg, parse_grid(["optimizer.lr=[0.001, 1e6]"]), out).skipped == 2


def test_a_relaxation_error_is_recorded_as_divergence(tmp_path):
    """With estimator.on_failure = "raise" a diverging relaxation raises RelaxationError inside
    the run: the sweep records the run as diverged and goes on (it used to stop the sweep)."""
    cfg = base('estimator.on_failure="raise"', "model.init_scale=3.0", "train.epochs=1")
    out = tmp_path / "s"
    grid = parse_grid(['model.activation=["sigmoid", "identity"]'])
    report = run_sweep(cfg, grid, out)
    assert (report.started, report.diverged) == (2, 1)
    ds = xr.load_dataset(out / "results.nc")
    assert ds["diverged"].values.tolist() == [0, 1]
    assert ds["finished"].values.tolist() == [1, 1]
    result = json.loads(next((out / "runs").glob("model.activation-*identity*/result.json"))
                        .read_text())
    assert result["status"] == "diverged"
    assert result["message"].startswith("RelaxationError:") and "DIVERGED" in result["message"]


def test_a_first_call_without_data_leaves_no_sweep_behind(tmp_path):
    """A first call whose data cannot be loaded (a wrong data root) must not claim the folder:
    the corrected call (another data.root, so another base config) then runs there."""
    out = tmp_path / "s"
    grid = parse_grid(["optimizer.lr=[0.1]"])
    missing = base('data.name="mnist"', f'data.root="{(tmp_path / "nodata").as_posix()}"')
    with pytest.raises(FileNotFoundError, match="could not be loaded"):
        run_sweep(missing, grid, out)
    assert not out.exists()  # nor its lock, nor the folder the lock made
    assert run_sweep(base("train.epochs=1"), grid, out).started == 1


def test_a_second_sweep_in_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "s"
    grid = parse_grid(["optimizer.lr=[0.1, 0.3]"])
    refused = []

    def second_sweep(_line):  # called by the first sweep after its first run, lock held
        if not refused:
            with pytest.raises(FolderLockedError) as err:
                run_sweep(base("train.epochs=1"), grid, out)
            refused.append(str(err.value))
            assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()

    report = run_sweep(base("train.epochs=1"), grid, out, log=second_sweep)
    assert report.started == 2 and len(refused) == 1
    assert f"{out} is in use by another sweep (pid {os.getpid()} on host" in refused[0]
    assert f"rm {out / LOCK_NAME}" in refused[0]
    assert not (out / LOCK_NAME).exists()  # released on return
    assert run_sweep(base("train.epochs=1"), grid, out).skipped == 2


@pytest.mark.skipif(os.name != "posix", reason="pids are probed on POSIX only")
def test_a_killed_sweeps_lock_is_taken_over_and_a_live_ones_is_not(tmp_path, capsys):
    out = tmp_path / "s"
    grid = parse_grid(["optimizer.lr=[0.1]"])
    run_sweep(base("train.epochs=1"), grid, out, max_runs=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-11-30T00:00:00"}
    (out / LOCK_NAME).write_text(json.dumps(lock))
    assert run_sweep(base("train.epochs=1"), grid, out).skipped == 1  # stale: taken over
    assert not (out / LOCK_NAME).exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({**lock, "pid": live.pid}))
        config = tmp_path / "base.toml"
        config.write_text(base("train.epochs=1").to_toml())
        argv = ["sweep", "--config", str(config), "--grid", "optimizer.lr=[0.1]", "--out",
                str(out)]
        assert ctep_main(argv) == 2
        assert f"is in use by another sweep (pid {live.pid} on host" in capsys.readouterr().err
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == live.pid  # left alone
    finally:
        live.kill()
        live.wait()


def test_collapse_rule():
    rule = Outcome(chance_margin=0.05, collapse_drop=0.2)
    assert is_collapsed([0.5, 0.12], 10, rule)  # at chance
    assert is_collapsed([0.8, 0.55, 0.6], 10, rule)  # a drop of 25 points
    assert not is_collapsed([0.5, 0.35, 0.6], 10, rule)  # a drop of 15 points
    assert not is_collapsed([0.2, 0.4], 10, rule)
    assert is_collapsed([0.6, float("nan")], 10, rule)
    with pytest.raises(ValueError, match="collapse_drop"):
        Outcome(collapse_drop=0.0)


def test_sweep_cli(tmp_path, capsys, monkeypatch):
    config = tmp_path / "base.toml"
    config.write_text(base("train.epochs=1").to_toml())
    out = tmp_path / "s"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = ["sweep", "--config", str(config), "--grid", "tau.spread=[0.0, 0.5]", "--out",
            str(out), "--set", "optimizer.lr=0.1"]
    assert ctep_main(argv) == 0
    text = capsys.readouterr().out
    assert "[2/2]" in text and "started 2" in text
    # nothing written outside --out (neither in the working directory nor next to the config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.toml", "cwd", "s"]
    assert not any(cwd.iterdir())
    assert xr.load_dataset(out / "results.nc")["finished"].values.tolist() == [1, 1]
    assert ctep_main(argv) == 0
    assert "skipped 2 finished" in capsys.readouterr().out
    bad = ["sweep", "--config", str(config), "--grid", "tau.spread=[0.0, 0.7]", "--out",
           str(out)]
    assert ctep_main(bad) == 2
    assert "another grid" in capsys.readouterr().err


def test_a_sweep_written_by_an_older_ctep_resumes(tmp_path):
    """``relax.memory`` joined the config after sweeps had been written (runs/hts/*), and
    ``train.checkpoint_every`` became cosmetic after they had stored it: such a sweep.json is
    the same sweep (the new key's default reproduces those runs), not 'another base config'."""
    out = tmp_path / "s"
    grid = parse_grid(["optimizer.lr=[0.1, 0.3]"])
    run_sweep(base("train.epochs=1"), grid, out, max_runs=1)
    spec = json.loads((out / "sweep.json").read_text())
    del spec["base"]["relax"]["memory"]
    spec["base"]["train"]["checkpoint_every"] = 0
    (out / "sweep.json").write_text(json.dumps(spec))
    report = run_sweep(base("train.epochs=1"), grid, out)
    assert (report.skipped, report.started) == (1, 1)
    with pytest.raises(SweepMismatchError, match=r"relax.memory \(5 then, 3 now\)"):
        run_sweep(base("train.epochs=1", "relax.memory=3"), grid, out)
