"""docs/parity.md lists every public name of the stock backend modules, and each resolves here."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stock import REPO_ROOT, interop_required, stock_venv_dir

DOC = REPO_ROOT / "docs" / "parity.md"
ROW = re.compile(r"^\| `([^`]+)` \| (?:`([^`]+)` \| )?(same|different) \|(.*)\|\s*$")


def _rows() -> list[tuple[str, str | None, str, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows.append((m[1], m[2], m[3], m[4].strip()))
    return rows


def _stock_backend() -> Path:
    found = sorted(stock_venv_dir().glob("lib/python3*/site-packages/dynamo/common/backend"))
    if not found:
        msg = f"the stock ai-dynamo package is not installed in {stock_venv_dir()}"
        if interop_required():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return found[-1]


def _public_names(source: str) -> list[str]:
    """``__all__`` when the module has one, else its top-level public definitions."""
    names: list[str] = []
    for node in ast.parse(source).body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if not isinstance(target, ast.Name):
                continue
            if target.id == "__all__" and isinstance(node.value, ast.List | ast.Tuple):
                return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
            names.append(target.id)
    return [n for n in names if not n.startswith("_")]


def test_every_row_has_a_status_and_differences_say_why() -> None:
    rows = _rows()
    assert len(rows) > 100
    for first, second, status, note in rows:
        if status == "different":
            assert note, f"{first} {second}: a difference needs its reason"


def test_every_stock_public_name_is_listed() -> None:
    backend = _stock_backend()
    listed = {(mod, name) for mod, name, _, _ in _rows() if name is not None}
    missing = []
    for path in sorted(backend.glob("*.py")):
        module = "dynamo.common.backend" + ("" if path.stem == "__init__" else f".{path.stem}")
        for name in _public_names(path.read_text()):
            if (module, name) not in listed:
                missing.append(f"{module}.{name}")
    assert not missing, f"not in docs/parity.md: {missing}"


def test_every_stock_engine_hook_is_listed() -> None:
    tree = ast.parse((_stock_backend() / "engine.py").read_text())
    hooks = {
        f"{cls.name}.{fn.name}"
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name in ("BaseEngine", "LLMEngine", "RawEngine")
        for fn in cls.body
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and not fn.name.startswith("_")
    }
    listed = {first for first, second, _, _ in _rows() if second is None}
    assert hooks <= listed, sorted(hooks - listed)


CHECK = """
import importlib, json, sys
import dynamo_lite.compat
dynamo_lite.compat.install()
import dynamo_lite
missing = []
for first, second in json.loads(sys.argv[1]):
    if second is not None:
        target, attr = importlib.import_module(first), second
    else:
        cls, _, attr = first.partition(".")
        target = getattr(dynamo_lite, cls)
    if not hasattr(target, attr):
        missing.append(f"{first} {second}")
print(json.dumps(missing))
"""


def test_every_listed_name_resolves_through_the_compat_layer(tmp_path: Path) -> None:
    names = [[first, second] for first, second, _, _ in _rows() if first.count("/") == 0]
    names = [
        n
        for n in names
        if n[0].startswith(("dynamo", "BaseEngine", "LLMEngine", "RawEngine", "Context"))
    ]
    r = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(names)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
