"""Memoisation of an energy's constant input terms during a relaxation."""

from __future__ import annotations

from torch import Tensor


def memoised(memo: dict, key, tensors: tuple[Tensor, ...], compute):
    """``compute()``, reused while ``tensors`` are the same objects with the same storage, dtype
    and device, unmodified in place (version counters): the input and the weights a constant
    input term depends on."""
    versions = tuple((t._version, t.dtype, t.device, t.data_ptr()) for t in tensors)
    hit = memo.get(key)
    if (hit is not None and len(hit[0]) == len(tensors)
            and all(a is b for a, b in zip(hit[0], tensors, strict=True)) and hit[1] == versions):
        return hit[2]
    out = compute()
    memo[key] = (tensors, versions, out)
    return out
