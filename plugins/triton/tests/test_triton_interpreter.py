"""The kernels, run by Triton's CPU interpreter on tiny shapes, against float64.

The cases run in one child process (interpreter_cases.py): ``TRITON_INTERPRET=1`` must be
set before a kernel is defined, and must not reach GPU tests in the same run. Bugs of the
interpreter that the kernels work around only there (its bf16/e4m3 dots and casts) are
described in kernels.py, behind the ``INTERPRET`` constexpr.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton not installed (requirements-dev.txt names the versions)")

CASES = Path(__file__).with_name("interpreter_cases.py")


@pytest.fixture(scope="module")
def results():
    run = subprocess.run([sys.executable, str(CASES)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_every_case_ran(results):
    assert len(results) >= 15


def test_the_kernels_match_float64(results):
    failed = {k: v["failed"] for k, v in results.items() if "failed" in v}
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())
    over = {k: v for k, v in results.items() if v["error"] > v["tolerance"]}
    assert not over, over
    # Not vacuous: the cases with tokens computed something close to, but not bitwise, float64.
    assert 0 < results["bf16-silu"]["error"] < 1e-2 and 0 < results["fp8-silu"]["error"] < 6e-2
    # FP8 with the operands swapped (Hopper's short-row-tile rule) ran, and computed the same
    assert {k for k in results if k.endswith("-swapped")} >= {"fp8-silu-swapped", "fp8-contiguous-swapped"}
    assert results["fp8-silu-swapped"]["error"] == pytest.approx(results["fp8-silu"]["error"], rel=1e-3)
