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


def test_bound_field_prepares_the_targets_once(host_reads):
    """The nudged field holds the cost's float targets, checked and built once at the bind: its
    nudges read nothing on the host, equal those computed from the class indices, follow the
    states' dtype, and a restricted field holds their rows."""
    from ctep import DenseHopfield, VectorField
    from ctep.losses import CrossEntropy, SquaredError

    energy = DenseHopfield((3, 5, 4), activation="tanh", seed=0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, generator=gen, dtype=torch.float64)
    out = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    for cost in (SquaredError(), CrossEntropy(), CrossEntropy((4, 5), dtype=torch.float64)):
        field = VectorField(energy, cost)
        bound = field.bind(x, y, 0.5)
        readout = getattr(cost, "readout", None) is not None
        classes = 5 if readout else 4
        assert torch.equal(bound.targets, torch.nn.functional.one_hot(y, classes).double())
        host_reads["n"] = 0
        first = bound.nudge((out,))
        for _ in range(5):
            assert torch.equal(bound.nudge((out,)), first)
        assert host_reads["n"] == 0
        assert torch.equal(first, 0.5 * cost.grad_output(out, y))  # the indices, checked anew
        if not readout:  # a float64 read-out takes float64 states only
            assert bound.nudge((out.float(),)).dtype == torch.float32
        rows = torch.tensor([4, 1])
        sub = bound.restrict(rows)
        assert torch.equal(sub.targets, bound.targets[rows]) and torch.equal(sub.y, y[rows])
        assert torch.equal(sub.nudge((out[rows],)), 0.5 * cost.grad_output(out[rows], y[rows]))
        assert field.bind(x).targets is None  # β = 0: no nudge, nothing prepared
        with pytest.raises(ValueError, match="class indices"):
            field.bind(x, torch.tensor([0, 9, 1, 2, 2, 0]), 0.5)


#: (energy, method); rk23 is left out on the ResNet: at its default tolerances it does not bring
#: the samples started at zero to 1e-8 there within 20 000 steps
TERM_CASES = [(name, method) for name in ("dense", "conv", "dendritic", "hopfield-resnet")
              for method in ("fixed_point", "anderson", "rk23", "dopri5")
              if (name, method) != ("hopfield-resnet", "rk23")]


def _leaving_samples(name: str):
    """A field and a start where samples 0-3 begin at their equilibrium (they stop at the first
    check) and 4-7 at zero."""
    from ctep import VectorField, relax
    from ctep.models import small_instance
    from ctep.timeconstants import TimeConstants

    energy, shape = small_instance(name)
    tau = TimeConstants.sample(energy.state_shapes, "lognormal", 1.0, 1.0, seed=3,
                               dtype=torch.float64)
    field = VectorField(energy, tau=tau)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, *shape, generator=gen, dtype=torch.float64)
    start = relax(field.bind(x), method="fixed_point", tol=1e-12, max_steps=20_000).states
    zero = energy.init_states(8, dtype=torch.float64)
    return field, x, tuple(torch.cat([a[:4], z[4:]]) for a, z in zip(start, zero, strict=True))


@pytest.mark.parametrize(("name", "method"), TERM_CASES)
def test_the_input_term_is_computed_once_per_bind(monkeypatch, name, method):
    """Samples stop at different checks; the input term is computed once, at the bind, and the
    smaller working batches get its rows (BoundField.restrict). The equilibria equal those of a
    relaxation that recomputes the term for every working batch. The Hopfield-ResNet has two
    couplings from the input (a tuple of two terms, cut together)."""
    from ctep import relax
    from ctep.dynamics import BoundField

    field, x, s0 = _leaving_samples(name)
    energy = field.energy
    calls = {"n": 0}
    original = energy.input_term

    def counting(inputs):
        calls["n"] += 1
        return original(inputs)

    monkeypatch.setattr(energy, "input_term", counting)
    bound = field.bind(x)
    assert calls["n"] == 1
    assert isinstance(bound.input_term, tuple) == (name in ("conv", "hopfield-resnet"))
    if name == "hopfield-resnet":
        assert len(bound.input_term) == 2
    eq = relax(bound, s0, method=method, tol=1e-8, max_steps=20_000, check_every=1)
    assert bool(eq.converged.all())
    assert len(set(eq.t.tolist())) > 1  # samples left the batch before the end
    assert calls["n"] == 1, calls
    # against recomputing for every working batch
    monkeypatch.setattr(BoundField, "restrict",
                        lambda self, idx: BoundField(self.field, self.x[idx], None, self.beta))
    again = relax(field.bind(x), s0, method=method, tol=1e-8, max_steps=20_000, check_every=1)
    assert calls["n"] > 2
    assert max(float((a - b).abs().max())
               for a, b in zip(eq.states, again.states, strict=True)) < 1e-7


@pytest.mark.parametrize("name", ["dense", "conv", "dendritic", "hopfield-resnet", "fhn"])
def test_a_restricted_field_holds_the_rows_of_the_term(name):
    """restrict(idx) cuts the bound term by rows, bit for bit, also when restricted again; the
    drive of the restricted field is that of a field bound to the rows of x."""
    from ctep import VectorField
    from ctep.models import small_instance
    from ctep.skew import fitzhugh_nagumo

    if name == "fhn":
        field = fitzhugh_nagumo(4, 3, 2, dtype=torch.float64)
        shape = (3,)
    else:
        energy, shape = small_instance(name)
        field = VectorField(energy)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(6, *shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        bound = field.bind(x)
        full = bound.input_term
        terms = full if isinstance(full, tuple) else (full,)
        rows, again = torch.tensor([5, 0, 3, 2]), torch.tensor([2, 0])
        sub = bound.restrict(rows)
        subsub = sub.restrict(again)
        for cut, idx in ((sub, rows), (subsub, rows[again])):
            got = cut.input_term if isinstance(cut.input_term, tuple) else (cut.input_term,)
            assert all(torch.equal(g, t[idx]) for g, t in zip(got, terms, strict=True))
            assert torch.equal(cut.x, x[idx]) and cut.nfe == 0
        states = tuple(torch.rand(4, *sh, generator=gen, dtype=torch.float64) * 0.5
                       for sh in field.energy.state_shapes)
        want = field.bind(x[rows]).drive(states)
        assert max(float((a - b).abs().max())
                   for a, b in zip(sub.drive(states), want, strict=True)) < 1e-14


def test_leaving_samples_give_the_states_of_a_full_term_cut_by_rows():
    """What the removed memo did, kept: the working batch's term is the full batch's rows, so a
    sample's path depends on the others only through the shared arithmetic. A relaxation whose
    restricted fields are built by hand from the full term's rows is bit for bit the same."""
    from ctep import relax
    from ctep.dynamics import BoundField

    field, x, s0 = _leaving_samples("dense")
    cfg = dict(method="fixed_point", tol=1e-8, max_steps=20_000, check_every=1)
    eq = relax(field.bind(x), s0, **cfg)
    assert len(set(eq.t.tolist())) > 1
    original = BoundField.restrict

    def by_hand(self, idx):
        sub = original(self, idx)
        sub.input_term = torch.addmm(field.energy.biases[0], x, field.energy.weights[0].T)[idx]
        return sub

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BoundField, "restrict", by_hand)
        again = relax(field.bind(x), s0, **cfg)
    assert all(torch.equal(a, b) for a, b in zip(eq.states, again.states, strict=True))
    assert torch.equal(eq.nfe, again.nfe)


@pytest.mark.parametrize("name", ["dense", "conv", "dendritic"])
def test_a_field_is_for_the_weights_at_bind_time(name):
    """Documented behaviour: the bound input term is that of the weights when the field was
    bound (the rest of the drive reads the weights as they are). After an optimizer step (a
    fused one too, which bumps no version counter) the old field still holds the old term;
    binding again gives the drive of the new weights."""
    from ctep import VectorField
    from ctep.models import small_instance

    energy, shape = small_instance(name)
    field = VectorField(energy)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, *shape, generator=gen, dtype=torch.float64)
    states = tuple(torch.rand(3, *sh, generator=gen, dtype=torch.float64) * 0.5
                   for sh in energy.state_shapes)
    with torch.no_grad():
        old = field.bind(x)
        term = tuple(t.clone() for t in _as_tuple(old.input_term))
    optimizer = torch.optim.SGD(energy.parameters(), lr=0.5, fused=True)
    for p in energy.parameters():
        p.grad = torch.full_like(p, 0.1)
    optimizer.step()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(_as_tuple(old.input_term), term,
                                                     strict=True))
        stale = old.drive(states)
        held = energy.drive(x, states, None, input_term=old.input_term)
        new = field.bind(x).drive(states)
        direct = energy.drive(x, states, None)  # no term given: computed from the weights now
    assert all(torch.equal(a, b) for a, b in zip(stale, held, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(new, direct, strict=True))
    assert max(float((a - b).abs().max()) for a, b in zip(new, stale, strict=True)) > 1e-3


@pytest.mark.parametrize("name", ["dense", "conv"])
def test_relaxation_under_inference_mode(name):
    """A relaxation inside ``torch.inference_mode`` (input and targets made outside or inside
    it, samples leaving the batch, a nudged phase) gives the equilibria of the same relaxation
    under ``torch.no_grad``; so does an inference input bound outside it with grad enabled."""
    from ctep import VectorField, relax
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
    runs = []
    for inside in (False, True):
        with torch.inference_mode():
            xi, yi = (x.clone(), y.clone()) if inside else (x, y)
            runs.append((relax(field.bind(xi), s0, **cfg),
                         relax(field.bind(xi, yi, 0.5), s0, **cfg)))
    assert xi.is_inference()
    runs.append((relax(field.bind(xi), s0, **cfg), relax(field.bind(xi, yi, 0.5), s0, **cfg)))
    for got, got_nudged in runs:
        for want, have in ((free, got), (nudged, got_nudged)):
            assert torch.equal(want.status, have.status)
            assert max(float((a - b).abs().max())
                       for a, b in zip(want.states, have.states, strict=True)) < 1e-12


def _bptt_recomputed(field, x, y, start, steps: int, damping: float):
    """∇θ of ℓ(s_K) through K map steps whose drive recomputes the input term at every step."""
    params = tuple(field.learnable_parameters())
    with torch.enable_grad():
        s = tuple(t.detach() for t in start)
        for _ in range(steps):
            d = field.energy.drive(x, s, None)  # input_term=None: computed again
            s = field.energy.clamp(tuple(a + damping * b for a, b in zip(s, d, strict=True)))
        loss = field.loss(s, y).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads,
                                                                         strict=True))


@pytest.mark.parametrize("name", ["dense", "conv", "dendritic", "hopfield-resnet"])
def test_bptt_through_the_bound_term_equals_recomputing_it(name):
    """BPTT binds once with grad enabled: every step reuses the one input term and its graph.
    The gradients equal those of an unroll that recomputes the term at every step (the input
    weights get one product's gradient instead of a sum of K), also when the caller is under
    ``torch.no_grad``."""
    from ctep import VectorField
    from ctep.models import small_instance
    from ctep.reference import bptt_gradient

    energy, shape = small_instance(name)
    field = VectorField(energy)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(3, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, energy.state_shapes[-1][0], (3,), generator=gen)
    start = energy.init_states(3, dtype=torch.float64)
    with torch.no_grad():
        assert field.bind(x).input_term is not None
        assert not any(t.requires_grad for t in _as_tuple(field.bind(x).input_term))
    assert all(t.requires_grad for t in _as_tuple(field.bind(x).input_term))
    want = _bptt_recomputed(field, x, y, start, 40, 0.5)
    for mode in (torch.enable_grad, torch.no_grad):
        with mode():
            got = bptt_gradient(field, x, y, start, steps=40, damping=0.5)
        scale = max(float(w.abs().max()) for w in want)
        assert scale > 0
        assert max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True)) \
            <= 1e-13 * scale


def _as_tuple(term):
    return term if isinstance(term, tuple) else (term,)


@pytest.mark.parametrize("estimator", ["centered", "holomorphic", "finite_nudge", "langevin"])
def test_estimators_relax_fields_without_a_graph(monkeypatch, estimator):
    """The estimators bind under no_grad even when called with grad enabled: their relaxations
    never differentiate the drive, and a held graph would keep, e.g., a max-pooled input
    convolution's pre-pooling map alive."""
    from ctep import VectorField
    from ctep.estimators import get_estimator
    from ctep.models import small_instance

    energy, shape = small_instance("dense", form="classical")
    field = VectorField(energy)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (3,), generator=gen)
    bound = []
    original = VectorField.bind

    def recorded(self, *args):
        bound.append(original(self, *args))
        return bound[-1]

    monkeypatch.setattr(VectorField, "bind", recorded)
    options = {"langevin": dict(samples=20, temperature=1e-3)}.get(estimator, {})
    with torch.enable_grad():
        est = get_estimator(estimator, beta=0.05, **options)(field, x, y)
    # one bind per batch: the nudged phases share its input term (BoundField.nudged); Langevin
    # binds its replicated batch for the sampling once more
    assert len(bound) == (2 if estimator == "langevin" else 1)
    assert all(torch.isfinite(g).all() for g in est.grads)
    assert not any(b.input_term.requires_grad for b in bound)


def test_nudged_fields_share_the_input_term_and_check_their_targets():
    """BoundField.nudged: the same x and input term object (not recomputed), its own targets,
    β and a fresh counter; the drive equals that of a field bound from scratch bit for bit."""
    from ctep import VectorField
    from ctep.models import small_instance

    energy, shape = small_instance("dense")
    field = VectorField(energy)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=gen)
    base = field.bind(x)
    s = tuple(torch.rand(4, *sh, generator=gen, dtype=torch.float64)
              for sh in energy.state_shapes)
    base.drive(s)
    nudged = base.nudged(y, 0.4)
    assert nudged.input_term is base.input_term and nudged.x is base.x
    assert nudged.nfe == 0 and base.nfe == 1 and base.beta == 0 and base.targets is None
    fresh = field.bind(x, y, 0.4)
    for a, b in zip(nudged.drive(s), fresh.drive(s), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs targets"):
        base.nudged(None, 0.4)
    with pytest.raises(ValueError):
        base.nudged(torch.tensor([0, 1, 2, 7]), 0.4)  # class 7 of 3
