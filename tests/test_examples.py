"""The scripts in examples/ run end to end as a user runs them (a subprocess with this Python,
on their smallest settings), and what they print or write is checked against what they claim:
EP's bias orders (quickstart), the fits' loss reductions (fhn_fit, oscillator_chain), τ
changing only the path (hts_path_check on a tiny trained run), the HTS table and figures
(hts_report on tiny synthetic sweeps), and that hts_study.sh names configs, grids and folders
that ctep and hts_report accept. Nothing reads real data or downloads: CTEP_DATA points at an
empty folder."""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pathlib
import re
import runpy
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from ctep.cli import main as ctep_main
from ctep.sweep import expand_grid, parse_grid, point_config
from ctep.sweep_cli import add_arguments as add_sweep_arguments
from ctep.train import load_config
from ctep.train.metrics import read_metrics_csv

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"

#: a tiny synthetic training run: dense 12-10-K net in float64, per-neuron steps (dt 0.5) of the
#: fixed-point map with log-normal τ of normalised rate, a fixed budget of 12 + 5 steps
SYNTHETIC = [
    'data.name="synthetic"', "data.synthetic_features=12", "data.synthetic_classes=3",
    "data.synthetic_train=96", "data.synthetic_test=48", "data.batch_size=16",
    "data.test_batch_size=48", "model.hidden=[10]", 'model.activation="sigmoid"',
    'model.dtype="float64"', "model.init_scale=0.5", 'relax.method="fixed_point"',
    "relax.free_steps=12", "relax.nudged_steps=5", "relax.dt=0.5", "relax.check_every=0",
    'tau.distribution="lognormal"', 'tau.normalize="rate"', "estimator.beta=0.5",
    "optimizer.lr=0.2", "train.epochs=2", "train.progress=false",
]
#: the to-tolerance regime of the HTS study on the same task: each sample stops at 1e-3
TO_TOLERANCE = ["relax.free_steps=200", "relax.nudged_steps=100", "relax.check_every=2",
                "relax.tol=1e-3"]


def write_config(path: pathlib.Path, *extra: str) -> pathlib.Path:
    """A validated TOML config of the synthetic task with ``extra`` overrides."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(load_config(None, [*SYNTHETIC, *extra]).to_toml())
    return path


def run_example(script: str, *args: str, cwd: pathlib.Path,
                expect_rc: int = 0) -> subprocess.CompletedProcess:
    """Run ``examples/<script>`` with this Python in ``cwd``, on one thread, with the Agg
    backend and CTEP_DATA an empty folder; fail with its output unless it exits ``expect_rc``."""
    data = cwd / "empty_data_root"
    data.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "CTEP_DATA": str(data)}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect_rc, (
        f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def only_data_root_left(cwd: pathlib.Path) -> bool:
    """Whether the script wrote nothing into its working directory."""
    return [p.name for p in cwd.iterdir()] == ["empty_data_root"]


def markdown_rows(text: str, header_start: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first markdown table whose header line starts
    with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    assert set(lines[start + 1].replace("|", "")) == {"-"}, lines[start + 1]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from a PNG file's IHDR chunk; fails if it is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


# ----------------------------------------------------------------------------- quickstart


def test_quickstart_shows_the_bias_orders_of_one_sided_and_centered_ep(tmp_path):
    out = run_example("quickstart.py", cwd=tmp_path).stdout
    assert only_data_root_left(tmp_path)
    free = ast.literal_eval(re.search(r"^free phase: (\{.*\})$", out, re.M).group(1))
    assert free["frac_converged"] == 1.0 and free["residual_max"] <= 1e-10
    errors = {(name, float(beta)): float(err) for name, beta, err in re.findall(
        rf"^\s*(one-sided|centered) beta=({NUMBER}): rel_error ({NUMBER})$", out, re.M)}
    betas = (0.1, 0.01, 0.001)
    assert set(errors) == {(n, b) for n in ("one-sided", "centered") for b in betas}
    for big, small in zip(betas, betas[1:], strict=False):
        # β ten times smaller: one-sided error ~10x smaller (O(β)), centered ~100x (O(β²))
        assert 7 < errors["one-sided", big] / errors["one-sided", small] < 14
        assert 70 < errors["centered", big] / errors["centered", small] < 140
    assert all(errors["centered", b] < 0.1 * errors["one-sided", b] for b in betas)
    assert errors["centered", 0.001] < 1e-6


# ------------------------------------------------------------------- skew and Lagrangian fits


def test_fhn_fit_quick_run_lowers_the_loss_at_a_stable_saddle(tmp_path):
    out = run_example("fhn_fit.py", "--steps", "15", cwd=tmp_path).stdout
    assert only_data_root_left(tmp_path)
    neg, pos, max_real = re.search(
        rf"∇²H has (\d+) negative and (\d+) positive eigenvalues \(a saddle\); "
        rf"max Re λ\(J\) = ({NUMBER}) \(stable\)", out).groups()
    assert int(neg) >= 1 and int(pos) >= 1 and int(neg) + int(pos) == 12  # 6 units x (u, v)
    assert float(max_real) < 0
    rel = float(re.search(rf"vs implicit differentiation: rel. error ({NUMBER})", out).group(1))
    assert rel < 1e-2  # centered EP at β = 0.05: O(β²) bias
    steps = [(int(s), float(loss), float(lam)) for s, loss, lam in re.findall(
        rf"^step\s+(\d+)\s+loss ({NUMBER})\s+max Re λ ({NUMBER})$", out, re.M)]
    assert [s for s, _, _ in steps] == list(range(0, 15, 2))  # every 15 // 6 steps
    assert all(loss > 0 and lam < 0 for _, loss, lam in steps)
    before, after, factor, final_real = re.search(
        rf"^loss before ({NUMBER})\s+after ({NUMBER})\s+\(×(\d+) lower\); final max Re λ "
        rf"({NUMBER})$", out, re.M).groups()
    assert float(before) == steps[0][1]  # the first step reports the loss before any update
    assert float(after) <= 0.1 * float(before) and int(factor) >= 10
    assert float(final_real) < 0


def test_oscillator_chain_quick_run_lowers_the_tracking_cost(tmp_path):
    out = run_example("oscillator_chain.py", "--steps", "25", cwd=tmp_path).stdout
    assert only_data_root_left(tmp_path)
    neg, pos, cond, residual = re.search(
        rf"Hessian of the action has (\d+) negative and (\d+) positive eigenvalues \(a "
        rf"saddle\), condition ({NUMBER}); Newton residual ({NUMBER})", out).groups()
    assert int(neg) >= 1 and int(neg) + int(pos) == 4 * 48  # 4 oscillators x 48 time points
    assert float(cond) > 1 and float(residual) <= 1e-10  # the Newton tolerance
    rel = float(re.search(rf"vs implicit differentiation: rel. error ({NUMBER})", out).group(1))
    assert rel < 1e-3  # centered EP at β = 0.01
    steps = [(int(s), float(c)) for s, c in re.findall(
        rf"^step\s+(\d+)\s+cost ({NUMBER})$", out, re.M)]
    assert [s for s, _ in steps] == list(range(0, 25, 4))
    before, after, factor = re.search(
        rf"^cost before ({NUMBER})\s+after ({NUMBER})\s+\(×(\d+) lower\)$", out, re.M).groups()
    assert float(before) == steps[0][1]
    assert float(after) <= 0.1 * float(before) and int(factor) >= 10
    stiffness = ast.literal_eval(re.search(r"^stiffness (\[.*?\])", out, re.M).group(1))
    coupling = ast.literal_eval(re.search(r"^coupling\s+(\[.*?\])", out, re.M).group(1))
    assert len(stiffness) == 4 and len(coupling) == 3
    assert all(v > 0 for v in (*stiffness, *coupling))


@pytest.mark.parametrize("script", ["fhn_fit.py", "oscillator_chain.py"])
def test_fits_refuse_a_step_count_below_one(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--steps", "0"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert exc.value.code == 2
    assert "--steps must be ≥ 1, got 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- hts_path_check


def test_hts_path_check_on_a_tiny_trained_run(tmp_path):
    # a run that has learned something but not everything, so that accuracies are informative
    config = write_config(tmp_path / "cfg" / "run.toml", "data.synthetic_classes=5",
                          "optimizer.lr=0.05", "train.epochs=1")
    run = tmp_path / "run"
    assert ctep_main(["train", "--config", str(config), "--out", str(run)]) == 0
    run_acc = read_metrics_csv(run / "metrics.csv")[-1]["test_acc"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = run_example("hts_path_check.py", str(run), "--spreads", "0", "1", "--grad-samples",
                      "32", cwd=cwd).stdout
    assert only_data_root_left(cwd)
    head = re.search(rf"\(trained weights\): (\d+) test samples; reference \(τ ≡ 1, to 1e-10\):"
                     rf" accuracy ({NUMBER})%, (\d+) converged", out)
    assert head is not None, out
    assert int(head.group(1)) == 48 and int(head.group(3)) == 48

    rows = {(r[0], float(r[1])): r[2:] for r in markdown_rows(out, "| relaxation | τ spread |")}
    assert set(rows) == {(regime, s) for regime in ("budget 12 steps", "to tol 1e-3",
                                                    "to tol 1e-6") for s in (0.0, 1.0)}

    def cols(key):
        acc, agree, diff, steps, conv = rows[key]
        return (float(acc), float(agree.rstrip("%")), float(diff), float(steps),
                float(conv.rstrip("%")))

    # the run's own evaluation is the budget relaxation with its τ (spread 0)
    assert cols(("budget 12 steps", 0.0))[0] == pytest.approx(100 * run_acc, abs=0.005)
    assert 100 / 5 < 100 * run_acc < 100  # learned something, not everything
    # to tolerance, τ changes only the path: same predictions, states within ~tol, more steps
    for regime, tol in (("to tol 1e-3", 1e-3), ("to tol 1e-6", 1e-6)):
        homo, hetero = cols((regime, 0.0)), cols((regime, 1.0))
        for acc, agree, diff, _, conv in (homo, hetero):
            assert agree == 100.0 and conv == 100.0 and diff <= 10 * tol
            assert acc == pytest.approx(float(head.group(2)), abs=0.005)
        assert hetero[3] > 2 * homo[3]  # heterogeneous τ: small per-neuron steps cost steps
    # with a fixed budget the states are wherever the path got to, and τ moves them
    homo, hetero = cols(("budget 12 steps", 0.0)), cols(("budget 12 steps", 1.0))
    assert homo[3] == hetero[3] == 12.0
    assert hetero[2] > 10 * homo[2]

    assert "EP gradient (centered, β = 0.5) on 32 training samples" in out
    grads = {(r[0], float(r[1])): (float(r[2]), float(r[3]))
             for r in markdown_rows(out, "| relaxation | τ spread | ‖g‖")}
    assert set(grads) == {(regime, s) for regime in ("budget 12 + 5 steps", "to tol 1e-6")
                          for s in (0.0, 1.0)}
    assert grads["to tol 1e-6", 0.0] == (1.0, 1.0)  # the reference itself
    ratio, cosine = grads["to tol 1e-6", 1.0]  # the equilibria, and so EP, do not depend on τ
    assert ratio == pytest.approx(1.0, abs=2e-3) and cosine >= 0.9999
    for spread in (0.0, 1.0):
        ratio, cosine = grads["budget 12 + 5 steps", spread]
        assert 0 < ratio and 0 < cosine <= 1
    assert grads["budget 12 + 5 steps", 1.0][1] < grads["budget 12 + 5 steps", 0.0][1]


def test_hts_path_check_names_what_is_wrong_with_its_run_folder(tmp_path, monkeypatch):
    script = str(EXAMPLES / "hts_path_check.py")
    write_config(tmp_path / "map" / "config.toml", "relax.dt=0")  # the τ-free map: no τ steps
    (tmp_path / "empty").mkdir()
    for folder, message in (("map", "relax.dt must be positive"),
                            ("empty", "config.toml does not exist")):
        monkeypatch.setattr(sys, "argv", [script, str(tmp_path / folder)])
        with pytest.raises(SystemExit, match=message):
            runpy.run_path(script, run_name="__main__")


# ----------------------------------------------------------------------------- hts_report


def sweep(config: pathlib.Path, out: pathlib.Path, spreads: str, lrs: str, seeds: str) -> None:
    assert ctep_main(["sweep", "--config", str(config), "--grid", f"tau.spread={spreads}",
                      "--grid", f"optimizer.lr={lrs}", "--grid", f"seed={seeds}",
                      "--out", str(out)]) == 0


def expected_panel(parts: list[xr.Dataset]) -> dict[float, dict]:
    """Per τ spread, what the report's table row must say, from the sweeps' arrays: failed
    counts, the cell text per lr, and the largest lr whose seeds all trained (none failed, all
    within 10 points of the best cell's mean)."""
    cells, best = {}, -math.inf
    for ds in parts:
        for lr in ds["optimizer_lr"].values:
            for spread in ds["tau_spread"].values:
                at = {"tau_spread": spread, "optimizer_lr": lr}
                fin = ds["finished"].sel(at).values == 1
                failed = fin & ((ds["diverged"].sel(at).values == 1)
                                | (ds["collapsed"].sel(at).values == 1))
                acc = ds["final_test_acc"].sel(at).values
                good = acc[fin & ~failed]
                cells[float(spread), float(lr)] = (acc[fin], good, int(failed.sum()),
                                                   int(fin.sum()))
                if good.size:
                    best = max(best, float(good.mean()))
    rows = {}
    for spread in sorted({s for s, _ in cells}):
        texts, trains = {}, []
        for (s, lr), (acc, good, k, n) in sorted(cells.items()):
            if s != spread:
                continue
            if good.size == 0:
                text = "–"
            elif good.size == 1:
                text = f"{100 * good.mean():.1f}"
            else:
                text = f"{100 * good.mean():.1f} ± {100 * good.std(ddof=1):.1f}"
            texts[lr] = text + (f" [{k}/{n}]" if k else "")
            if n and k == 0 and np.all(acc >= best - 0.10):
                trains.append(lr)
        rows[spread] = {"texts": texts, "largest": max(trains) if trains else None,
                        "failed": sum(c[2] for (s, _), c in cells.items() if s == spread),
                        "n": sum(c[3] for (s, _), c in cells.items() if s == spread)}
    return rows


def test_hts_report_table_and_figures_from_tiny_sweeps(tmp_path):
    budget = write_config(tmp_path / "cfg" / "budget.toml")
    tol = write_config(tmp_path / "cfg" / "tol.toml", *TO_TOLERANCE)
    out = tmp_path / "hts"
    sweep(budget, out / "mnist_budget", "[0.0, 1.0]", "[0.1]", "[0, 1]")
    # more learning rates, joined along lr: 30 trains badly (> 10 points below the best), 1e6
    # collapses to chance
    sweep(budget, out / "mnist_budget_more_lr", "[0.0, 1.0]", "[30.0, 1e6]", "[0, 1]")
    sweep(tol, out / "fmnist_tol", "[0.0, 1.0]", "[0.1]", "[0, 1]")
    # another dt: not part of the tables (its lr would show up as a column)
    matched = write_config(tmp_path / "cfg" / "matched.toml", "relax.dt=0.434")
    sweep(matched, out / "mnist_budget_matched_step", "[0.0]", "[0.05]", "[0]")

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_example("hts_report.py", str(out), "--figures", str(tmp_path / "figs"),
                       "--table", str(tmp_path / "table.md"), cwd=cwd)
    assert only_data_root_left(cwd)
    table = (tmp_path / "table.md").read_text()
    assert proc.stdout.startswith(table)
    assert proc.stdout[len(table):].split() == [
        "wrote", str(tmp_path / "figs" / "hts_accuracy.png"),
        "wrote", str(tmp_path / "figs" / "hts_failures.png")]
    titles = re.findall(r"^\*\*(.*?)\*\*", table, re.M)
    assert titles == ["MNIST, (a) fixed budget 12 + 5 steps/phase, dt 0.5",
                      "Fashion-MNIST, (b) to tolerance 1e-3, dt 0.5"]
    assert "lr 0.05" not in table

    panels = {"MNIST": ["mnist_budget", "mnist_budget_more_lr"], "Fashion-MNIST": ["fmnist_tol"]}
    for (name, folders), title in zip(panels.items(), titles, strict=True):
        parts = [xr.load_dataset(out / f / "results.nc") for f in folders]
        lrs = sorted(float(v) for ds in parts for v in ds["optimizer_lr"].values)
        body = table.split(f"**{title}**", 1)[1]
        header = next(line for line in body.splitlines() if line.startswith("| τ spread"))
        assert [c.strip() for c in header.strip("|").split("|")][4:-3] == [
            f"lr {lr:g}" for lr in lrs]
        expected = expected_panel(parts)
        rows = markdown_rows(body, "| τ spread")
        assert [float(r[0]) for r in rows] == sorted(expected)
        for row in rows:
            spread = float(row[0])
            want = expected[spread]
            step = np.concatenate([ds["mean_step"].sel(tau_spread=spread).values.ravel()
                                   for ds in parts]).mean()
            assert row[1] == f"{step:.3f}"
            assert row[3] == f"{want['failed']}/{want['n']} (0)"
            assert row[4:4 + len(lrs)] == [want["texts"][lr] for lr in lrs]
            largest = want["largest"]
            assert row[4 + len(lrs)] == ("none" if largest is None else f"{largest:g}")
            nfe = float(row[-1])
            assert nfe > 0
            if spread == 0.0:
                assert row[1] == "0.500" and row[2] == "1"  # homogeneous: dt/τ = 0.5
            else:
                assert float(row[1]) < 0.5 and float(row[2]) > 1
        if name == "MNIST":
            for row in rows:  # lr 0.1 trains; lr 30 ends far below it; 1e6 collapses
                assert row[4 + len(lrs)] == "0.1"
                assert row[3] == "2/6 (0)" and row[4 + lrs.index(1e6)] == "– [2/2]"
    # the tolerance regime relaxes further than the budget, so costs more per sample
    nfe = {title: float(markdown_rows(table.split(f"**{title}**", 1)[1], "| τ spread")[0][-1])
           for title in titles}
    assert nfe[titles[1]] > nfe[titles[0]]

    for kind in ("accuracy", "failures"):
        path = tmp_path / "figs" / f"hts_{kind}.png"
        assert png_size(path) == (720, 540)  # 8 x 6 inches at 90 dpi
        assert path.stat().st_size > 20_000


def test_hts_report_names_the_missing_sweeps(tmp_path):
    module = runpy.run_path(str(EXAMPLES / "hts_report.py"))  # not as __main__: no run
    with pytest.raises(SystemExit, match=r"no results.nc under .*/<dataset>_<regime>/"):
        module["load"](tmp_path)


def test_hts_report_refuses_sweeps_it_cannot_read_or_join(tmp_path):
    """Sweeps without a seed axis, joined sweeps from different base configs and a learning
    rate in two joined sweeps are errors naming the folders (they were a KeyError or a
    ValueError from deep inside xarray). Joined sweeps may differ in the gridded keys' base
    values, which the grid overrides."""
    load = runpy.run_path(str(EXAMPLES / "hts_report.py"))["load"]
    budget = write_config(tmp_path / "cfg" / "budget.toml")
    shorter = write_config(tmp_path / "cfg" / "shorter.toml", "relax.free_steps=8")
    other_lr = write_config(tmp_path / "cfg" / "other_lr.toml", "optimizer.lr=0.7",
                            "model.seed=3", "tau.spread=0.5")

    no_seed = tmp_path / "no_seed"
    assert ctep_main(["sweep", "--config", str(budget), "--grid", "tau.spread=[0.0]", "--grid",
                      "optimizer.lr=[0.1]", "--out", str(no_seed / "mnist_tol")]) == 0
    with pytest.raises(SystemExit, match=r"mnist_tol: not swept over seed"):
        load(no_seed)

    joined = tmp_path / "joined"
    sweep(budget, joined / "fmnist_budget", "[0.0]", "[0.1]", "[0]")
    sweep(other_lr, joined / "fmnist_budget_more_lr", "[0.0]", "[0.3]", "[0]")
    assert list(load(joined)["fmnist", "budget"]["optimizer_lr"].values) == [0.1, 0.3]
    sweep(shorter, joined / "fmnist_budget_more_lr2", "[0.0]", "[0.5]", "[0]")
    with pytest.raises(SystemExit, match=r"fmnist_budget_more_lr2 was swept from another base "
                                         r"config than .*fmnist_budget\b.*relax.free_steps"):
        load(joined)

    twice = tmp_path / "twice"
    sweep(budget, twice / "mnist_budget", "[0.0]", "[0.1]", "[0]")
    sweep(budget, twice / "mnist_budget_more_lr", "[0.0]", "[0.1]", "[0]")
    with pytest.raises(SystemExit, match=r"learning rate 0.1 is in both .*mnist_budget and "
                                         r".*mnist_budget_more_lr"):
        load(twice)


# ----------------------------------------------------------------------------- hts_study.sh


RECORDER = """#!{python}
import json, os, sys
with open(os.environ["STUDY_CALLS"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_hts_study_script_parses_and_names_valid_configs_grids_and_folders(tmp_path):
    """Runs hts_study.sh with CTEP and PY replaced by a recorder of their arguments (nothing is
    trained), then checks every recorded ``ctep sweep`` call as the sweep command would: its
    config loads, its grid parses, every grid point is a valid config; and that the folders are
    the ones hts_report joins (no learning rate twice in a panel, the same spreads and seeds)."""
    script = EXAMPLES / "hts_study.sh"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    recorder = tmp_path / "record"
    recorder.write_text(RECORDER.format(python=sys.executable))
    recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    calls_file = tmp_path / "calls.jsonl"
    out = "runs/hts_under_test"
    env = {**os.environ, "CTEP": str(recorder), "PY": str(recorder),
           "STUDY_CALLS": str(calls_file)}
    proc = subprocess.run(["bash", str(script), out], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (REPO / out).exists()
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    *sweeps, report = calls
    assert report == ["examples/hts_report.py", out, "--figures", "docs/figures", "--table",
                      f"{out}/table.md"]
    assert (REPO / report[0]).is_file()

    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    grids = {}
    for call in sweeps:
        assert call[0] == "sweep"
        args = parser.parse_args(call[1:])
        config = REPO / args.config
        assert config.is_file(), f"{args.config} does not exist"
        base = load_config(config, args.overrides)
        grid = parse_grid(args.grid)
        assert [k for k, _ in grid] == ["tau.spread", "optimizer.lr", "seed"]
        for point in expand_grid(grid):
            point_config(base, point)
        folder = args.out.relative_to(out).as_posix()
        assert folder not in grids, f"two sweeps write {folder}"
        grids[folder] = (dict(grid), base)
    main = [f"{ds}_{regime}" for ds in ("mnist", "fmnist") for regime in ("budget", "tol")]
    assert set(main) <= set(grids)
    for name in main:
        values, base = grids[name]
        lrs = list(values["optimizer.lr"])
        for extra in sorted(f for f in grids if f.startswith(f"{name}_more_lr")):
            more, more_base = grids[extra]
            assert more_base == base  # joined along lr with the same config
            assert more["tau.spread"] == values["tau.spread"] and more["seed"] == values["seed"]
            lrs += list(more["optimizer.lr"])
        assert len(set(lrs)) == len(lrs), f"{name}: a learning rate twice"
    # the other sweeps (another dt) are left out of the report's tables by their names
    others = set(grids) - set(main) - {f for f in grids if "_more_lr" in f}
    assert others and all(f.endswith("_matched_step") for f in others)
