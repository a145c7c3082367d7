"""Train a FitzHugh–Nagumo network with skew-gradient EP to reproduce target output values.

Six diffusively coupled FHN units (activator u, inhibitor v, τ_u = 1, τ_v = 5) read three
inputs through I = W x + b; the last two activators are the outputs. The targets are the
resting outputs of a teacher network with other couplings and input weights, so the task is
learnable. Each step relaxes the free phase with the dynamics (dopri5, warm-started from the
previous equilibria), checks that the equilibrium is stable (the Hessian of H is indefinite,
yet every eigenvalue of the flow's Jacobian has a negative real part), runs the nudged phases
±β and applies Adam to the centered EP gradient. The run fails (exit status 1) unless the loss
ends at least 10 times lower than it started.

Run: python examples/fhn_fit.py [--steps N]   (N Adam steps, default 60; 15 is a quick run)
"""

import argparse

import torch

from ctep import CenteredEP, RelaxConfig
from ctep.reference import compare, implicit_gradient
from ctep.skew import StableEP, fitzhugh_nagumo, settle

N_UNITS, N_IN, N_OUT, BATCH = 6, 3, 2, 16
#: the run fails unless the final loss is at most this fraction of the initial loss
REQUIRED_REDUCTION = 0.1


def network(seed: int, coupling: float):
    return fitzhugh_nagumo(N_UNITS, N_IN, N_OUT, tau_u=1.0, tau_v=5.0, coupling=coupling,
                           input_scale=0.4, input_bias=-0.2, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60,
                        help="Adam steps of the fit (default 60; 15 already lowers the loss "
                             "more than 10 times)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be ≥ 1, got {args.steps}")
    torch.set_default_dtype(torch.float64)

    cfg = RelaxConfig(method="dopri5", tol=1e-6, rtol=1e-9, atol=1e-10, max_time=2000.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, N_IN, generator=gen)

    teacher = network(seed=1, coupling=0.25)
    teacher_eq, teacher_rep = settle(teacher, x, config=cfg, polish=5)
    teacher_rep.check()
    y = teacher_eq.states[1][:, -N_OUT:].detach()

    student = network(seed=2, coupling=0.05)
    optimizer = torch.optim.Adam(student.learnable_parameters(), lr=0.02)
    estimator = StableEP(CenteredEP(0.05, relax=cfg.replace(polish=3)), polish=3)

    free, rep = settle(student, x, config=cfg, polish=3)
    rep.check()
    print(f"free equilibrium: ∇²H has {int(rep.hessian_negative.min())} negative and "
          f"{int(rep.hessian_positive.min())} positive eigenvalues (a saddle); max Re λ(J) = "
          f"{float(rep.max_real.max()):+.3f} (stable)")
    ref = implicit_gradient(student, x, y, free.states)
    check = estimator(student, x, y, free=free)
    print(f"centered EP (β = 0.05) vs implicit differentiation: rel. error "
          f"{compare(check.grads, ref)['rel_error']:.2e}")

    loss_before = float(student.loss(free.states, y).mean())
    states = free.states
    every = max(1, args.steps // 6)
    for step in range(args.steps):
        est = estimator(student, x, y, s0=states)
        states = est.free.states
        optimizer.zero_grad()
        est.write_grads()
        optimizer.step()
        if step % every == 0:
            print(f"step {step:3d}  loss {float(est.loss.mean()):.6f}  max Re λ "
                  f"{est.info['max_real_eig']:+.3f}")

    final, rep = settle(student, x, s0=states, config=cfg, polish=3)
    rep.check()
    loss_after = float(student.loss(final.states, y).mean())
    print(f"loss before {loss_before:.6f}  after {loss_after:.6f}  "
          f"(×{loss_before / loss_after:.0f} lower); final max Re λ "
          f"{float(rep.max_real.max()):+.3f}")
    if not loss_after <= REQUIRED_REDUCTION * loss_before:
        raise SystemExit(f"the loss fell only ×{loss_before / loss_after:.1f} in {args.steps} "
                         f"steps (at least ×{1 / REQUIRED_REDUCTION:.0f} expected)")


if __name__ == "__main__":
    main()
