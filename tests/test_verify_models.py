"""`ctep verify --model`: every architecture and variant through the same report."""

from __future__ import annotations

import json

import pytest

from ctep.cli import main as ctep_main
from ctep.verify import MODELS, VerifyConfig, report_dataset, run_verification


@pytest.mark.parametrize("model", MODELS)
def test_centered_ep_matches_implicit_on_every_model(model):
    cfg = VerifyConfig(model=model, betas=(1e-2, 1e-3), estimators=("one-sided", "centered"),
                       batch=4)
    report = run_verification(cfg)
    err = {(r["estimator"], r["beta"]): r["rel_error"] for r in report["results"]}
    # centered: O(β²); one-sided: O(β) (a 10x smaller β divides the error by ~100 and ~10)
    assert err[("centered", 1e-3)] < 2e-5
    assert 50 < err[("centered", 1e-2)] / err[("centered", 1e-3)] < 200
    assert 5 < err[("one-sided", 1e-2)] / err[("one-sided", 1e-3)] < 20
    ds = report_dataset(report)  # the same xarray report for every model
    assert set(ds.estimator.values) == {"one-sided", "centered"}


def test_cli_model_option_and_clear_errors(capsys):
    assert ctep_main(["verify", "--model", "dendritic", "--betas", "1e-3", "--estimators",
                      "centered", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"][0]["rel_error"] < 2e-5
    assert ctep_main(["verify", "--model", "oscillator-chain", "--references", "bptt"]) == 2
    assert "implicit reference only" in capsys.readouterr().err
    assert ctep_main(["verify", "--model", "fitzhugh-nagumo", "--estimators", "holomorphic"]) == 2
    assert "one-sided and centered" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ctep_main(["verify", "--model", "transformer"])
