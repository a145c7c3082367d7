"""benchmarks/epoch_time.py: the per-epoch timing of any config (issue 8's VGG5 target), run
here on the CPU at a tiny width, on synthetic images and on real MNIST files."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = os.environ.get("CTEP_DATA", str(ROOT.parent / "shared" / "data"))


def _script():
    spec = importlib.util.spec_from_file_location("epoch_time", ROOT / "benchmarks" /
                                                  "epoch_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vgg5_on_synthetic_cifar_images(capsys):
    result = _script().main([
        "--config", str(ROOT / "examples" / "configs" / "vgg5_cifar10.toml"),
        "--synthetic", "96", "--set", "model.options={channels=[4, 4, 8, 8]}",
        "--set", "data.batch_size=16", "--set", "relax.free_steps=3",
        "--set", "relax.nudged_steps=2", "--warmup", "1", "--batches", "1", "--rounds", "3",
        "--json"])
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    # each round on stderr as it ends (kept when a time limit stops the run)
    rounds = [line for line in captured.err.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in rounds] == ["round 1/3", "round 2/3", "round 3/3"]
    assert printed["epoch_batches"] == 6 and printed["data"] == "synthetic 96"
    assert len(printed["rounds_batch_ms"]) == 3 and min(printed["rounds_batch_ms"]) > 0
    assert printed["batch_ms"] == sorted(printed["rounds_batch_ms"])[1]  # the median
    assert math.isclose(printed["epoch_s"], printed["batch_ms"] * 6 / 1e3)
    assert result["device_name"] == "cpu" and "gpu_batch_ms" not in result


def test_more_batches_than_one_epoch_are_refused(capsys):
    with pytest.raises(SystemExit):
        _script().main(["--config", str(ROOT / "examples" / "configs" / "vgg5_cifar10.toml"),
                        "--synthetic", "32", "--set", "data.batch_size=16",
                        "--warmup", "1", "--batches", "1", "--rounds", "2"])
    assert "exceed one epoch of 2 batches" in capsys.readouterr().err


@pytest.mark.skipif(not (pathlib.Path(DATA) / "MNIST").is_dir(), reason="no MNIST files")
def test_dense_config_on_real_mnist(capsys):
    _script().main([
        "--config", str(ROOT / "examples" / "configs" / "mnist_784-512-10_laborieux.toml"),
        "--data-root", DATA, "--set", "data.train_subset=500", "--warmup", "1",
        "--batches", "2", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "| batch ms (median) | epoch s |" in out
    assert "| 10 |" in out  # 500 images in batches of 50
