"""ctep._linalg: every LAPACK call runs on one intra-op thread (no nested OpenMP teams), the
thread setting is restored whatever happens, results are checked, and no module of the
package calls LAPACK around it."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

import ctep
from ctep import _linalg
from ctep._linalg import LinAlgCheckError, checked_solve, one_thread


def _recording(monkeypatch, name, fault=None):
    """Replace torch.linalg.<name> by a wrapper recording the intra-op thread count of each
    call; its answer is spoilt by ``fault`` (a function of the true answer, or one that
    raises)."""
    real, calls = getattr(torch.linalg, name), []

    def wrapper(*args, **kwargs):
        calls.append(torch.get_num_threads())
        out = real(*args, **kwargs)
        return fault(out) if fault is not None else out

    monkeypatch.setattr(_linalg.torch.linalg, name, wrapper)
    return calls


@pytest.fixture
def two_threads():
    """Two intra-op threads for the test (a pool of one would not show the switch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_one_thread_restores_the_setting_also_on_errors(two_threads):
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(ZeroDivisionError), one_thread():
        raise ZeroDivisionError
    assert torch.get_num_threads() == 2
    meta = torch.zeros(2, device="meta")  # only non-CPU tensors: the setting is left alone
    with one_thread(meta):
        assert torch.get_num_threads() == 2


def _solve_problem(seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 20, 20, generator=gen, dtype=torch.float64) + 5 * torch.eye(20)
    b = torch.randn(3, 20, 1, generator=gen, dtype=torch.float64)
    return a, b


@pytest.mark.parametrize("call", ["solve", "solve_ex", "cholesky", "eigvals", "eigvalsh",
                                  "spectral_norm"])
def test_every_lapack_call_runs_on_one_thread(monkeypatch, two_threads, call):
    a, b = _solve_problem(0)
    spd = a @ a.mT
    names = {"solve": ["solve"], "solve_ex": ["lu_factor_ex", "lu_solve"],
             "cholesky": ["cholesky_ex"], "eigvals": ["eigvals"], "eigvalsh": ["eigvalsh"],
             "spectral_norm": ["matrix_norm"]}[call]
    calls = [_recording(monkeypatch, name) for name in names]
    run = {"solve": lambda: checked_solve(a, b), "solve_ex": lambda: _linalg.checked_solve_ex(a, b),
           "cholesky": lambda: _linalg.cholesky_solve_ex(spd, b),
           "eigvals": lambda: _linalg.checked_eigvals(a),
           "eigvalsh": lambda: _linalg.checked_eigvalsh(spd),
           "spectral_norm": lambda: _linalg.spectral_norm(a)}[call]
    run()
    assert all(c == [1] for c in calls), calls
    assert torch.get_num_threads() == 2


def test_results_equal_the_plain_calls_on_one_thread():
    a, b = _solve_problem(1)
    spd = a @ a.mT
    with one_thread():
        plain = (torch.linalg.solve(a, b), torch.linalg.eigvals(a), torch.linalg.eigvalsh(spd),
                 torch.linalg.matrix_norm(a, 2),
                 torch.cholesky_solve(b, torch.linalg.cholesky(spd)))
    got = (checked_solve(a, b), _linalg.checked_eigvals(a), _linalg.checked_eigvalsh(spd),
           _linalg.spectral_norm(a), _linalg.cholesky_solve_ex(spd, b)[0])
    for g, p in zip(got, plain, strict=True):
        assert torch.equal(g, p)


def test_checked_solve_accepts_ill_conditioned_but_correct_solves():
    gen = torch.Generator().manual_seed(0)
    with one_thread():
        q, _ = torch.linalg.qr(torch.randn(3, 40, 40, generator=gen, dtype=torch.float64))
    a = q @ torch.diag_embed(torch.logspace(0, -10, 40, dtype=torch.float64)) @ q.mT
    b = torch.randn(3, 40, 2, generator=gen, dtype=torch.float64)
    x = checked_solve(a, b)  # condition number 1e10: the backward error is still small
    # |x| reaches 3e9, so the residual is judged relative to |a|·|x| + |b| (a few ulps)
    scale = a.abs().amax((-2, -1), keepdim=True) * x.abs().amax((-2, -1), keepdim=True) + b.abs()
    assert float(((a @ x - b).abs() / scale).max()) < 1e-13


def test_a_wrong_solve_is_an_error_not_an_answer(monkeypatch):
    a, b = _solve_problem(2)
    _recording(monkeypatch, "solve", lambda x: x * 1.001)
    with pytest.raises(LinAlgCheckError, match="backward error"):
        checked_solve(a, b)
    monkeypatch.undo()
    _recording(monkeypatch, "lu_solve", lambda x: x * 1.001)
    with pytest.raises(LinAlgCheckError, match="backward error"):
        _linalg.checked_solve_ex(a, b)


def test_checked_solve_ex_flags_singular_samples():
    a, b = _solve_problem(3)
    a[1] = 0.0  # singular
    x, ok = _linalg.checked_solve_ex(a, b)
    assert ok.tolist() == [True, False, True] and not x[1].any()
    torch.testing.assert_close(x[[0, 2]], checked_solve(a[[0, 2]], b[[0, 2]]))


def test_cholesky_solve_ex_flags_indefinite_samples():
    a, b = _solve_problem(4)
    spd = a @ a.mT
    spd[2] = -spd[2]
    x, ok = _linalg.cholesky_solve_ex(spd, b)
    assert ok.tolist() == [True, True, False]
    torch.testing.assert_close(spd[:2] @ x[:2], b[:2], rtol=0, atol=1e-10)


def _matrices(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of symmetric matrices (one with eigenvalues from 1 down to 1e-12) and a batch
    of non-normal ones (a Jordan-like block: eigenvalues ill-conditioned)."""
    gen = torch.Generator().manual_seed(seed)
    with one_thread():
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
def test_checked_eigenvalues_pass_their_check_on_hard_matrices(name):
    sym, general = _matrices(3)
    a = sym if name == "eigvalsh" else general
    vals = getattr(_linalg, f"checked_{name}")(a)  # would raise if the check failed
    assert _linalg._spectrum_ok(a.to(torch.float32), vals.to(
        torch.complex64 if vals.is_complex() else torch.float32))


def _shift_two(vals: torch.Tensor) -> torch.Tensor:
    """Move one eigenvalue up and another down by the same amount: Σλ is unchanged, so only
    the Σλ² check can see it."""
    out = vals.clone()
    out[0, 0] += 1e-6
    out[0, -1] -= 1e-6
    return out


@pytest.mark.parametrize("name", ["eigvalsh", "eigvals"])
@pytest.mark.parametrize("fault", ["scaled", "shifted", "nan"])
def test_wrong_eigenvalues_are_an_error(monkeypatch, name, fault):
    sym, general = _matrices(4)
    a = sym if name == "eigvalsh" else general
    spoil = {"scaled": lambda v: v * 1.001, "shifted": _shift_two,
             "nan": lambda v: torch.where(torch.arange(v.shape[-1]) == 3, v * torch.nan, v)}
    _recording(monkeypatch, name, spoil[fault])
    with pytest.raises(LinAlgCheckError, match="trace identities"):
        getattr(_linalg, f"checked_{name}")(a)


def test_checked_eigvalsh_reads_the_lower_triangle_like_eigvalsh():
    sym, _ = _matrices(5)
    a = torch.tril(sym) + torch.triu(torch.full_like(sym, 7.0), 1)  # garbage above the diagonal
    vals = _linalg.checked_eigvalsh(a)
    torch.testing.assert_close(vals, _linalg.checked_eigvalsh(sym), rtol=0, atol=1e-13)


def test_spectrum_check_skips_non_finite_matrices_and_empty_ones():
    a = torch.eye(4, dtype=torch.float64).expand(2, 4, 4).clone()
    a[1, 0, 0] = torch.nan
    vals = torch.ones(2, 4, dtype=torch.float64)
    vals[1] = torch.nan
    assert _linalg._spectrum_ok(a, vals)  # sample 1 has NaN input: not checked
    vals[0, 0] = torch.nan
    assert not _linalg._spectrum_ok(a, vals)  # sample 0: finite input, NaN eigenvalue
    assert _linalg._spectrum_ok(torch.zeros(3, 0, 0), torch.zeros(3, 0))


#: torch functions backed by LAPACK (or by an SVD / eigensolver): inside the package only
#: ctep/_linalg.py may call them, each inside one_thread()
_LAPACK = {"solve", "solve_ex", "lu_factor", "lu_factor_ex", "lu_solve", "lu", "eig", "eigvals",
           "eigh", "eigvalsh", "svd", "svdvals", "cholesky", "cholesky_ex", "cholesky_solve",
           "cholesky_inverse", "inv", "inv_ex", "pinv", "lstsq", "qr", "det", "slogdet",
           "matrix_rank", "matrix_exp", "cond", "ldl_factor", "ldl_factor_ex", "ldl_solve",
           "solve_triangular", "triangular_solve", "tensorsolve", "tensorinv", "inverse",
           "pinverse", "lobpcg", "svd_lowrank", "pca_lowrank", "geqrf", "ormqr",
           "householder_product"}


def _lapack_calls(tree: ast.AST) -> list[str]:
    """Names of LAPACK-backed torch functions called in ``tree``: ``torch.X``,
    ``torch.linalg.X``, ``linalg.X``, and ``matrix_norm`` with an ``ord`` other than the
    Frobenius default (2, -2 or 'nuc' are SVDs)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        base = node.func.value
        base_name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
        if base_name not in ("torch", "linalg"):
            continue
        name = node.func.attr
        if name in _LAPACK:
            found.append(name)
        elif name == "matrix_norm":
            order = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "ord"), None)
            if order is not None and not (isinstance(order, ast.Constant)
                                          and order.value == "fro"):
                found.append("matrix_norm(ord)")
    return found


def test_no_module_calls_lapack_outside_the_linalg_module():
    root = pathlib.Path(ctep.__file__).parent
    offenders = {}
    for path in sorted(root.rglob("*.py")):
        if path.name == "_linalg.py" and path.parent == root:
            continue
        calls = _lapack_calls(ast.parse(path.read_text(encoding="utf-8")))
        if calls:
            offenders[str(path.relative_to(root))] = calls
    assert not offenders, f"LAPACK calls outside ctep/_linalg.py: {offenders}"
    # the scan does see them: this file's own one_thread blocks call qr, solve, eigvals, ...
    assert "qr" in _lapack_calls(ast.parse(pathlib.Path(__file__).read_text(encoding="utf-8")))
