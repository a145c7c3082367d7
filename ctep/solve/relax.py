"""Relaxation to equilibrium: the front end of every method, and Newton polish.

Every method stops each sample on its own residual ‖τ ⊙ ds/dt‖∞ ≤ tol: converged samples are
taken out of the working batch at each check, so a stiff sample costs only its own evaluations
and no sample's result depends on the others' (torchdiffeq shares one step size across a batch;
see docs/solvers.md). The methods are those of the registry (:mod:`ctep.solve.methods`).
Nothing here is differentiated: references unroll their own graphs.
"""

from __future__ import annotations

import torch

from .._linalg import batched_jacobian, checked_solve
from .._states import States, flatten_states, unflatten_states
from ..dynamics import BoundField
from ._book import initial_states, restrict_field
from .config import RelaxConfig
from .equilibrium import Equilibrium, Status
from .methods import get_method


def relax(field: BoundField, s0: States | None = None, config: RelaxConfig | None = None,
          **overrides) -> Equilibrium:
    """Integrate ``field`` from ``s0`` (zeros by default) until every sample's residual is ≤ tol.

    Args:
        field: a vector field bound to a batch (``VectorField.bind(x, y, beta)``).
        s0: initial states (a warm start), or None for the energy's zero states.
        config: a :class:`RelaxConfig`; keyword ``overrides`` replace its fields.

    Returns:
        An :class:`Equilibrium` with a status per sample; it never raises for a sample that
        diverges or does not converge (call :meth:`Equilibrium.check` for that).
    """
    cfg = (config or RelaxConfig()).replace(**overrides)
    method = get_method(cfg.method)  # the config has checked its fields when it was made
    s0 = initial_states(field, s0)
    with torch.no_grad():
        eq = method.relax(field, s0, cfg)
    if cfg.polish > 0:
        eq = newton_polish(field, eq, cfg.polish)
    return eq


def newton_polish(field: BoundField, eq: Equilibrium, steps: int) -> Equilibrium:
    """Newton steps s ← s − J⁻¹ g(s) on the stationarity map g, per sample (dense J).

    ``nfe`` grows by the field evaluations only (2 per step + 1); the n vector-Jacobian products
    that assemble each J are not counted.

    Samples that diverged or failed are left alone; the residual and status are recomputed
    (a sample whose residual falls below tol becomes CONVERGED).
    """
    ok = (eq.status == Status.CONVERGED) | (eq.status == Status.MAX_STEPS)
    if not bool(ok.any()):
        return eq
    idx = torch.nonzero(ok).flatten()
    f = restrict_field(field, idx, eq.status.numel())
    s = tuple(x[idx] for x in eq.states)
    shapes = field.energy.state_shapes
    for _ in range(steps):
        jac = batched_jacobian(f.stationarity, s)
        with torch.no_grad():
            g = flatten_states(f.stationarity(s))
            delta = checked_solve(jac, g.unsqueeze(-1)).squeeze(-1)
            s = field.energy.clamp(unflatten_states(flatten_states(s) - delta, shapes))
    with torch.no_grad():
        r = f.residual(s)
    states = tuple(x.clone() for x in eq.states)
    for full, part in zip(states, s, strict=True):
        full[idx] = part
    residual = eq.residual.clone()
    residual[idx] = r.to(residual.dtype)
    status = eq.status.clone()
    status[idx] = torch.where(r <= eq.tol, int(Status.CONVERGED), int(Status.MAX_STEPS)).to(
        status.dtype)
    nfe = eq.nfe.clone()
    nfe[idx] += 2 * steps + 1
    return Equilibrium(states, residual, status, eq.t, nfe, eq.steps, eq.method, eq.tol,
                       eq.trajectory, eq.message, {**eq.extra, "newton_steps": steps})
