"""Holomorphic EP (complex β on a circle) against centered EP and the implicit reference."""

from __future__ import annotations

import json

import pytest
from conftest import problem

from ctep import RelaxConfig, relax
from ctep.cli import main
from ctep.estimators import CenteredEP, HolomorphicEP
from ctep.reference import compare, implicit_gradient

TIGHT = RelaxConfig(method="fixed_point", tol=1e-13, max_steps=100_000)


@pytest.fixture(scope="module")
def sigmoid_case():
    field, x, y = problem(activation="sigmoid", sizes=(6, 9, 7, 4))
    free = relax(field.bind(x), config=TIGHT)
    return field, x, y, free, implicit_gradient(field, x, y, free.states)


def test_two_points_is_centered(sigmoid_case):
    field, x, y, free, _ = sigmoid_case
    h2 = HolomorphicEP(0.1, points=2, relax=TIGHT)(field, x, y, free=free)
    c = CenteredEP(0.1, relax=TIGHT)(field, x, y, free=free)
    assert compare(h2.grads, c.grads)["rel_error"] < 1e-12
    assert h2.betas == (0.1, -0.1)


def test_error_falls_geometrically_with_points(sigmoid_case):
    field, x, y, free, ref = sigmoid_case
    centered = compare(CenteredEP(0.1, relax=TIGHT)(field, x, y, free=free).grads, ref)
    errs = {n: compare(HolomorphicEP(0.1, points=n, relax=TIGHT)(field, x, y, free=free).grads,
                       ref)["rel_error"] for n in (4, 6)}
    # measured: centered 4.4e-4, N=4 1.2e-6, N=6 1.2e-9 (|β| = 0.1)
    assert errs[4] < centered["rel_error"] / 100
    assert errs[6] < errs[4] / 100
    assert errs[6] < 1e-8
    # conjugate symmetry: N = 6 relaxes 4 phases, not 6
    est = HolomorphicEP(0.1, points=6, relax=TIGHT)(field, x, y, free=free)
    assert len(est.nudged) == 4 and est.nudged[1].states[0].is_complex()


def test_beats_centered_at_large_beta(sigmoid_case):
    field, x, y, free, ref = sigmoid_case
    c = compare(CenteredEP(0.5, relax=TIGHT)(field, x, y, free=free).grads, ref)["rel_error"]
    h = compare(HolomorphicEP(0.5, points=6, relax=TIGHT)(field, x, y, free=free).grads,
                ref)["rel_error"]
    assert h < c / 100


def test_complex_relaxation_with_torchdiffeq():
    """The complex phases relaxed by dopri5 give the same estimate as the fixed-point map."""
    field, x, y = problem(activation="tanh", sizes=(5, 7, 3))
    ode = HolomorphicEP(0.05, points=4, relax=RelaxConfig(method="dopri5", tol=1e-11))(
        field, x, y)
    loop = HolomorphicEP(0.05, points=4, relax=TIGHT)(field, x, y)
    assert compare(ode.grads, loop.grads)["rel_error"] < 1e-7


def test_rejects_clipped_activations_and_bad_points():
    field, x, y = problem(activation="hard_sigmoid")
    with pytest.raises(ValueError, match="holomorphic activations"):
        HolomorphicEP(0.1)(field, x, y)
    with pytest.raises(ValueError, match="points"):
        HolomorphicEP(0.1, points=1)


def test_verify_cli_holomorphic(capsys):
    assert main(["verify", "--json", "--activation", "sigmoid", "--estimators",
                 "centered,holomorphic", "--points", "6", "--betas", "1e-1"]) == 0
    rows = {r["estimator"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["holomorphic"]["rel_error"] < rows["centered"]["rel_error"] / 100
