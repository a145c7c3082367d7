"""The hypothesis profile tests run under: on CI (CI set) derandomized with no deadline and no
example database (hypothesis's built-in "ci" profile), locally the default profile."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

try:  # the variables hypothesis reads to detect CI by itself (private; absent in old versions)
    from hypothesis._settings import _CI_VARS
except ImportError:
    _CI_VARS = {"CI": None}

TESTS = pathlib.Path(__file__).parent

# What a test module sees: conftest is imported first, then the module builds its @settings.
PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import conftest
from hypothesis import settings
s = settings(max_examples=5)
print(s.derandomize, s.deadline, s.database is None)
"""


def _settings_seen(ci: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _CI_VARS}
    env["OMP_NUM_THREADS"] = "1"
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run([sys.executable, "-c", PROBE, str(TESTS)], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("ci", ["true", "1"])
def test_ci_runs_derandomized_without_deadline_or_database(ci):
    assert _settings_seen(ci) == "True None True"


def test_locally_hypothesis_explores():
    assert _settings_seen(None).split()[0] == "False"
