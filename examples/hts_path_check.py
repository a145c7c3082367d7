"""Inference-only check of the HTS study (docs/hts.md): one trained network, several τ draws.

Usage: python examples/hts_path_check.py RUN_FOLDER [--spreads 0 0.5 1] [--seed 0]
       [--at-init] [--grad-samples N]   (a quick run: --spreads 0 1 --grad-samples 32)

Loads the weights of a finished ``ctep train`` / ``ctep sweep`` run, casts the network to
float64, and relaxes the run's test split with the per-neuron map (h_i = min(1, damping·dt/τ_i),
the run's ``relax.dt`` and ``relax.damping``) for log-normal τ of several spreads (mean rate
normalised as in the run).
For each spread and each relaxation — the run's fixed budget of free steps, and to tolerance
1e-3 and 1e-6 — it prints the test accuracy, the fraction of predictions equal to those of the
reference (homogeneous τ relaxed to 1e-10), the largest state difference from the reference and
the mean number of steps. It then estimates the run's EP gradient (its estimator and β) on
``--grad-samples`` training samples, with the fixed budget of free and nudged steps and to
tolerance 1e-6, and prints its norm relative to, and its cosine with, the homogeneous gradient
to tolerance. Theory (THEORY §2.1): to tolerance, only the path depends on τ, so
states agree with the reference up to about the tolerance and predictions agree except for
samples whose two highest outputs are that close; with a fixed budget the states are wherever
the path has got to, and τ changes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import torch

from ctep import RelaxConfig, VectorField, relax
from ctep.estimators import get_estimator
from ctep.reference import compare
from ctep.solve import Status
from ctep.train import CheckpointError, load_checkpoint, load_config
from ctep.train.batches import load_train_data
from ctep.train.build import build_field, build_tau


def relax_split(field, x, *, dt, damping, steps, tol, check_every, chunk=1000):
    """Free-phase states of the whole split (last layer), steps and convergence per sample."""
    outs, steps_all, ok = [], [], []
    for i in range(0, len(x), chunk):
        eq = relax(field.bind(x[i:i + chunk]), method="fixed_point", dt=dt, damping=damping,
                   tol=tol, max_steps=steps, check_every=check_every)
        outs.append(eq.states[-1])
        steps_all.append(eq.steps)
        ok.append(eq.status == int(Status.CONVERGED))
    return torch.cat(outs), torch.cat(steps_all).double(), torch.cat(ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=pathlib.Path, help="a finished run folder")
    parser.add_argument("--spreads", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the τ draws")
    parser.add_argument("--at-init", action="store_true",
                        help="use the run's initial weights (its config's seeds) instead of "
                             "the trained ones")
    parser.add_argument("--grad-samples", type=int, default=500,
                        help="training samples of the gradient check (0: skip it)")
    args = parser.parse_args()
    if not args.run.is_dir():
        parser.error(f"run folder {args.run} does not exist")
    if args.grad_samples < 0:
        parser.error(f"--grad-samples must be ≥ 0, got {args.grad_samples}")
    try:
        cfg = load_config(args.run / "config.toml")
        if not cfg.relax.dt > 0:
            raise ValueError(f"the run's relax.dt must be positive (per-neuron steps), got "
                             f"{cfg.relax.dt:g}")
        torch.set_num_threads(1)
        data = load_train_data(cfg.data, cfg.model)
        field = build_field(cfg, data.input_shape, data.n_classes)
        if not args.at_init:
            field.load_state_dict(load_checkpoint(args.run / "checkpoint.pt")["model"])
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        raise SystemExit(f"hts_path_check: {args.run}: {exc}") from exc
    energy, cost = field.energy.double(), field.cost.double()
    x, y = data.test.batch(torch.arange(len(data.test)))
    x = x.double()
    dt = cfg.relax.dt

    def field_for(spread: float) -> VectorField:
        tau_cfg = dataclasses.replace(cfg.tau, spread=spread, seed=args.seed, per_layer=[])
        tau = build_tau(dataclasses.replace(cfg, tau=tau_cfg), energy.state_shapes,
                        torch.float64)
        return VectorField(energy, cost, tau)

    damping = cfg.relax.damping
    ref_out, _, ref_ok = relax_split(field_for(0.0), x, dt=dt, damping=damping, steps=20_000,
                                     tol=1e-10, check_every=5)
    ref_pred = cost.predict(ref_out)
    print(f"run {args.run} ({'initial' if args.at_init else 'trained'} weights): {len(y)} "
          f"test samples; reference (τ ≡ {cfg.tau.mean:g}, to 1e-10): "
          f"accuracy {100 * float((ref_pred == y).double().mean()):.2f}%, "
          f"{int(ref_ok.sum())} converged")
    print()
    print("| relaxation | τ spread | accuracy (%) | predictions = reference | "
          "max abs state diff | mean steps | converged |")
    print("|---|---|---|---|---|---|---|")
    regimes = [(f"budget {cfg.relax.free_steps} steps", cfg.relax.free_steps, 1e-3, 0),
               ("to tol 1e-3", 20_000, 1e-3, 2), ("to tol 1e-6", 20_000, 1e-6, 2)]
    for label, steps, tol, check in regimes:
        for spread in args.spreads:
            out, n_steps, ok = relax_split(field_for(spread), x, dt=dt, damping=damping,
                                           steps=steps, tol=tol, check_every=check)
            pred = cost.predict(out)
            acc = float((pred == y).double().mean())
            agree = float((pred == ref_pred).double().mean())
            diff = float((out - ref_out).abs().max())
            print(f"| {label} | {spread:g} | {100 * acc:.2f} | {100 * agree:.2f}% | "
                  f"{diff:.1e} | {float(n_steps.mean()):.1f} | "
                  f"{100 * float(ok.double().mean()):.1f}% |")
    if args.grad_samples > 0:
        gradient_check(cfg, data, field_for, args.spreads, args.grad_samples, dt)


def gradient_check(cfg, data, field_for, spreads, n: int, dt: float) -> None:
    """EP gradients of one batch of training samples for each τ spread and relaxation, against
    the homogeneous gradient relaxed to 1e-6."""
    x, y = data.train.batch(torch.arange(min(n, len(data.train))))
    x = x.double()
    r = cfg.relax
    fixed = RelaxConfig(method="fixed_point", dt=dt, damping=r.damping, tol=r.tol, check_every=0)
    budget = (fixed.replace(max_steps=r.free_steps), fixed.replace(max_steps=r.nudged_steps))
    exact = fixed.replace(tol=1e-6, check_every=2, max_steps=20_000)
    e = cfg.estimator

    def grads(spread: float, phases) -> tuple[torch.Tensor, ...]:
        est = get_estimator(e.name, e.beta, relax=phases[0], nudged_relax=phases[1],
                            on_failure="mask")
        return est(field_for(spread), x, y).grads

    def norm(g: tuple[torch.Tensor, ...]) -> float:
        return float(torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in g])))

    ref = grads(0.0, (exact, exact))
    ref_norm = norm(ref)
    print()
    print(f"EP gradient ({e.name}, β = {e.beta:g}) on {len(y)} training samples, against the "
          "homogeneous gradient relaxed to 1e-6:")
    print()
    print("| relaxation | τ spread | ‖g‖ / ‖g_ref‖ | cosine(g, g_ref) |")
    print("|---|---|---|---|")
    labels = ((f"budget {r.free_steps} + {r.nudged_steps} steps", budget),
              ("to tol 1e-6", (exact, exact)))
    for label, phases in labels:
        for spread in sorted({0.0, *spreads}):
            g = grads(spread, phases)
            print(f"| {label} | {spread:g} | {norm(g) / ref_norm:.3f} | "
                  f"{compare(g, ref)['cosine']:.4f} |")


if __name__ == "__main__":
    main()
