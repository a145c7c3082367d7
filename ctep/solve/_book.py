"""Per-sample bookkeeping shared by every relaxation method: the starting states, the
full-batch outputs that finished samples are written into, the classification of the working
samples at a check, and the field restricted to the samples still working."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._states import States, per_sample_max_abs
from ..dynamics import BoundField
from .equilibrium import Equilibrium, Status, Trajectory


def initial_states(field: BoundField, s0: States | None = None) -> States:
    """The starting states of a relaxation: the energy's zero states (in its parameters' dtype,
    else the input's) when ``s0`` is None, else a checked copy of ``s0``; detached and projected
    onto the energy's box."""
    energy = field.energy
    batch = field.x.shape[0]
    if s0 is None:
        dtype = field.x.dtype if field.x.is_floating_point() else None
        p = next(iter(energy.parameters()), None)
        dtype = p.dtype if p is not None else dtype
        s0 = energy.init_states(batch, dtype=dtype, device=field.x.device)
    else:
        s0 = tuple(s0)
        energy.check_states(s0)
        if s0[0].shape[0] != batch:
            raise ValueError(f"initial states have batch {s0[0].shape[0]}, inputs have {batch}")
    with torch.no_grad():
        return energy.clamp(tuple(s.detach().clone() for s in s0))


class Book:
    """Per-sample bookkeeping shared by the loop and ODE paths (full-batch outputs)."""

    def __init__(self, s0: States, record: bool) -> None:
        batch = s0[0].shape[0]
        dev = s0[0].device
        self.states = tuple(s.clone() for s in s0)
        self.residual = torch.full((batch,), math.inf, dtype=torch.float64, device=dev)
        self.status = torch.full((batch,), int(Status.MAX_STEPS), dtype=torch.int8, device=dev)
        self.t = torch.zeros(batch, dtype=torch.float64, device=dev)
        self.nfe = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.steps = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.record = record
        self.rec_t: list[float] = []
        self.rec_s: list[States] = []
        self.rec_r: list[Tensor] = []

    def write(self, idx: Tensor, states: States, residual: Tensor, t: float,
              count: tuple[int, int] | None = None) -> None:
        """Store samples ``idx``; ``count = (steps, nfe)`` sets their counters (loops)."""
        for full, part in zip(self.states, states, strict=True):
            full[idx] = part
        self.residual[idx] = residual.to(torch.float64)
        self.t[idx] = t
        if count is not None:
            self.steps[idx] = count[0]
            self.nfe[idx] = count[1]

    def snapshot(self, t: float) -> None:
        if self.record:
            self.rec_t.append(t)
            self.rec_s.append(tuple(s.clone() for s in self.states))
            self.rec_r.append(self.residual.clone())

    def result(self, method: str, tol: float, message: str = "") -> Equilibrium:
        traj = None
        if self.record and self.rec_t:
            traj = Trajectory(
                times=torch.tensor(self.rec_t, dtype=torch.float64),
                states=tuple(torch.stack([s[k] for s in self.rec_s])
                             for k in range(len(self.states))),
                residual=torch.stack(self.rec_r))
        return Equilibrium(self.states, self.residual, self.status, self.t, self.nfe,
                           self.steps, method, tol, traj, message)


def finish_samples(book: Book, idx: Tensor, states: States, r: Tensor, tol: float, limit: float,
            t: float | Tensor, count: tuple[int, int] | None = None) -> Tensor:
    """Classify the working samples; write the finished ones; return the mask of those left.
    ``t`` is one time for all, or one per working sample (the adaptive integrators)."""
    # max |s| per sample is NaN or ±inf when any entry is (amax propagates NaN), or it is
    # > limit anyway: one pass over the states decides both tests
    m = per_sample_max_abs(states)
    finite = torch.isfinite(r) & torch.isfinite(m)
    big = m > limit
    diverged = ~finite | big
    done = (r <= tol) & ~diverged
    finished = done | diverged
    if bool(finished.any()):
        fi = idx[finished]
        book.write(fi, tuple(s[finished] for s in states), r[finished],
                   t[finished] if torch.is_tensor(t) else t, count)
        book.status[idx[done]] = int(Status.CONVERGED)
        book.status[idx[diverged]] = int(Status.DIVERGED)
    return ~finished


def restrict_field(field: BoundField, idx: Tensor, full_batch: int) -> BoundField:
    """The same field restricted to samples ``idx`` (:meth:`BoundField.restrict`: its input term
    and targets cut to those rows, nothing recomputed or re-checked)."""
    return field if idx.numel() == full_batch else field.restrict(idx)
