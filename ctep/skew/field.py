"""Skew-gradient fields: a scalar H descended in some coordinates and ascended in others.

With F = H + β·ℓ(s_L, y), signs σ_i = +1 (descend) or −1 (ascend) and time constants τ_i,

    τ_i ds_i/dt = −σ_i ∂F/∂s_i,     i.e.  ds/dt = S ∇F,   S = −diag(σ/τ).

For FitzHugh–Nagumo pairs (u, v): σ_u = +1, σ_v = −1, so S = diag(−1/τ_u, +1/τ_v). The
equilibria are the critical points of F, which are saddles of H (its Hessian is indefinite),
yet the EP theorem holds there (it needs only ∂F/∂s = 0 and an invertible ∂²F/∂s²), and so does
implicit differentiation with the dynamics' Jacobian J = S ∇²F (S cancels):

    dL/dθ = ∂ℓ/∂θ − μᵀ ∂g/∂θ,  Jᵀμ = ∂ℓ/∂s,  g = −σ ⊙ ∇F.

What the signature does change is **stability**: the equilibrium is reached by the dynamics only
if every eigenvalue of J = ∂(ds/dt)/∂s has a negative real part, which depends on τ (a Hopf
bifurcation can appear when τ_v grows). :meth:`SkewGradientField.stability` reports those
eigenvalues; :class:`StableEP` refuses (or masks) samples whose equilibrium the dynamics did not
reach or cannot hold, instead of returning a gradient of a state the system never sits in.

The field is a :class:`ctep.VectorField` whose energy carries the signs in its ``drive``, so
:func:`ctep.solve.relax`, :class:`ctep.estimators.Estimator` and
:func:`ctep.reference.implicit_gradient` take it unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._linalg import batched_jacobian, checked_eigvals, checked_eigvalsh
from .._states import States, flatten_states, unflatten_states
from ..dynamics import VectorField
from ..energies.base import Energy, InputTerm
from ..estimators import Estimate, Estimator
from ..lagrangian.newton import newton
from ..losses import Cost
from ..solve import Equilibrium, RelaxationError, RelaxConfig, Status, relax
from ..timeconstants import TimeConstants


class SkewEnergy(Energy):
    """An energy H whose dynamics descend it in the layers with sign +1 and ascend it in those
    with sign −1: ``drive = −σ ⊙ (∂H/∂s + n)`` (n = β∂ℓ/∂s_L on the output layer).

    Subclasses set :attr:`state_shapes`, implement :meth:`energy` (and may give a closed-form
    :meth:`grad_states`), and call :meth:`set_signs` once.
    """

    def set_signs(self, signs: Sequence[float | Tensor]) -> None:
        """One sign per layer (a number, or a tensor of ±1 shaped like the layer's state)."""
        signs = list(signs)
        if len(signs) != len(self.state_shapes):
            raise ValueError(f"{len(signs)} signs given for {len(self.state_shapes)} state layers")
        for i, (sg, shape) in enumerate(zip(signs, self.state_shapes, strict=True)):
            t = torch.as_tensor(sg, dtype=torch.float64)
            try:
                t = t.expand(tuple(shape)).clone()
            except RuntimeError as err:
                raise ValueError(f"signs of layer {i} have shape {tuple(t.shape)}, the state has "
                                 f"{tuple(shape)}") from err
            if not bool(((t == 1) | (t == -1)).all()):
                raise ValueError(f"signs must be +1 (descend) or −1 (ascend); layer {i} has "
                                 f"{sorted(set(t.flatten().tolist()))}")
            self.register_buffer(f"sign_{i}", t, persistent=False)
        self._n_signs = len(signs)

    def signs(self) -> States:
        """σ per layer (+1: descend H, −1: ascend H)."""
        if getattr(self, "_n_signs", None) is None:
            raise RuntimeError(f"{type(self).__name__} did not call set_signs()")
        return tuple(getattr(self, f"sign_{i}") for i in range(self._n_signs))

    def drive(self, x: Tensor, states: States, nudge: Tensor | None, *,
              autograd: bool = False, input_term: InputTerm = None) -> States:
        """τ ⊙ ds/dt = −σ ⊙ ∂F/∂s."""
        grads = list(Energy.grad_states(self, x, states) if autograd
                     else self.grad_states(x, states, input_term=input_term))
        if nudge is not None:
            grads[-1] = grads[-1] + nudge
        return tuple(-sg.to(g.dtype) * g for sg, g in zip(self.signs(), grads, strict=True))


class SignedEnergy(SkewEnergy):
    """Any :class:`~ctep.energies.base.Energy` H with a per-layer signature (a wrapper).

    The drive is −σ ⊙ ∂H/∂s from the wrapped energy's :meth:`grad_states`; a drive of its own
    (e.g. the primitive form σ(∂Φ/∂s) − s of the layered energies) is not used.
    """

    def __init__(self, energy: Energy, signs: Sequence[float | Tensor]) -> None:
        super().__init__()
        self.inner = energy
        self.state_shapes = energy.state_shapes
        self.set_signs(signs)

    def energy(self, x: Tensor, states: States) -> Tensor:
        return self.inner.energy(x, states)

    def input_term(self, x: Tensor) -> InputTerm:
        return self.inner.input_term(x)

    def grad_states(self, x: Tensor, states: States, *, input_term: InputTerm = None) -> States:
        return self.inner.grad_states(x, states, input_term=input_term)

    def clamp(self, states: States) -> States:
        return self.inner.clamp(states)

    def check_input(self, x: Tensor) -> None:
        self.inner.check_input(x)


class Stability(enum.IntEnum):
    """Per-sample verdict on an equilibrium of a skew-gradient (or any) field."""

    #: the relaxation converged and every eigenvalue of J has Re λ < −margin
    STABLE = 0
    #: a critical point of F, but some Re λ ≥ −margin: the dynamics leave it (they oscillate on a
    #: limit cycle around it, or escape); an EP gradient there describes no reachable state
    UNSTABLE = 1
    #: the relaxation did not settle within its budget (limit cycle, or too slow)
    NOT_CONVERGED = 2
    #: the relaxation diverged or its solver failed
    DIVERGED = 3


class UnstableEquilibriumError(RelaxationError):
    """An EP phase ended at an equilibrium the dynamics cannot hold or did not reach."""


@dataclass
class StabilityReport:
    """Stability diagnostics per sample, batch first.

    Attributes:
        status: :class:`Stability` codes ``(B,)``.
        max_real: max Re λ of the dynamics' Jacobian J = ∂(ds/dt)/∂s ``(B,)``.
        eigenvalues: the eigenvalues of J ``(B, n)`` (complex), sorted by real part.
        hessian_negative, hessian_positive: how many eigenvalues of ∇²F are < 0 / > 0 ``(B,)``
            (both nonzero: a saddle of F).
        residual: the relaxation's residual ``(B,)``.
        critical_max_real: for NOT_CONVERGED samples, max Re λ(J) at the critical point that
            Newton's method finds from their final state (positive: the dynamics circle an
            unstable equilibrium, a limit cycle); NaN elsewhere or when Newton fails.
        message: what went wrong, when anything did.
    """

    status: Tensor
    max_real: Tensor
    eigenvalues: Tensor
    hessian_negative: Tensor
    hessian_positive: Tensor
    residual: Tensor
    critical_max_real: Tensor | None = None
    margin: float = 0.0
    message: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def stable(self) -> Tensor:
        return self.status == Stability.STABLE

    def summary(self) -> dict[str, float]:
        n = max(self.status.numel(), 1)
        out = {f"frac_{s.name.lower()}": float((self.status == s).sum()) / n for s in Stability}
        finite = torch.isfinite(self.max_real)
        out["max_real_eig"] = float(self.max_real[finite].max()) if finite.any() else float("nan")
        out["hessian_negative_min"] = float(self.hessian_negative.min())
        out["hessian_positive_min"] = float(self.hessian_positive.min())
        if self.critical_max_real is not None:
            crit = self.critical_max_real[torch.isfinite(self.critical_max_real)]
            if crit.numel():
                out["critical_max_real_eig"] = float(crit.max())
        return out

    def check(self, what: str = "equilibrium") -> None:
        """Raise :class:`UnstableEquilibriumError` unless every sample is STABLE."""
        bad = ~self.stable
        if not bool(bad.any()):
            return
        idx = torch.nonzero(bad).flatten()
        parts = []
        for code in (Stability.UNSTABLE, Stability.NOT_CONVERGED, Stability.DIVERGED):
            sel = idx[self.status[idx] == code]
            if sel.numel():
                detail = ""
                if code == Stability.UNSTABLE:
                    detail = (f" (max Re λ = {float(self.max_real[sel].max()):+.3g} ≥ "
                              f"{-self.margin:g}: the dynamics oscillate around it or escape it)")
                elif code == Stability.NOT_CONVERGED:
                    detail = f" (residual still {float(self.residual[sel].max()):.3g}"
                    crit = (self.critical_max_real[sel] if self.critical_max_real is not None
                            else torch.full((1,), float("nan")))
                    crit = crit[torch.isfinite(crit)]
                    if crit.numel() and float(crit.max()) >= -self.margin:
                        detail += (f"; the critical point nearby is unstable, max Re λ = "
                                   f"{float(crit.max()):+.3g}: the dynamics oscillate on a "
                                   "limit cycle)")
                    elif crit.numel():
                        detail += (f"; the critical point nearby is stable, max Re λ = "
                                   f"{float(crit.max()):+.3g}: budget too short, or a limit "
                                   "cycle around a stable point)")
                    else:
                        detail += ": limit cycle or budget too short)"
                parts.append(f"{code.name} for samples {sel[:10].tolist()}{detail}")
        raise UnstableEquilibriumError(
            f"{int(bad.sum())} of {bad.numel()} samples have no usable {what}: "
            + "; ".join(parts) + ". No EP gradient is returned for a state the dynamics do not "
            "sit in. " + self.message)


class SkewGradientField(VectorField):
    """``ds/dt = S ∇F`` with ``S = −diag(σ/τ)``: a :class:`~ctep.VectorField` over a skew energy.

    Args:
        energy: a :class:`SkewEnergy` (its own signs), or any energy with ``signs`` given.
        cost: the nudge cost on the last state layer.
        tau: per-neuron time constants (default 1).
        signs: per-layer signs (+1 descend, −1 ascend) when ``energy`` is not a SkewEnergy.
        gradient: ``"closed_form"`` or ``"autograd"`` (as for VectorField).
    """

    def __init__(self, energy: Energy, cost: Cost | str = "squared_error",
                 tau: TimeConstants | None = None, *,
                 signs: Sequence[float | Tensor] | None = None,
                 gradient: str = "closed_form") -> None:
        if signs is not None:
            energy = SignedEnergy(energy, signs)
        elif not isinstance(energy, SkewEnergy):
            raise TypeError("a skew-gradient field needs a SkewEnergy or explicit signs")
        super().__init__(energy, cost, tau, gradient=gradient)

    def signature(self) -> States:
        """The diagonal of S = −diag(σ/τ) per layer (ds/dt = S ∇F)."""
        return tuple(-sg.to(it.dtype) * it
                     for sg, it in zip(self.energy.signs(), self.tau.inverse(), strict=True))

    def flow_jacobian(self, x: Tensor, states: States, y: Tensor | None = None,
                      beta: float = 0.0) -> Tensor:
        """J = ∂(ds/dt)/∂s = S ∇²F per sample, ``(B, n, n)``."""
        bound = self.bind(x, y, beta)
        return batched_jacobian(lambda s: bound(0.0, s), tuple(states))

    def hessian(self, x: Tensor, states: States, y: Tensor | None = None,
                beta: float = 0.0) -> Tensor:
        """∇²F per sample, ``(B, n, n)`` (symmetric, indefinite at a saddle)."""
        bound = self.bind(x, y, beta)
        sign = flatten_states(tuple(sg.to(states[0].dtype).expand_as(s)
                                    for sg, s in zip(self.energy.signs(), states, strict=True)))
        jac = batched_jacobian(bound.drive, tuple(states))  # = −diag(σ) ∇²F
        return -sign.unsqueeze(-1) * jac

    def stability(self, x: Tensor, eq: Equilibrium | States, y: Tensor | None = None,
                  beta: float = 0.0, *, margin: float = 0.0) -> StabilityReport:
        """Eigenvalues of J at ``eq`` and a :class:`Stability` verdict per sample.

        With an :class:`~ctep.solve.Equilibrium`, samples that did not converge are
        NOT_CONVERGED and those that diverged or failed are DIVERGED, whatever J says (J is still
        reported at their final state when finite). With bare states every sample counts as
        converged and only the eigenvalues decide.
        """
        if isinstance(eq, Equilibrium):
            states, status, residual = eq.states, eq.status, eq.residual
            self.energy.check_states(states)
        else:
            states = tuple(eq)
            self.energy.check_states(states)
            with torch.no_grad():
                residual = self.bind(x, y, beta).residual(states).to(torch.float64)
            status = torch.zeros_like(residual, dtype=torch.int8)
        batch = states[0].shape[0]
        n = flatten_states(states).shape[1]
        finite = torch.isfinite(flatten_states(states)).all(dim=1)
        dev = finite.device
        eig = torch.full((batch, n), complex(float("nan"), float("nan")), dtype=torch.complex128,
                         device=dev)
        neg = torch.zeros(batch, dtype=torch.int64, device=dev)
        pos = torch.zeros(batch, dtype=torch.int64, device=dev)
        if bool(finite.any()):
            fi = torch.nonzero(finite).flatten()
            sub = tuple(s[fi] for s in states)
            ys = None if y is None else y[fi]
            jac = self.flow_jacobian(x[fi], sub, ys, beta).detach().to(torch.float64)
            hes = self.hessian(x[fi], sub, ys, beta).detach().to(torch.float64)
            ev = checked_eigvals(jac)
            order = torch.argsort(ev.real, dim=1, descending=True)
            eig[fi] = torch.gather(ev, 1, order)
            hev = checked_eigvalsh(0.5 * (hes + hes.transpose(1, 2)))
            tol = 1e-12 * hev.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
            neg[fi] = (hev < -tol).sum(dim=1)
            pos[fi] = (hev > tol).sum(dim=1)
        max_real = eig.real.amax(dim=1)
        verdict = torch.where(max_real < -margin, int(Stability.STABLE),
                              int(Stability.UNSTABLE)).to(torch.int8)
        verdict = torch.where(~torch.isfinite(max_real), int(Stability.DIVERGED), verdict)
        verdict = torch.where(status == Status.MAX_STEPS, int(Stability.NOT_CONVERGED), verdict)
        failed = (status == Status.DIVERGED) | (status == Status.SOLVER_FAILED)
        verdict = torch.where(failed, int(Stability.DIVERGED), verdict).to(torch.int8)
        crit = torch.full((batch,), float("nan"), dtype=torch.float64, device=dev)
        stuck = (verdict == Stability.NOT_CONVERGED) & finite
        if bool(stuck.any()):
            si = torch.nonzero(stuck).flatten()
            cp = find_critical_point(self, x[si], None if y is None else y[si], beta,
                                     tuple(s[si] for s in states), tol=1e-10, max_iter=30)
            ok = cp.converged
            if bool(ok.any()):
                oi = torch.nonzero(ok).flatten()
                jac = self.flow_jacobian(x[si[oi]], tuple(s[oi] for s in cp.states),
                                         None if y is None else y[si[oi]], beta)
                crit[si[oi]] = checked_eigvals(jac.detach().to(torch.float64)).real.amax(1)
        msg = eq.message if isinstance(eq, Equilibrium) else ""
        return StabilityReport(verdict, max_real, eig, neg, pos, residual.to(torch.float64),
                               crit, margin, msg)


def find_critical_point(field: VectorField, x: Tensor, y: Tensor | None = None,
                        beta: float = 0.0, s0: States | None = None, *, tol: float = 1e-12,
                        max_iter: int = 50) -> Equilibrium:
    """A root of the stationarity map by Newton's method (no dynamics): a critical point of F,
    stable or not. Its status is CONVERGED when ‖drive‖∞ ≤ tol (method ``"newton"``)."""
    bound = field.bind(x, y, beta)
    shapes = field.energy.state_shapes
    if s0 is None:
        s0 = field.energy.init_states(x.shape[0], dtype=next(field.parameters()).dtype,
                                      device=x.device)
    field.energy.check_states(tuple(s0))

    def fn(z: Tensor, idx: Tensor) -> Tensor:
        sub = bound if idx.numel() == x.shape[0] else field.bind(
            x[idx], None if y is None else y[idx], beta)
        return flatten_states(sub.stationarity(unflatten_states(z, shapes)))

    res = newton(fn, flatten_states(tuple(s0)).detach(), tol=tol, max_iter=max_iter)
    states = unflatten_states(res.z, shapes)
    status = res.status.clone()
    zeros = torch.zeros(x.shape[0], dtype=torch.float64)
    return Equilibrium(states, res.residual, status, zeros, torch.zeros_like(res.iterations),
                       res.iterations, "newton", tol, None, res.message)


def settle(field: SkewGradientField, x: Tensor, y: Tensor | None = None, beta: float = 0.0,
           s0: States | None = None, config: RelaxConfig | None = None, *, polish: int = 0,
           margin: float = 0.0) -> tuple[Equilibrium, StabilityReport]:
    """Relax with the dynamics, then (optionally) polish by Newton, then judge stability.

    Newton polish is applied only to samples the dynamics brought below ``config.tol`` on
    their own: polishing a sample stuck on a limit cycle would land on the unstable critical
    point inside it and hide the failure. ``config.polish`` is ignored for that reason; pass
    ``polish`` here instead.
    """
    cfg = (config or RelaxConfig()).replace(polish=0)
    eq = relax(field.bind(x, y, beta), s0, cfg)
    if polish > 0 and bool(eq.converged.any()):
        idx = torch.nonzero(eq.converged).flatten()
        sub = find_critical_point(field, x[idx], None if y is None else y[idx], beta,
                                  tuple(s[idx] for s in eq.states),
                                  tol=0.0, max_iter=polish)
        states = tuple(s.clone() for s in eq.states)
        for full, part in zip(states, sub.states, strict=True):
            full[idx] = part
        with torch.no_grad():
            r = field.bind(x, y, beta).residual(states).to(eq.residual.dtype)
        eq = Equilibrium(states, r, eq.status, eq.t, eq.nfe, eq.steps, eq.method, eq.tol,
                         eq.trajectory, eq.message, {**eq.extra, "newton_steps": polish})
    return eq, field.stability(x, eq, y, beta, margin=margin)


class StableEP:
    """An EP estimator guarded by stability: the free phase is relaxed by the dynamics
    (:func:`settle`), every phase must converge and be stable, then the wrapped estimator's
    formula Σ c_k ∂F/∂θ(s_k, β_k) gives the gradient.

    Args:
        estimator: any :class:`ctep.estimators.Estimator` (one-sided, centered, ...); its
            ``relax`` config is used for the free phase (without its ``polish``) and its
            ``nudged_relax`` for the nudged phases.
        polish: Newton steps after the free relaxation, for converged samples only.
        margin: a sample is stable when max Re λ(J) < −margin.
        on_unstable: ``"raise"`` (default): :class:`UnstableEquilibriumError` names the samples
            and why; ``"mask"``: those samples are left out of the batch average
            (``Estimate.used``).
    """

    def __init__(self, estimator: Estimator, *, polish: int = 0, margin: float = 0.0,
                 on_unstable: str = "raise") -> None:
        if on_unstable not in ("raise", "mask"):
            raise ValueError(f"on_unstable must be 'raise' or 'mask', got {on_unstable!r}")
        self.estimator = estimator
        self.polish = int(polish)
        self.margin = float(margin)
        self.on_unstable = on_unstable
        self.name = f"stable-{estimator.name}"

    def __call__(self, field: SkewGradientField, x: Tensor, y: Tensor, *,
                 free: Equilibrium | None = None, s0: States | None = None) -> Estimate:
        """Estimate dL/dθ; ``free``: a free equilibrium from :func:`settle` (reused as is)."""
        if not isinstance(field, SkewGradientField):
            raise TypeError("StableEP needs a SkewGradientField (for its stability diagnostics)")
        if free is None:
            free, report = settle(field, x, None, 0.0, s0, self.estimator.relax,
                                  polish=self.polish, margin=self.margin)
        else:
            report = field.stability(x, free, margin=self.margin)
        if self.on_unstable == "raise":
            report.check("free equilibrium")
        keep = report.stable.clone()
        while True:
            if not bool(keep.any()):
                raise UnstableEquilibriumError("no sample of the batch has a stable equilibrium "
                                               "in every phase; nothing to estimate")
            idx = torch.nonzero(keep).flatten()
            sub_free = _subset(free, idx)
            out = self.estimator(field, x[idx], y[idx], free=sub_free)
            reports = [field.stability(x[idx], eq, y[idx], b, margin=self.margin)
                       for eq, b in zip(out.nudged, out.betas, strict=True)]
            ok = torch.ones(idx.numel(), dtype=torch.bool)
            for rep, b in zip(reports, out.betas, strict=True):
                if self.on_unstable == "raise":
                    rep.check(f"nudged equilibrium (β = {b:g})")
                ok &= rep.stable
            if bool(ok.all()):
                break
            keep[idx[~ok]] = False
        used = torch.zeros_like(keep)
        used[idx] = out.used
        with torch.no_grad():
            loss = field.loss(free.states, y)
        info = {**out.info, "estimator": self.name,
                "max_real_eig": float(report.max_real[keep].max()),
                "stability": report.summary(),
                "nudged_max_real_eig": [float(r.max_real.max()) for r in reports]}
        return Estimate(out.grads, out.params, free, out.nudged, out.betas, loss, used, info)


def _subset(eq: Equilibrium, idx: Tensor) -> Equilibrium:
    return Equilibrium(tuple(s[idx] for s in eq.states), eq.residual[idx], eq.status[idx],
                       eq.t[idx], eq.nfe[idx], eq.steps[idx], eq.method, eq.tol, None,
                       eq.message, dict(eq.extra))
