"""checked_solve: a wrong or failed multi-threaded LAPACK solve is caught and redone."""

from __future__ import annotations

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
