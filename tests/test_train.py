"""Training: config, batches, trainer modes, run folder, checkpoints, resume, CLI, torchrun."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import xarray as xr

from ctep import relax
from ctep.cli import main as ctep_main
from ctep.data import get_spec, resolve_data_root
from ctep.estimators import ESTIMATORS, canonical_name
from ctep.models import model_options
from ctep.train import CheckpointError, Trainer, TrainingDiverged, load_checkpoint, load_config
from ctep.train.batches import epoch_order, shard, train_batches
from ctep.train.build import (
    build_estimator,
    build_field,
    build_optimizer,
    layer_groups,
    lr_factor,
    relax_configs,
)
from ctep.train.config import ADDED_KEYS, TrainConfig, apply_override
from ctep.train.metrics import COLUMNS, read_metrics_csv

SYNTHETIC = [
    'data.name="synthetic"', "data.synthetic_features=20", "data.synthetic_classes=4",
    "data.synthetic_train=192", "data.synthetic_test=96", "data.batch_size=16",
    "data.test_batch_size=64", "model.hidden=[16]", 'model.activation="sigmoid"',
    'model.dtype="float64"', "model.init_scale=0.5", "relax.free_steps=15",
    "relax.nudged_steps=6", "estimator.beta=0.5", "optimizer.lr=0.2", "train.epochs=2",
    "train.progress=false",
]


def synthetic(*extra: str) -> TrainConfig:
    return load_config(None, [*SYNTHETIC, *extra])


def final_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.field.state_dict().items()}


# ----------------------------------------------------------------------------- config


def test_config_round_trips_through_toml(tmp_path):
    cfg = synthetic("optimizer.lr=[0.1, 0.05]", 'schedule.name="cosine"')
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    again = load_config(path)
    assert again == cfg
    assert again.optimizer.lr == [0.1, 0.05]


@pytest.mark.parametrize("item, message", [
    ("model.widths=[3]", "unknown key"),
    ("modle.hidden=[3]", "unknown config section"),
    ("data.batch_size=0", "batch_size"),
    ("data.batch_size=1.5", "must be an integer"),
    ("train.progress=1", "true or false"),
    ('train.mode="sgd"', "train.mode"),
    ("estimator.beta=-1", "beta"),
    ("relax.tol=-1e-3", "relax.tol must be finite and ≥ 0"),
    ("relax.tol=inf", "relax.tol must be finite and ≥ 0"),
    ("optimizer.lr=[0.1, -1]", "optimizer.lr"),
    ('model.dtype="float16"', "model.dtype"),
    ("model.hidden=[2.5]", "integer widths"),
    ('model.hidden=["8"]', "integer widths"),
    ("model.init_scale=0", "init_scale"),
    ("tau.mean=0", "tau.mean"),
    ("tau.per_layer=[0.5, -1]", "per_layer"),
    ("relax.damping=1.5", "damping"),
    ("estimator.points=0", "points"),
    ("optimizer.momentum=1", "momentum"),
    ("optimizer.momentum=0", "nesterov"),  # with the nesterov=true below
    ("optimizer.betas=[0.9]", "betas"),
    ("schedule.step_size=0", "step_size"),
    ("schedule.eta_min=2", "eta_min"),
    ("train.bptt_steps=-1", "bptt_steps"),
    ("data.synthetic_classes=1", "data.synthetic_classes must be ≥ 2, got 1"),
    ("data.synthetic_test=0", "data.synthetic_test must be ≥ 1, got 0"),
    ('relax.method="exp_euler"', "unrolls the fixed_point map"),  # with mode bptt below
    ("relax.memory=0", "relax.memory"),
])
def test_bad_config_values_are_named(item, message):
    extra = {"nesterov": ["optimizer.nesterov=true"],
             "unrolls the fixed_point map": ['train.mode="bptt"']}.get(message, [])
    with pytest.raises(ValueError, match=message):
        synthetic(item, *extra)


def test_relax_tol_zero_is_allowed_as_in_the_api():
    """One rule with RelaxConfig: tol = 0 runs every phase's whole budget."""
    cfg = synthetic("relax.tol=0")
    cfg.validate()
    assert cfg.relax.tol == 0.0


def test_override_parsing():
    raw: dict = {}
    apply_override(raw, "optimizer.lr=[0.1,0.05]")
    apply_override(raw, "schedule.name=cosine")  # a bare word is a string
    apply_override(raw, "data.root=/some/where")
    assert raw == {"optimizer": {"lr": [0.1, 0.05]}, "schedule": {"name": "cosine"},
                   "data": {"root": "/some/where"}}
    with pytest.raises(ValueError, match="section.key=value"):
        apply_override(raw, "lr=3")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("/nonexistent/config.toml")


def test_invalid_toml_file_is_reported(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nname = 1")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)


def test_learning_rate_schedules():
    cos = synthetic('schedule.name="cosine"', "train.epochs=4", "schedule.eta_min=0.1")
    assert [round(lr_factor(cos, e), 6) for e in range(4)] == [
        1.0, round(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 6), 0.55,
        round(0.1 + 0.9 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 6)]
    step = synthetic('schedule.name="step"', "schedule.step_size=2", "schedule.gamma=0.5",
                     "train.epochs=5")
    assert [lr_factor(step, e) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    warm = synthetic("schedule.warmup_epochs=2", "train.epochs=4")
    assert [lr_factor(warm, e) for e in range(4)] == [1 / 3, 2 / 3, 1, 1]


def test_per_layer_learning_rates():
    trainer = Trainer(synthetic("model.hidden=[8, 6]", "optimizer.lr=[0.3, 0.2, 0.1]"))
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.3, 0.2, 0.1]
    assert [len(g["params"]) for g in groups] == [2, 2, 2]  # weight and bias per layer
    ce = synthetic('cost.name="cross_entropy"', "cost.readout=true", "optimizer.lr=[0.1, 0.01]")
    field = Trainer(ce).field
    assert len(layer_groups(field)) == 2  # one hidden layer, then the read-out
    with pytest.raises(ValueError, match="one rate per layer"):
        build_optimizer(synthetic("optimizer.lr=[0.1, 0.2, 0.3]"), field)


# ----------------------------------------------------------------------------- batches


def test_batch_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 2))
    assert not torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 1))
    full = [idx for _, idx in train_batches(50, 8, seed=1, epoch=0)]
    assert torch.equal(torch.cat(full).sort().values, torch.arange(50))
    resumed = [idx for _, idx in train_batches(50, 8, seed=1, epoch=0, start=3)]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed, strict=True))
    for world in (2, 3):  # the shards of every rank make up the global batch, in order
        shards = [[idx for _, idx in train_batches(50, 8, 1, 0, rank=r, world=world)]
                  for r in range(world)]
        for b, whole in enumerate(full):
            assert torch.equal(torch.cat([shards[r][b] for r in range(world)]), whole)
    assert [len(shard(torch.arange(5), r, 2)) for r in range(2)] == [2, 3]


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("mode, extra", [
    ("ep", ('estimator.name="centered"',)),
    ("ep", ('estimator.name="one-sided"', "estimator.random_sign=true")),
    ("ep", ('cost.name="cross_entropy"', "cost.readout=true", "optimizer.lr=[0.2, 0.05]")),
    ("ep", ("tau.distribution=\"lognormal\"", "tau.spread=1.0", 'relax.method="exp_euler"',
            "relax.free_steps=40", "relax.nudged_steps=15", "relax.check_every=5",
            "relax.tol=1e-6")),
    ("ep", ('relax.method="anderson"', "relax.memory=3", "relax.free_steps=15",
            "relax.nudged_steps=6")),
    ("bp", ()),
    ("bptt", ("train.bptt_steps=15",)),
])
def test_every_mode_learns_the_synthetic_task(tmp_path, mode, extra):
    history = Trainer(synthetic(f'train.mode="{mode}"', *extra), tmp_path / "run").run()
    assert len(history) == 2
    assert history[-1]["test_acc"] >= 0.95, history
    assert history[-1]["loss"] < history[0]["loss"]
    if mode == "ep":
        assert history[-1]["nfe"] > 0 and history[-1]["diverged"] == 0


def test_run_folder_contents(tmp_path):
    out = tmp_path / "run"
    cfg = synthetic("data.val_fraction=0.25")
    history = Trainer(cfg, out).run()
    assert load_config(out / "config.toml") == cfg
    rows = read_metrics_csv(out / "metrics.csv")
    assert len(rows) == 2 and list(rows[0]) == list(COLUMNS)
    for row, h in zip(rows, history, strict=True):
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["val_acc"] <= 1
        assert row["test_acc"] == pytest.approx(h["test_acc"])
    ds = xr.open_dataset(out / "metrics.nc")
    assert list(ds["epoch"].values) == [1, 2]
    assert float(ds["test_acc"][-1]) == pytest.approx(history[-1]["test_acc"])
    assert "config" in ds.attrs
    ds.close()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["batch"] == 0
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    # one-sided EP with a random sign: the estimator's generator must be restored too
    extra = ('estimator.name="one-sided"', "estimator.random_sign=true",
             "train.checkpoint_every=3", "optimizer.momentum=0.9")
    whole = Trainer(synthetic(*extra), tmp_path / "whole")
    whole.run()
    killed = Trainer(synthetic(*extra), tmp_path / "killed")
    killed.run(stop_after_batches=12 + 5)  # epoch 1 has 12 batches: stop after batch 5 of 2
    state = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert (state["epoch"], state["batch"]) == (1, 3)  # the last checkpoint: batch 3
    resumed = Trainer(synthetic(*extra), tmp_path / "killed", resume=True)
    resumed.run()
    a, b = final_weights(whole), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for ha, hb in zip(whole.history, resumed.history, strict=True):
        assert {k: v for k, v in ha.items() if k != "seconds"} == \
               {k: v for k, v in hb.items() if k != "seconds"}


def test_existing_run_needs_resume_and_the_same_config(tmp_path):
    out = tmp_path / "run"
    Trainer(synthetic("train.epochs=1"), out).run()
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(synthetic("train.epochs=1"), out)
    with pytest.raises(CheckpointError, match=r"\['optimizer'\] differ"):
        Trainer(synthetic("train.epochs=2", "optimizer.lr=0.5"), out, resume=True)
    with pytest.raises(CheckpointError, match=r"train.mode"):
        Trainer(synthetic("train.epochs=2", 'train.mode="bp"'), out, resume=True)
    more = Trainer(synthetic("train.epochs=2"), out, resume=True)  # extending is allowed
    assert len(more.run()) == 2
    assert load_config(out / "config.toml").train.epochs == 2  # the folder's config follows


def test_a_checkpoint_written_before_relax_memory_existed_resumes(tmp_path):
    """A checkpoint whose config has no ``relax.memory`` (written before the key existed) is
    the same config as today's with its default; a different memory is still refused."""
    out = tmp_path / "run"
    Trainer(synthetic("train.epochs=1"), out).run()
    state = load_checkpoint(out / "checkpoint.pt")
    del state["config"]["relax"]["memory"]
    torch.save(state, out / "checkpoint.pt")
    assert len(Trainer(synthetic("train.epochs=2"), out, resume=True).run()) == 2
    with pytest.raises(CheckpointError, match=r"\['relax'\] differ"):
        Trainer(synthetic("train.epochs=3", "relax.memory=3"), out, resume=True)


def test_added_keys_carry_their_defaults():
    """Each key that a saved config may lack is read with today's default."""
    defaults = TrainConfig().to_dict()
    for dotted, value in ADDED_KEYS.items():
        section, key = dotted.split(".")
        assert defaults[section][key] == value, dotted


def test_corrupt_and_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(synthetic(), tmp_path / "empty", resume=True)
    out = tmp_path / "run"
    Trainer(synthetic("train.epochs=1"), out).run()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(synthetic("train.epochs=1"), out, resume=True)
    torch.save({"weights": torch.zeros(2)}, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a ctep training checkpoint"):
        load_checkpoint(out / "checkpoint.pt")


def test_divergence_stops_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = synthetic('model.activation="identity"', "model.init_scale=3.0", "optimizer.lr=1e6",
                    "train.checkpoint_every=1", 'train.mode="bp"')
    trainer = Trainer(cfg, out)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        trainer.run()
    state = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_every_relaxation_of_training_holds_the_current_weights(monkeypatch):
    """The trainer binds per phase and per batch, so no relaxation drives with the input term of
    weights from before an optimizer step: at every relaxation (EP phases and evaluation) the
    bound term equals the one the weights give now."""
    import ctep.estimators
    import ctep.train.trainer

    trainer = Trainer(synthetic("train.epochs=2"))
    energy = trainer.field.energy
    seen = {"n": 0}

    def checked(original):
        def relax(field, *args, **kwargs):
            with torch.no_grad():
                assert torch.equal(field.input_term, energy.input_term(field.x))
            seen["n"] += 1
            return original(field, *args, **kwargs)
        return relax

    for module in (ctep.estimators, ctep.train.trainer):
        monkeypatch.setattr(module, "relax", checked(module.relax))
    before = energy.weights[0].detach().clone()
    trainer.run()
    assert seen["n"] > 4
    assert not torch.equal(energy.weights[0], before)


# ----------------------------------------------------------------------------- CLI


def write_config(tmp_path: pathlib.Path, *extra: str) -> pathlib.Path:
    raw: dict = {}
    for item in (*SYNTHETIC, *extra):
        apply_override(raw, item)
    path = tmp_path / "synthetic.toml"
    path.write_text(TrainConfig.from_dict(raw).to_toml())
    return path


def test_cli_train_and_resume(tmp_path, capsys):
    config = write_config(tmp_path, "train.epochs=1")
    out = tmp_path / "run"
    assert ctep_main(["train", "--config", str(config), "--out", str(out)]) == 0
    assert "test_acc" in capsys.readouterr().out
    assert ctep_main(["train", "--config", str(config), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert ctep_main(["train", "--out", str(out), "--resume", "--set", "train.epochs=2"]) == 0
    assert len(read_metrics_csv(out / "metrics.csv")) == 2
    assert ctep_main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_reports_missing_data(tmp_path, capsys):
    config = write_config(tmp_path, 'data.name="mnist"')
    code = ctep_main(["train", "--config", str(config), "--out", str(tmp_path / "r"),
                      "--data-root", str(tmp_path / "nodata")])
    err = capsys.readouterr().err
    assert code == 2 and "data not found" in err and str(tmp_path / "nodata") in err


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_cli_help_does_not_import_heavy_packages(argv):
    """Building the parser (every subcommand's) must not import torchvision, matplotlib or
    xarray: subcommand modules import them inside run()."""
    probe = ("import sys\nfrom ctep.cli import main\ntry:\n    main(sys.argv[1:])\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torchvision', 'matplotlib', 'xarray') "
             "if m in sys.modules))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", probe, *argv], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _mnist_root() -> pathlib.Path | None:
    root = resolve_data_root(None)
    if (root / "MNIST" / "raw").is_dir():
        return root
    fallback = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
    return fallback if (fallback / "MNIST" / "raw").is_dir() else None


def test_real_mnist_through_the_cli(tmp_path):
    root = _mnist_root()
    if root is None:
        pytest.skip("MNIST not found in CTEP_DATA or ../shared/data")
    config = pathlib.Path(__file__).resolve().parents[1] / "examples/configs/mnist_quick.toml"
    out = tmp_path / "run"
    assert ctep_main(["train", "--config", str(config), "--out", str(out), "--data-root",
                      str(root), "--set", "data.train_subset=400", "--set",
                      "data.test_subset=300", "--no-progress"]) == 0
    row = read_metrics_csv(out / "metrics.csv")[0]
    assert row["test_acc"] > 0.5  # 400 samples, one epoch: well above chance (0.1)


# ----------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_equal_one_process(tmp_path):
    """gloo, 2 CPU processes, each on half of every global batch: the same weights as one
    process on the whole batch (up to the order of floating-point sums)."""
    # 181 samples: the last global batch holds one sample, so rank 0's shard of it is empty;
    # a mid-epoch checkpoint exercises the summing of the ranks' partial metrics
    config = write_config(tmp_path, "train.epochs=1", "data.batch_size=15",
                          "data.synthetic_train=181", "train.checkpoint_every=5")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "ctep", "train", "--config", str(config), "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = Trainer(load_config(config), tmp_path / "single")
    single.run()
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    for k, v in single.field.state_dict().items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-10, atol=1e-12)
    assert ddp["history"][0]["test_acc"] == pytest.approx(single.history[0]["test_acc"])
    assert ddp["history"][0]["loss"] == pytest.approx(single.history[0]["loss"], rel=1e-10)


def test_registry_models_train_through_the_config(tmp_path):
    """Other kinds come from ctep.models: the dendritic net learns; options round-trip."""
    cfg = synthetic('model.kind="dendritic"', 'model.activation="hard_sigmoid"',
                    "model.init_scale=1.0", "model.options={branches=8, sparsity=0.5}")
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert load_config(path) == cfg
    history = Trainer(cfg).run()
    assert history[-1]["test_acc"] >= 0.95
    with pytest.raises(ValueError, match="no option"):
        Trainer(synthetic('model.kind="dendritic"', "model.options={wings=2}"))
    with pytest.raises(ValueError, match="may not set"):
        Trainer(synthetic("model.options={sizes=[3, 4]}"))
    with pytest.raises(ValueError, match="unknown model"):
        Trainer(synthetic('model.kind="transformer"'))
    with pytest.raises(ValueError, match="dense model"):
        Trainer(synthetic('model.kind="dendritic"', 'train.mode="bp"',
                          'model.activation="hard_sigmoid"')).run()


@pytest.mark.parametrize(("name", "options"), [
    ("one-sided", {"random_sign": True, "seed": 5}), ("vanilla", {"random_sign": True, "seed": 5}),
    ("centered", {}), ("symmetric", {}),
    ("holomorphic", {"points": 3}), ("finite_nudge", {"points": 3}),
    ("finitenudge", {"points": 3}), ("Finite-Nudge", {"points": 3}),
    ("langevin", {"seed": 5, "temperature": 0.02}),
    ("stochastic", {"seed": 5, "temperature": 0.02}),
])
def test_build_estimator_passes_each_alias_its_options(name, options):
    """Every spelling of a name gets the options its estimator takes: those of [estimator] that
    the constructor has (finitenudge used to get the default 4 points instead of 3)."""
    cfg = synthetic(f"estimator.name={name!r}".replace("'", '"'), "estimator.random_sign=true",
                    "estimator.points=3", "estimator.temperature=0.02", "estimator.seed=5",
                    'estimator.on_failure="raise"')
    est = build_estimator(cfg)
    key = canonical_name(name)
    assert type(est) is ESTIMATORS[key] and est.on_failure == "raise"
    free, nudged, _ = relax_configs(cfg)
    assert est.relax == free and est.nudged_relax == nudged
    if "points" in options:
        assert est.points == 3
    if "temperature" in options:
        assert est.temperature == 0.02
    if "random_sign" in options:
        assert est.random_sign is True
    if "seed" in options and key == "langevin":
        assert est.seed == 5
    elif "seed" in options:  # one-sided EP's sign generator was seeded with estimator.seed
        reference = ESTIMATORS[key](cfg.estimator.beta, **options)
        assert torch.equal(est._gen.get_state(), reference._gen.get_state())


@pytest.mark.parametrize("path", sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.toml")),
    ids=lambda p: p.stem)
def test_example_configs_load_and_build(path):
    """Every shipped config parses, validates, and builds its network and optimizer; the
    convolutional ones (image inputs, which the synthetic data set does not make) build at their
    data set's image shape and take one relaxation step on a random batch."""
    cfg = load_config(path)
    est = build_estimator(cfg)
    assert type(est) is ESTIMATORS[canonical_name(cfg.estimator.name)]
    assert est.beta == cfg.estimator.beta
    if "sizes" not in model_options(cfg.model.kind):
        spec = get_spec(cfg.data.name)
        field = build_field(cfg, spec.input_shape, spec.num_classes)
        assert len(build_optimizer(cfg, field).param_groups) >= 1
        x = torch.rand(2, *spec.input_shape, generator=torch.Generator().manual_seed(0))
        eq = relax(field.bind(x), method="fixed_point", max_steps=1, tol=0.0)
        assert all(bool(torch.isfinite(s).all()) for s in eq.states)
        assert tuple(eq.states[-1].shape) == (2, spec.num_classes)  # the read-out fits the data
        return
    cfg = load_config(path, ['data.name="synthetic"', "data.synthetic_features=784",
                             "data.synthetic_classes=10", "data.synthetic_train=8",
                             "data.synthetic_test=8", "data.train_subset=0",
                             "data.test_subset=0"])
    trainer = Trainer(cfg)
    assert len(trainer.optimizer.param_groups) >= 1
