"""The reading guides name real code: every function docs/lifecycle.md and the
README's "Reading the code" point at exists, and every module there is read."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REF = re.compile(r"`([a-z_][\w.]*):([A-Za-z_][\w.]*)`")


def _resolve(module: str, name: str) -> object:
    obj: object = importlib.import_module(f"dynamo_lite.{module}")
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_function_named_in_the_lifecycle_guide_exists() -> None:
    text = (REPO / "docs" / "lifecycle.md").read_text()
    refs = REF.findall(text)
    assert len(refs) > 40, "the guide names the functions that perform each step"
    missing = []
    for module, name in refs:
        try:
            _resolve(module, name)
        except (ImportError, AttributeError):
            missing.append(f"{module}:{name}")
    assert not missing, missing


def test_the_guide_has_the_four_sequences() -> None:
    text = (REPO / "docs" / "lifecycle.md").read_text()
    assert text.count("```mermaid") == 4
    for title in ("## Startup", "## One request", "## A cancellation", "## A shutdown"):
        assert title in text


def test_reading_the_code_lists_existing_modules_in_order() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Reading the code", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"`(dynamo_lite/[\w/]+\.py)`", section)
    assert len(paths) >= 10
    for path in paths:
        assert (REPO / path).is_file(), path


def test_every_file_path_the_docs_name_exists() -> None:
    """Docs and docstrings point readers at tests, modules and vectors by path."""
    sources = [*REPO.glob("*.md"), *(REPO / "docs").glob("*.md"), *(REPO / "bench").glob("*.md")]
    sources += [*(REPO / "dynamo_lite").rglob("*.py"), REPO / "compose.yaml"]
    path = re.compile(
        r"(?<![\w/])((?:tests|dynamo_lite|docs|bench|examples|scripts)/[\w./-]+\.(?:py|md|json))"
    )
    missing = set()
    for source in sources:
        for found in path.findall(source.read_text()):
            if "*" not in found and not (REPO / found).exists():
                missing.add(f"{source.relative_to(REPO)}: {found}")
    assert not missing, sorted(missing)
