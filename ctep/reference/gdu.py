"""Step-by-step GDU check: EP updates during the nudged phase vs BPTT (Ernoult et al. 2019).

Both phases run the same fixed-step map from the free equilibrium s* (detached):

    M_β(s) = clamp(s + h ⊙ drive_β(s)),   h = ``damping`` (τ-free) or h_i = min(1, damping·dt/τ_i),

the steps of ``relax(method="fixed_point", dt=dt, damping=damping)``
(:func:`ctep.solve.map_step.map_step_sizes`), with drive_β = σ(∂Φ/∂s − β∂ℓ/∂s) − s (primitive
form) or −∂F/∂s (classical form). The free trajectory s⁰_t and the nudged one s^β_t start at
s*; the EP updates at step t = 0..K−1 are

    ΔEP_s(t) = [(s^β_{t+1} − s⁰_{t+1}) − (s^β_t − s⁰_t)] / β,
    ΔEP_θ(t) = [∂θΦ(s^β_{t+1}) − ∂θΦ(s^β_t) − (∂θΦ(s⁰_{t+1}) − ∂θΦ(s⁰_t))] / β,

with ∂θΦ = −∂E/∂θ (batch mean). Ernoult's definition has no free-trajectory terms: they vanish
when s* is exactly a fixed point, and subtracting them removes the residual drift of an
equilibrium relaxed to a finite tolerance. With ``centered=True`` the free trajectory is
replaced by the −β one and β by 2β (error O(β²) instead of O(β)).

BPTT unrolls K steps of M₀ from s* and backpropagates ℓ(s_K): ∇BPTT_s(t) = ∂ℓ/∂s_{K−t} (per
sample, t = 0..K−1) and ∇BPTT_θ(t) = ∂ℓ̄/∂θ_{K−t−1}, the gradient of the batch-mean loss with
respect to the copy of θ used by the step s_{K−t−1} → s_{K−t}. Summed over t it is the
K-step BPTT gradient.

**What holds (derived by linearising both phases at s*; exact as β → 0).** With
A = ∂M₀/∂s = I + D_h ∂drive/∂s:

* classical form, smooth ρ: M is a gradient map, A = I − D_h H with H = ∂²E/∂s² symmetric, so
  A D_h = D_h Aᵀ and  ΔEP_s(t) = −h ⊙ ∇BPTT_s(t)  (Ernoult's identity, scaled by the step);
* primitive form: A = I − D_h + D_h D W with D = diag σ'(u*), u* = ∂Φ/∂s(s*), W symmetric, so
  A (D_h D) = (D_h D) Aᵀ and  ΔEP_s(t) = −h ⊙ σ'(u*) ⊙ ∇BPTT_s(t): the neuron updates match
  only up to the per-neuron factor σ' (THEORY.md §1.2);
* both forms:  ΔEP_θ(t) = −∇BPTT_θ(t)  exactly, with no h or σ' factor;
* clipped activations: the same with σ' ∈ {0, 1} (saturated units are frozen in both), as long
  as no unit sits on a corner of its box (strict complementarity);
* for any step h (scalar or per neuron) for which the map converges.

So the check compares, per layer and step, ``ep = ΔEP_s/h`` with ``bptt = −c ⊙ ∇BPTT_s`` for the
neurons (c = σ'(u*) for the primitive form and for clipped layers of the classical form, else
1), and ``ep = ΔEP_θ`` with ``bptt = −∇BPTT_θ`` for each parameter tensor of the energy (the
cost's own parameters, e.g. a read-out, only get BPTT's direct term and are left out). Metrics:
relative RMSE ‖a − b‖/max(‖a‖, ‖b‖) and the sign agreement of the entries with
|b| > 1e-12·max|b|, per layer and step; both are NaN where b is exactly zero (the nudge has not
reached the layer yet; or, for the plain map h = 1 on a layered net, which couples only adjacent
layers, every other step: there the EP update is a second-order O(β) remainder).

**Precision.** The EP updates are finite differences over β of states that change by ever less
as the nudged phase settles: each entry carries a round-off error of about ε·|s|/β (ε the
machine epsilon), while the signal decays like ρ(A)^t. A (layer, step) is flagged ``resolved``
where max|b| exceeds 1e4 such floors (so round-off adds ≲ 1e-4 to the relative RMSE); beyond,
the curve measures round-off, not GDU. The one-sided bias grows like β·t (the nudged
trajectory moves away from s* by O(β), and the linearisation with it); ``centered`` makes it
β²·t. Measured in float64 with one-sided β = 1e-5: ≤ 5e-4 relative RMSE on the resolved steps
of random 2-4 layer nets (K = 20) and ≤ 3e-4 on the 8-12-10-4 ``ctep verify`` nets (K = 30);
see docs/verification.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import torch
from torch import Tensor

from .._states import States
from ..dynamics import BoundField, VectorField
from ..energies.base import Energy
from ..energies.layered import LayeredEnergy
from ..solve.map_step import map_step, map_step_sizes

#: a step counts as resolved where max|BPTT| exceeds this many round-off floors
RESOLVED = 1e4


@dataclass
class GDUResult:
    """Per-layer GDU curves over the K steps of the nudged phase.

    Attributes:
        layers: names of the rows: ``s1..sL`` (neurons), then the energy's parameter names.
        kinds: ``"neurons"`` or ``"parameters"`` per row.
        rel_rmse, sign_agreement: float64 tensors of shape ``(len(layers), K)``; NaN where the
            BPTT gradient is exactly zero.
        resolved: bool ``(len(layers), K)``: the BPTT entry is above the round-off floor of
            the EP finite difference (module docstring); elsewhere rel_rmse measures round-off.
        ep, bptt: the compared quantities per row, each of shape ``(K, ...)`` (neurons:
            ``(K, B, n_l)``); see the module docstring for the normalisation.
        beta, steps, step: β, K, and the step h (a float, or
            ``"min(1, damping*dt/tau) (dt=..., damping=...)"``).
    """

    layers: tuple[str, ...]
    kinds: tuple[str, ...]
    rel_rmse: Tensor
    sign_agreement: Tensor
    resolved: Tensor
    ep: tuple[Tensor, ...]
    bptt: tuple[Tensor, ...]
    beta: float
    steps: int
    step: float | str
    centered: bool = False
    info: dict = dataclass_field(default_factory=dict)

    def max_rel_rmse(self, *, resolved_only: bool = True) -> dict[str, float]:
        """Worst relative RMSE over the (resolved) steps, per layer (NaN if there are none)."""
        out = {}
        for n, r, ok in zip(self.layers, self.rel_rmse, self.resolved, strict=True):
            keep = ok & ~torch.isnan(r) if resolved_only else ~torch.isnan(r)
            out[n] = float(r[keep].max()) if bool(keep.any()) else math.nan
        return out

    def to_dict(self) -> dict:
        """JSON-friendly summary (the curves as nested lists)."""
        return {"layers": list(self.layers), "kinds": list(self.kinds), "beta": self.beta,
                "steps": self.steps, "step": self.step, "centered": self.centered,
                "rel_rmse": _nan_to_none(self.rel_rmse.tolist()),
                "sign_agreement": _nan_to_none(self.sign_agreement.tolist()),
                "resolved": self.resolved.tolist()}


def _nan_to_none(rows: list[list[float]]) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in rows]


def neuron_gain(field: VectorField, x: Tensor, states: States) -> States:
    """c per neuron at an equilibrium: σ'(∂Φ/∂s) for the primitive form and for clipped layers of
    the classical form, 1 for smooth classical layers and for plain gradient-form energies."""
    energy = field.energy
    if isinstance(energy, LayeredEnergy):
        with torch.no_grad():
            u = energy.phi_grad(x, energy._activities(states))
        return tuple(a.derivative(ui) if (energy.form == "primitive" or a.bounded)
                     else torch.ones_like(ui)
                     for a, ui in zip(energy.activations, u, strict=True))
    if type(energy).drive is Energy.drive:  # −∂F/∂s: a gradient map
        return tuple(torch.ones_like(s) for s in states)
    raise NotImplementedError(f"GDU check: no known neuron normalisation for "
                              f"{type(energy).__name__}, whose drive is not −∂F/∂s")


def _relative(a: Tensor, b: Tensor) -> tuple[float, float]:
    """(relative RMSE, sign agreement); both NaN where b is exactly zero (undefined)."""
    a = a.detach().reshape(-1).to(torch.float64)
    b = b.detach().reshape(-1).to(torch.float64)
    bmax = float(b.abs().max()) if b.numel() else 0.0
    if bmax == 0.0:
        return math.nan, math.nan
    den = float(torch.maximum(torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)))
    rmse = float(torch.linalg.vector_norm(a - b)) / den
    big = b.abs() > 1e-12 * bmax
    sign = float((torch.sign(a[big]) == torch.sign(b[big])).double().mean())
    return rmse, sign


def gdu_check(field: VectorField, x: Tensor, y: Tensor, start: States, *, beta: float = 1e-5,
              steps: int = 30, damping: float = 1.0, dt: float | None = None,
              centered: bool = False) -> GDUResult:
    """EP updates vs BPTT gradients, step by step, from the equilibrium ``start``.

    Args:
        start: the free equilibrium (detached here; relax it tightly, residual ≪ β).
        beta: nudge strength (small: the identity is exact as β → 0).
        steps: K, the number of nudged steps (and BPTT steps back).
        damping: h of the τ-free map (1: s ← σ(∂Φ/∂s) for the primitive form); with ``dt``,
            a factor on every dt/τ_i.
        dt: if given, h_i = min(1, damping·dt/τ_i) per neuron (forward Euler of
            τ ds/dt = drive with step damping·dt, clipped at 1), as ``fixed_point`` steps.
        centered: use the ±β phases (error O(β²)).
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    steps = int(steps)
    free_field = field.bind(x)
    h, _ = map_step_sizes(field.tau, float(damping), dt, "gdu")
    start = tuple(s.detach() for s in start)
    energy = field.energy
    names = [n for n, _ in energy.named_parameters()]
    params = tuple(energy.parameters())
    gain = neuron_gain(field, x, start)

    def step(f: BoundField, s: States) -> States:
        return map_step(energy, s, f.drive(s), h)

    def trajectory(b: float) -> list[States]:
        f = field.bind(x, y, b) if b != 0 else free_field
        out = [start]
        with torch.no_grad():
            for _ in range(steps):
                out.append(step(f, out[-1]))
        return out

    def dphi(s: States) -> tuple[Tensor, ...]:  # ∂Φ/∂θ = −∂E/∂θ, batch mean
        with torch.enable_grad():
            e = energy.energy(x, tuple(t.detach() for t in s)).mean()
            g = torch.autograd.grad(-e, params, allow_unused=True)
        return tuple(torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g,
                                                                                 strict=True))

    plus = trajectory(beta)
    base = trajectory(-beta) if centered else trajectory(0.0)
    scale = 2.0 * beta if centered else beta
    psi_p = [dphi(s) for s in plus]
    psi_b = [dphi(s) for s in base]
    n_layers = len(start)
    ep_s = [[] for _ in range(n_layers)]
    ep_p = [[] for _ in params]
    for t in range(steps):
        for l in range(n_layers):
            d = ((plus[t + 1][l] - base[t + 1][l]) - (plus[t][l] - base[t][l])) / scale
            ep_s[l].append(d / h[l])
        for k in range(len(params)):
            ep_p[k].append(((psi_p[t + 1][k] - psi_p[t][k]) - (psi_b[t + 1][k] - psi_b[t][k]))
                           / scale)

    # BPTT of Σ_b ℓ_b(s_K) through the free map: per-sample state gradients, and per-step
    # parameter gradients (divided by B for the batch-mean loss)
    free = trajectory(0.0) if centered else base
    batch = x.shape[0]
    with torch.enable_grad():
        sk = tuple(t.detach().requires_grad_(True) for t in free[-1])
        adj = torch.autograd.grad(field.loss(sk, y).sum(), sk, allow_unused=True)
    adj = tuple(torch.zeros_like(s) if a is None else a for s, a in zip(sk, adj, strict=True))
    bptt_s = [[] for _ in range(n_layers)]
    bptt_p = [[] for _ in params]
    for t in range(steps):  # adj = ∂ℓ/∂s_{K−t}
        for l in range(n_layers):
            bptt_s[l].append(-gain[l] * adj[l])
        k = steps - t - 1  # the step s_k → s_{k+1} = s_{K−t}
        with torch.enable_grad():
            sk = tuple(s.detach().requires_grad_(True) for s in free[k])
            out = step(field.bind(x), sk)  # each backward pass frees its input term's graph
            g = torch.autograd.grad(out, (*sk, *params), grad_outputs=adj, allow_unused=True)
        adj = tuple(torch.zeros_like(s) if a is None else a.detach()
                    for s, a in zip(sk, g[:n_layers], strict=True))
        for j, (p, gp) in enumerate(zip(params, g[n_layers:], strict=True)):
            bptt_p[j].append(-(torch.zeros_like(p) if gp is None else gp.detach()) / batch)

    ep = tuple(torch.stack(v) for v in (*ep_s, *ep_p))
    bptt = tuple(torch.stack(v) for v in (*bptt_s, *bptt_p))
    # round-off floor of a finite difference over β: ε·|value|/β per entry
    eps = torch.finfo(start[0].dtype).eps
    h_min = [float(hh.min()) if torch.is_tensor(hh) else hh for hh in h]
    floors = [eps * float(s.abs().max()) / (scale * hm) for s, hm in zip(start, h_min,
                                                                          strict=True)]
    floors += [eps * float(p.abs().max()) / scale for p in psi_b[0]]
    rmse = torch.zeros(len(ep), steps, dtype=torch.float64)
    sign = torch.ones(len(ep), steps, dtype=torch.float64)
    resolved = torch.zeros(len(ep), steps, dtype=torch.bool)
    for i, (a, b) in enumerate(zip(ep, bptt, strict=True)):
        for t in range(steps):
            rmse[i, t], sign[i, t] = _relative(a[t], b[t])
            resolved[i, t] = float(b[t].abs().max()) > RESOLVED * floors[i]
    layers = tuple(f"s{l + 1}" for l in range(n_layers)) + tuple(names)
    kinds = ("neurons",) * n_layers + ("parameters",) * len(params)
    step_desc: float | str = (f"min(1, damping*dt/tau) (dt={dt:g}, damping={damping:g})"
                              if dt is not None else float(damping))
    return GDUResult(layers, kinds, rmse, sign, resolved, ep, bptt, float(beta), steps,
                     step_desc, centered)
