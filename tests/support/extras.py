"""Optional extras in tests: skip locally, fail under CI.

A test that needs an optional package (the ``dev`` extra's opentelemetry SDK,
``blake3``, ``nkeys`` …) calls :func:`require_module` inside the test or its
fixture, never at module level: a module-level skip would also silence every
other test in the file. Under CI (``CI`` set) or with
``DYN_LITE_REQUIRE_INTEROP=1`` a missing extra fails the test, as a missing
stock install does (:func:`tests.support.stock.interop_required`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from tests.support.stock import interop_required


def require_module(name: str, hint: str = "pip install -e '.[dev]'") -> ModuleType:
    """Import ``name``; skip the test (fail under CI) when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        message = f"{name} is not installed ({hint}): {exc}"
        if interop_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
