"""What the wheel installs: one top-level package, the conformance kit inside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_only_dynamo_lite(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"dynamo_lite"}
    assert "dynamo_lite/conformance/__init__.py" in names
    assert "dynamo_lite/conformance/runner.py" in names


def test_the_repository_name_is_the_same_kit() -> None:
    import conformance.failures

    import conformance
    import dynamo_lite.conformance
    import dynamo_lite.conformance.failures

    assert conformance is dynamo_lite.conformance
    assert conformance.failures is dynamo_lite.conformance.failures
    assert conformance.conformance_test is dynamo_lite.conformance.conformance_test
