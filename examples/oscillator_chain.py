"""Train a driven chain of anharmonic oscillators with Lagrangian EP to make its last
oscillator follow a target trajectory.

Four oscillators (unit masses, on-site springs k_i with a small quartic term, couplings κ_i)
are driven on oscillator 0 by periodic forces A cos(t + φ) (three drives, one per sample). The
periodic trajectory over 𝒯 = 2π is a stationary point — a saddle — of the discretised action;
Newton's method finds it. The target of oscillator 3 is the trajectory of a teacher chain with
other stiffnesses and couplings. Each step solves the free and the two nudged (±β) trajectories
warm-started from the previous free one, and Adam follows the centered EP gradient
(β = 0.01) of the tracking cost in k and κ. The run fails (exit status 1) unless the cost ends
at least 10 times lower than it started.

Run: python examples/oscillator_chain.py [--steps N]   (N Adam steps, default 150; 25 is a
quick run)
"""

import argparse
import math

import torch

from ctep.lagrangian import (
    DiscreteAction,
    NewtonConfig,
    OscillatorChain,
    TrackingCost,
    action_ep,
    implicit_action_gradient,
    solve_trajectory,
)
from ctep.reference import compare

STEPS = 48
#: the run fails unless the final cost is at most this fraction of the initial cost
REQUIRED_REDUCTION = 0.1


def chain(stiffness, coupling) -> DiscreteAction:
    lag = OscillatorChain(stiffness, coupling, anharmonicity=0.1)
    return DiscreteAction(lag, steps=STEPS, duration=2 * math.pi, boundary="periodic",
                          cost=TrackingCost([3], 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150,
                        help="Adam steps of the fit (default 150; 25 already lowers the cost "
                             "more than 10 times)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be ≥ 1, got {args.steps}")
    torch.set_default_dtype(torch.float64)
    cfg = NewtonConfig(tol=1e-10)

    teacher = chain([0.6, 1.8, 0.9, 2.4], [0.5, 0.3, 0.7])
    student = chain([1.0, 1.4, 1.2, 2.0], [0.3, 0.5, 0.4])
    t = student.times()
    amp = torch.tensor([[0.5], [0.7], [0.4]])
    phase = torch.tensor([[0.0], [1.0], [2.5]])
    x = (amp * torch.cos(t + phase)).unsqueeze(-1)  # (3 drives, 48 points, 1)

    target = solve_trajectory(teacher, x, config=cfg)
    target.check()
    y = target.path[..., 3:]

    free = solve_trajectory(student, x, config=cfg)
    free.check()
    s = free.summary()
    print(f"free trajectory: Hessian of the action has {s['hessian_negative_min']:.0f} negative "
          f"and {s['hessian_positive_min']:.0f} positive eigenvalues (a saddle), condition "
          f"{s['condition_max']:.0f}; Newton residual {s['residual_max']:.1e}")
    ref = implicit_action_gradient(student, x, y, free)
    est = action_ep(student, x, y, estimator="centered", beta=1e-2, config=cfg, free=free)
    print(f"centered EP (β = 0.01) vs implicit differentiation: rel. error "
          f"{compare(est.grads, ref)['rel_error']:.2e}")

    loss_before = float(est.loss.mean())
    optimizer = torch.optim.Adam(student.learnable_parameters(), lr=0.02)
    Q = free.Q
    every = max(1, args.steps // 6)
    for step in range(args.steps):
        est = action_ep(student, x, y, estimator="centered", beta=1e-2, config=cfg, Q0=Q)
        Q = est.free.Q
        optimizer.zero_grad()
        est.write_grads()
        optimizer.step()
        if step % every == 0:
            print(f"step {step:3d}  cost {float(est.loss.mean()):.3e}")

    final = solve_trajectory(student, x, Q0=Q, config=cfg)
    final.check()
    loss_after = float(student.cost_value(final.Q, y).mean())
    lag = student.lagrangian
    print(f"cost before {loss_before:.3e}  after {loss_after:.3e}  "
          f"(×{loss_before / loss_after:.0f} lower)")
    # one observed oscillator under single-frequency drives does not identify all seven
    # parameters: the fit matches the trajectory, not necessarily the teacher's k and κ
    print("stiffness", [round(v, 3) for v in lag.stiffness.tolist()],
          "(teacher 0.6, 1.8, 0.9, 2.4)")
    print("coupling ", [round(v, 3) for v in lag.coupling.tolist()], "(teacher 0.5, 0.3, 0.7)")
    if not loss_after <= REQUIRED_REDUCTION * loss_before:
        raise SystemExit(f"the cost fell only ×{loss_before / loss_after:.1f} in {args.steps} "
                         f"steps (at least ×{1 / REQUIRED_REDUCTION:.0f} expected)")


if __name__ == "__main__":
    main()
