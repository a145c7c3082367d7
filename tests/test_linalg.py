"""checked_solve, checked_eigvals(h): a wrong or failed multi-threaded LAPACK call is caught and
redone on one thread."""

from __future__ import annotations

import pytest
import torch

from ctep import _linalg
from ctep._linalg import checked_solve


def test_checked_solve_accepts_ill_conditioned_but_correct_solves():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 40, 40, generator=gen, dtype=torch.float64))
    a = q @ torch.diag_embed(torch.logspace(0, -10, 40, dtype=torch.float64)) @ q.mT
    b = torch.randn(3, 40, 2, generator=gen, dtype=torch.float64)
    x = checked_solve(a, b)
    assert torch.equal(x, torch.linalg.solve(a, b))  # kept as is: backward error is small


def test_checked_solve_redoes_a_wrong_or_failed_solve(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 30, 30, generator=gen, dtype=torch.float64) + 6 * torch.eye(30)
    b = torch.randn(2, 30, 1, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(a, b)
    real = torch.linalg.solve
    for fault in ("wrong", "error"):
        calls = []

        def flaky(m, v, fault=fault, calls=calls):
            calls.append(torch.get_num_threads())
            if len(calls) == 1:
                if fault == "error":
                    raise RuntimeError("Pivots given to lu_solve must all be greater or equal to 1")
                return real(m, v) * 1.001
            return real(m, v)

        monkeypatch.setattr(_linalg.torch.linalg, "solve", flaky)
        threads = torch.get_num_threads()
        x = checked_solve(a, b)
        monkeypatch.setattr(_linalg.torch.linalg, "solve", real)
        torch.testing.assert_close(x, exact, rtol=1e-12, atol=1e-14)
        assert calls[1:] == [1] and torch.get_num_threads() == threads


def test_checked_solve_ex_flags_singular_samples_and_recovers_from_errors(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3, 20, 20, generator=gen, dtype=torch.float64) + 5 * torch.eye(20)
    a[1] = 0.0  # singular
    b = torch.randn(3, 20, 1, generator=gen, dtype=torch.float64)
    x, ok = _linalg.checked_solve_ex(a, b)
    assert ok.tolist() == [True, False, True] and not x[1].any()
    torch.testing.assert_close(x[[0, 2]], torch.linalg.solve(a[[0, 2]], b[[0, 2]]))
    real, calls = torch.linalg.lu_solve, []

    def broken_once(*args, **kwargs):
        calls.append(torch.get_num_threads())
        if len(calls) == 1:
            raise RuntimeError("Pivots given to lu_solve must all be greater or equal to 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(_linalg.torch.linalg, "lu_solve", broken_once)
    x2, ok2 = _linalg.checked_solve_ex(a, b)
    assert torch.equal(ok2, ok) and torch.allclose(x2, x, rtol=1e-12, atol=1e-14)
    assert calls[1:] == [1]


def _counting(monkeypatch, name, fault=None):
    """Replace torch.linalg.<name> by a wrapper recording the thread count of each call; the
    first call's answer is spoilt by ``fault`` (a function of the true answer, or raises)."""
    real, calls = getattr(torch.linalg, name), []

    def wrapper(m):
        calls.append(torch.get_num_threads())
        vals = real(m)
        return fault(vals) if fault is not None and len(calls) == 1 else vals

    monkeypatch.setattr(_linalg.torch.linalg, name, wrapper)
    return calls


def _matrices(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of symmetric matrices (one with eigenvalues from 1 down to 1e-12) and a batch
    of non-normal ones (a Jordan-like block: eigenvalues ill-conditioned)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 30, 30, generator=gen, dtype=torch.float64))
    spec = torch.randn(3, 30, generator=gen, dtype=torch.float64)
    spec[1] = torch.logspace(0, -12, 30, dtype=torch.float64)
    sym = q @ torch.diag_embed(spec) @ q.mT
    sym = 0.5 * (sym + sym.mT)
    gen_ = torch.randn(3, 30, 30, generator=gen, dtype=torch.float64)
    gen_[2] = torch.diag(torch.linspace(-1, 1, 30, dtype=torch.float64)) \
        + 1e3 * torch.diag(torch.ones(29, dtype=torch.float64), 1)
    return sym, gen_


@pytest.mark.parametrize("name", ["eigvalsh", "eigvals"])
def test_checked_eigenvalues_keep_a_correct_answer(monkeypatch, name):
    sym, general = _matrices(3)
    a = sym if name == "eigvalsh" else general
    expected = getattr(torch.linalg, name)(a)
    calls = _counting(monkeypatch, name)
    vals = getattr(_linalg, f"checked_{name}")(a)
    assert torch.equal(vals, expected) and len(calls) == 1  # no repeat: the check passed
    assert _linalg._spectrum_ok(a.to(torch.float32), expected.to(
        torch.complex64 if expected.is_complex() else torch.float32))


def _shift_two(vals: torch.Tensor) -> torch.Tensor:
    """Move one eigenvalue up and another down by the same amount: Σλ is unchanged, so only
    the Σλ² check can see it."""
    out = vals.clone()
    out[0, 0] += 1e-6
    out[0, -1] -= 1e-6
    return out


@pytest.mark.parametrize("name", ["eigvalsh", "eigvals"])
@pytest.mark.parametrize("fault", ["error", "scaled", "shifted", "nan"])
def test_checked_eigenvalues_redo_a_wrong_or_failed_answer(monkeypatch, name, fault):
    sym, general = _matrices(4)
    a = sym if name == "eigvalsh" else general
    expected = getattr(torch.linalg, name)(a)

    def raise_(_vals):
        raise RuntimeError("linalg.eigh: The algorithm failed to converge")

    spoil = {"error": raise_, "scaled": lambda v: v * 1.001, "shifted": _shift_two,
             "nan": lambda v: torch.where(torch.arange(v.shape[-1]) == 3, v * torch.nan, v)}
    threads = torch.get_num_threads()
    calls = _counting(monkeypatch, name, spoil[fault])
    vals = getattr(_linalg, f"checked_{name}")(a)
    assert torch.equal(vals, expected)
    assert calls[1:] == [1] and torch.get_num_threads() == threads


def test_checked_eigvalsh_reads_the_lower_triangle_like_eigvalsh(monkeypatch):
    sym, _ = _matrices(5)
    a = torch.tril(sym) + torch.triu(torch.full_like(sym, 7.0), 1)  # garbage above the diagonal
    calls = _counting(monkeypatch, "eigvalsh")
    vals = _linalg.checked_eigvalsh(a)
    assert len(calls) == 1
    torch.testing.assert_close(vals, torch.linalg.eigvalsh(sym), rtol=0, atol=1e-13)


def test_spectrum_check_skips_non_finite_matrices_and_empty_ones():
    a = torch.eye(4, dtype=torch.float64).expand(2, 4, 4).clone()
    a[1, 0, 0] = torch.nan
    vals = torch.ones(2, 4, dtype=torch.float64)
    vals[1] = torch.nan
    assert _linalg._spectrum_ok(a, vals)  # sample 1 has NaN input: not checked
    vals[0, 0] = torch.nan
    assert not _linalg._spectrum_ok(a, vals)  # sample 0: finite input, NaN eigenvalue
    assert _linalg._spectrum_ok(torch.zeros(3, 0, 0), torch.zeros(3, 0))


@pytest.mark.parametrize("symmetric", [True, False])
def test_jacobian_spectrum_survives_a_failed_eigensolver_call(monkeypatch, symmetric):
    from ctep import DenseHopfield, TimeConstants, VectorField
    from ctep.diagnostics import jacobian_spectrum
    from ctep.reference.adjoint import relaxation_rates

    energy = DenseHopfield((4, 6, 3), activation="tanh", seed=0, dtype=torch.float64)
    tau = TimeConstants.sample(energy.state_shapes, "lognormal", mean=1.0, spread=1.0, seed=0)
    field = VectorField(energy, "squared_error", tau)
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    states = tuple(0.1 * torch.ones(3, *shape, dtype=torch.float64)
                   for shape in energy.state_shapes)
    expected = jacobian_spectrum(field, x, states, symmetric=symmetric).eigenvalues
    rates = relaxation_rates(field, x, states)

    def raise_(_vals):
        raise RuntimeError("DLASWP parameter 6 was incorrect")

    for name in ("eigvals", "eigvalsh"):
        _counting(monkeypatch, name, raise_)
    got = jacobian_spectrum(field, x, states, symmetric=symmetric).eigenvalues
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    _counting(monkeypatch, "eigvals", raise_)
    assert relaxation_rates(field, x, states) == rates
