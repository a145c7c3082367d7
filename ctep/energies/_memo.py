"""Memoisation of an energy's constant input terms during a relaxation.

An energy keeps its memo in ``self.__dict__["_input_memo"]``: one entry per key (a coupling
from the input), each computed from tensors whose first one is the input x. When a relaxation
takes finished samples out of its working batch, :func:`restrict_input_memo` gives the smaller
batch the rows of the full batch's entries instead of a recomputation. Every relaxation starts
with :func:`forget_input_memo`: version counters do not see every in-place change of a weight
(fused optimizers, ``torch.optim.SGD(..., fused=True)`` and the like, update parameters without
bumping them), and weights change between relaxations, not during one.
"""

from __future__ import annotations

from torch import Tensor

MEMO_ATTRIBUTE = "_input_memo"


def _versions(tensors: tuple[Tensor, ...]) -> tuple:
    return tuple((t._version, t.dtype, t.device, t.data_ptr()) for t in tensors)


def _valid(tensors: tuple[Tensor, ...], versions: tuple, current: tuple[Tensor, ...]) -> bool:
    return (len(tensors) == len(current) and all(a is b for a, b in zip(tensors, current,
                                                                         strict=True))
            and versions == _versions(current))


def memoised(memo: dict, key, tensors: tuple[Tensor, ...], compute):
    """``compute()``, reused while ``tensors`` are the same objects with the same storage, dtype
    and device, unmodified in place (version counters): the input (first) and the weights a
    constant input term depends on. Inference tensors (made under ``torch.inference_mode``)
    have no version counter, so an in-place change of one could not be seen: with one among
    ``tensors`` nothing is stored or reused."""
    if any(t.is_inference() for t in tensors):
        return compute()
    hit = memo.get(key)
    if hit is not None and _valid(hit[0], hit[1], tensors):
        return hit[2]
    out = compute()
    memo[key] = (tensors, _versions(tensors), out, None)
    return out


def forget_input_memo(energy: object) -> None:
    """Drop the memo entries of ``energy`` and of every module inside it (a wrapper's energy)."""
    modules = energy.modules() if hasattr(energy, "modules") else (energy,)
    for module in modules:
        memo = module.__dict__.get(MEMO_ATTRIBUTE)
        if memo:
            memo.clear()


def restrict_input_memo(energy: object, root: Tensor, child: Tensor, rows: Tensor) -> None:
    """Give ``child = root[rows]`` the rows of every memo entry computed for ``root``.

    An entry qualifies when it was computed from ``root`` (or restricted from it before) with
    every tensor it depends on unchanged since; it is replaced by one for ``child`` holding
    ``out[rows]`` (the root's result stays referenced, so later, smaller batches are cut from
    it too). Entries of other inputs are left alone (the next lookup recomputes them).
    """
    memo = energy.__dict__.get(MEMO_ATTRIBUTE)
    if not memo or child.is_inference():  # memoised neither stores nor reuses those
        return
    for key, (tensors, versions, out, origin) in list(memo.items()):
        if origin is None:
            origin = (tensors, versions, out)
        root_tensors, root_versions, root_out = origin
        if not (root_tensors[0] is root and _valid(root_tensors, root_versions, root_tensors)
                and root_out.shape[0] == root.shape[0]):
            continue
        new = (child, *root_tensors[1:])
        memo[key] = (new, _versions(new), root_out[rows], origin)
