"""Hot-path helpers of the training loop."""

from __future__ import annotations

import math

import pytest
import torch

from ctep.train.trainer import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.complex64])
def test_all_finite_matches_isfinite(dtype):
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(7, 5, generator=gen).to(dtype), torch.randn(3, generator=gen).to(dtype),
            torch.zeros(0, dtype=dtype)]
    assert all_finite(base)
    assert all_finite([])
    for bad in (math.nan, math.inf, -math.inf):
        for k in range(2):
            ts = [t.clone() for t in base]
            ts[k].view(-1)[-1] = bad
            assert not all_finite(ts), (bad, k)
            assert all_finite(ts) == all(bool(torch.isfinite(t).all()) for t in ts)
    if dtype.is_complex:
        ts = [t.clone() for t in base]
        ts[0].view(-1)[2] = complex(0.0, math.nan)  # only the imaginary part is bad
        assert not all_finite(ts)
