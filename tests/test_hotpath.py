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


def test_cost_targets_are_memoised_and_still_checked(monkeypatch):
    from ctep.losses import CrossEntropy, SquaredError, _targets_as_float

    gen = torch.Generator().manual_seed(1)
    out = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    for cost in (SquaredError(), CrossEntropy()):
        first = cost.grad_output(out, y)
        assert torch.equal(cost.float_targets(y, 4, out), _targets_as_float(y, 4, out))
        # repeated evaluations read nothing on the host
        reads = {"n": 0}
        original = torch.Tensor.__int__

        def counted(self, _original=original, _reads=reads):
            _reads["n"] += 1
            return _original(self)

        monkeypatch.setattr(torch.Tensor, "__int__", counted)
        for _ in range(5):
            assert torch.equal(cost.grad_output(out, y), first)
        assert reads["n"] == 0
        monkeypatch.undo()
        # an in-place change of y, another dtype or another batch recomputes
        y2 = y.clone()
        before = cost.grad_output(out, y2)
        y2[0] = 1
        assert not torch.equal(cost.grad_output(out, y2), before)
        assert cost.grad_output(out.float(), y).dtype == torch.float32
        with pytest.raises(ValueError, match="class indices"):
            cost.grad_output(out, torch.tensor([0, 4, 1, 2, 2, 0]))
        # sub-batches (samples leaving a relaxation) replace the memo instead of piling up:
        # one entry, for the current targets and dtype, none kept for earlier target tensors
        for b in range(6, 0, -1):
            yb = y[:b]
            cost.grad_output(out[:b], yb)
            o32 = out[:b].float()
            assert torch.equal(cost.float_targets(yb, 4, o32), _targets_as_float(yb, 4, o32))
            assert len(cost._target_memo) == 1
            assert all(hit[0][0] is yb for hit in cost._target_memo.values())
