"""The stock package's own unit tests, run on dynamo_lite through the compat layer.

``dynamo/common/backend/tests/test_*.py`` (all but the Rust-bindings file) are
copied out of the stock install at test time, never into the repository, and
run with ``python -m dynamo_lite.compat -m pytest``. On the stock packages
they give 147 passed and 3 skipped (vLLM and SGLang are not installed); here
they must give the same, apart from the exceptions listed below with their
reasons (docs/parity.md lists them too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.stock import REPO_ROOT, interop_required, stock_venv_dir

#: Stock tests that may fail here, each with its reason. Empty: all of them pass.
EXCEPTIONS: dict[str, str] = {}

#: What the stock packages themselves give (verified in the stock venv).
STOCK_PASSED = 147
STOCK_SKIPPED = {
    "test_logprobs.py::test_vllm_handler_matches_shared",
    "test_logprobs.py::test_sglang_extract_handler_matches_shared",
    "test_logprobs.py::test_sglang_kwargs_handler_matches_shared",
}
EXCLUDED_FILES = ("test_backend_bindings.py",)  # exercises the compiled Rust bindings


def _stock_tests_dir() -> Path:
    venv = stock_venv_dir()
    found = sorted(venv.glob("lib/python3*/site-packages/dynamo/common/backend/tests"))
    if not found:
        msg = (
            f"the stock ai-dynamo package is not installed in {venv} "
            "(bash scripts/install_stock.sh, or point DYN_LITE_STOCK_VENV at an install)"
        )
        if interop_required():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return found[-1]


def _results(junit: Path) -> dict[str, str]:
    """``file::test`` → passed / skipped / failed, from pytest's JUnit XML."""
    out: dict[str, str] = {}
    for case in ET.parse(junit).iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        key = f"{module}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            out[key] = "failed"
        elif "skipped" in kinds:
            out[key] = "skipped"
        else:
            out[key] = "passed"
    return out


def test_stock_backend_tests_pass_on_dynamo_lite(tmp_path: Path) -> None:
    source = _stock_tests_dir()
    suite = tmp_path / "stock_tests"
    suite.mkdir()
    copied = [
        shutil.copy(path, suite)
        for path in sorted(source.glob("test_*.py"))
        if path.name not in EXCLUDED_FILES
    ]
    assert len(copied) >= 12, f"expected the stock test files in {source}"
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DYN_HEALTH_CHECK_PAYLOAD", None)
    # A directory an earlier test set and removed would break the stock metrics tests.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [
        sys.executable, "-m", "dynamo_lite.compat", "-m", "pytest",
        "-o", "asyncio_mode=auto", "-p", "no:cacheprovider", "-q", "-rfEs",
        f"--junitxml={junit}", str(suite),
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert junit.exists(), report
    results = _results(junit)
    failed = {k for k, v in results.items() if v == "failed"}
    skipped = {k for k, v in results.items() if v == "skipped"}
    passed = {k for k, v in results.items() if v == "passed"}
    assert failed <= set(EXCEPTIONS), report
    assert skipped == STOCK_SKIPPED, report
    assert len(passed) + len(failed) == STOCK_PASSED, report
    assert len(EXCEPTIONS) <= 7
