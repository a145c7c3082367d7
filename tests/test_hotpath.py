"""Hot-path helpers of the training loop."""

from __future__ import annotations

import importlib
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


#: (energy, method); rk23 is left out on the ResNet: at its default tolerances it does not bring
#: the samples started at zero to 1e-8 there within 20 000 steps
MEMO_CASES = [(name, method) for name in ("dense", "conv", "dendritic", "hopfield-resnet")
              for method in ("fixed_point", "anderson", "rk23", "dopri5")
              if (name, method) != ("hopfield-resnet", "rk23")]


@pytest.mark.parametrize(("name", "method"), MEMO_CASES)
def test_leaving_samples_reuse_the_input_term(monkeypatch, name, method):
    """Samples stop at different checks; the smaller working batches get the rows of the full
    batch's memoised input term instead of a recomputation (one per input coupling per
    relaxation), and the equilibria equal those of a relaxation that recomputes it. The
    Hopfield-ResNet has two couplings from the input (two memo entries cut together)."""
    from ctep import VectorField, relax
    from ctep.energies import _memo
    from ctep.models import small_instance
    from ctep.timeconstants import TimeConstants

    energy, shape = small_instance(name)
    # the module whose code calls memoised (the ResNet inherits the conv energy's input term)
    module = importlib.import_module("ctep.energies.conv" if name == "hopfield-resnet"
                                     else type(energy).__module__)
    tau = TimeConstants.sample(energy.state_shapes, "lognormal", 1.0, 1.0, seed=3,
                               dtype=torch.float64)
    field = VectorField(energy, tau=tau)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, *shape, generator=gen, dtype=torch.float64)
    # samples 0-3 start at their equilibrium and stop at the first check, 4-7 start at zero
    start = relax(field.bind(x), method="fixed_point", tol=1e-12, max_steps=20_000).states
    zero = energy.init_states(8, dtype=torch.float64)
    s0 = tuple(torch.cat([a[:4], z[4:]]) for a, z in zip(start, zero, strict=True))
    energy.__dict__[_memo.MEMO_ATTRIBUTE].clear()
    computed = {"n": 0}
    original = module.memoised

    def counting(memo, key, tensors, compute):
        def counted():
            computed["n"] += 1
            return compute()
        return original(memo, key, tensors, counted)

    monkeypatch.setattr(module, "memoised", counting)
    eq = relax(field.bind(x), s0, method=method, tol=1e-8, max_steps=20_000, check_every=1)
    assert bool(eq.converged.all())
    assert len(set(eq.t.tolist())) > 1  # samples left the batch before the end
    keys = len(energy.__dict__[_memo.MEMO_ATTRIBUTE])
    assert keys == (2 if name == "hopfield-resnet" else 1)
    assert computed["n"] == keys, computed
    # against recomputing for every working batch
    book_module = importlib.import_module("ctep.solve._book")
    monkeypatch.setattr(book_module, "restrict_input_memo", lambda *a: None)
    energy.__dict__[_memo.MEMO_ATTRIBUTE].clear()
    computed["n"] = 0
    again = relax(field.bind(x), s0, method=method, tol=1e-8, max_steps=20_000, check_every=1)
    assert computed["n"] > keys
    assert max(float((a - b).abs().max())
               for a, b in zip(eq.states, again.states, strict=True)) < 1e-7


def test_restricted_memo_follows_in_place_changes():
    """A weight changed in place after the full batch's term was computed is not cut from the
    stale term: the restriction is skipped and the next lookup recomputes."""
    from ctep.energies._memo import MEMO_ATTRIBUTE, restrict_input_memo
    from ctep.models import small_instance

    energy, shape = small_instance("dense")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, *shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        full = energy.input_drive(x)
        rows = torch.tensor([0, 3])
        sub = x[rows]
        restrict_input_memo(energy, x, sub, rows)
        assert torch.equal(energy.input_drive(sub), full[rows])
        smaller = sub[torch.tensor([1])]
        restrict_input_memo(energy, x, smaller, torch.tensor([3]))  # cut from the root again
        assert torch.equal(energy.input_drive(smaller), full[3:4])
        energy.weights[0].mul_(2.0)
        other = x[torch.tensor([1])]
        restrict_input_memo(energy, x, other, torch.tensor([1]))
        fresh = energy.input_drive(other)
        assert torch.allclose(fresh, torch.addmm(energy.biases[0], other, energy.weights[0].T))
        assert not torch.allclose(fresh, full[1:2])
        assert len(energy.__dict__[MEMO_ATTRIBUTE]) == 1


@pytest.mark.parametrize("name", ["dense", "conv"])
def test_relaxation_under_inference_mode(name):
    """Inference tensors have no version counter: a relaxation inside ``torch.inference_mode``
    (input and targets made outside or inside it, samples leaving the batch, a nudged phase)
    raised "Inference tensors do not track version counter" from the memo. It now gives the
    equilibria of the same relaxation under ``torch.no_grad``, and the memo keeps no entry
    that depends on an inference tensor."""
    from ctep import VectorField, relax
    from ctep.energies._memo import MEMO_ATTRIBUTE
    from ctep.models import small_instance

    energy, shape = small_instance(name)
    field = VectorField(energy)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, energy.state_shapes[-1][0], (6,), generator=gen)
    cfg = dict(method="fixed_point", tol=1e-9, max_steps=5000, check_every=1)
    # samples 0-2 start at their equilibrium and leave at the first check
    start = relax(field.bind(x), method="fixed_point", tol=1e-12, max_steps=5000).states
    zero = energy.init_states(6, dtype=torch.float64)
    s0 = tuple(torch.cat([a[:3], z[3:]]) for a, z in zip(start, zero, strict=True))
    with torch.no_grad():
        free = relax(field.bind(x), s0, **cfg)
        nudged = relax(field.bind(x, y, 0.5), s0, **cfg)
    assert len(set(free.steps.tolist())) > 1 and len(set(nudged.steps.tolist())) > 1
    for inside in (False, True):
        with torch.inference_mode():
            xi, yi = (x.clone(), y.clone()) if inside else (x, y)
            got = relax(field.bind(xi), s0, **cfg)
            got_nudged = relax(field.bind(xi, yi, 0.5), s0, **cfg)
        for want, have in ((free, got), (nudged, got_nudged)):
            assert torch.equal(want.status, have.status)
            assert max(float((a - b).abs().max())
                       for a, b in zip(want.states, have.states, strict=True)) < 1e-12
        for tensors, *_ in energy.__dict__[MEMO_ATTRIBUTE].values():
            assert not any(t.is_inference() for t in tensors)


@pytest.mark.parametrize("name", ["dense", "conv", "dendritic"])
def test_relaxation_after_a_fused_optimizer_step(name):
    """A fused optimizer step (``fused=True``) changes the weights without bumping their
    version counters, so the input term memoised by one relaxation was served to the next on
    the same input with the old weights. Each relaxation now starts without memo entries: the
    drive it memoises after the step is that of the new weights (the drive under autograd,
    which never uses the memo)."""
    from ctep import VectorField, relax
    from ctep.models import small_instance

    energy, shape = small_instance(name)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, *shape, generator=gen, dtype=torch.float64)
    cfg = dict(method="fixed_point", tol=0.0, max_steps=20)  # one batch throughout: no cut
    field = VectorField(energy)
    relax(field.bind(x), **cfg)
    optimizer = torch.optim.SGD(energy.parameters(), lr=0.5, fused=True)
    for p in energy.parameters():
        p.grad = torch.full_like(p, 0.1)
    versions = [p._version for p in energy.parameters()]
    optimizer.step()
    assert [p._version for p in energy.parameters()] == versions  # what the memo cannot see
    after = relax(field.bind(x), **cfg)
    with torch.no_grad():
        served = field.bind(x).drive(after.states)
    with torch.enable_grad():
        fresh = field.bind(x).drive(after.states)
    assert max(float((a - b).detach().abs().max())
               for a, b in zip(served, fresh, strict=True)) < 1e-12
