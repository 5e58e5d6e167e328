"""Run programs written for ``dynamo.common.backend`` 1.6.1 unchanged, on dynamo_lite.

Theory of operation
-------------------
:func:`install` puts one finder at the front of ``sys.meta_path``. It answers
only for the ``dynamo`` package tree, from a fixed table:

* ``dynamo.common.backend`` *is* the ``dynamo_lite`` package, and each stock
  module under it (``engine``, ``run``, ``worker``, ``disagg`` …) *is* the
  dynamo_lite module of the same name: the loader hands back the module
  object already in ``sys.modules``, so ``patch("dynamo.common.backend.run.X")``
  patches the code that runs and there is never a second copy;
* the stock sample engines come from ``examples/`` (packaged in the wheel);
* what engines take from the Rust packages (``dynamo._core``,
  ``dynamo._core.backend``, ``dynamo.llm``, …) comes from small pure-Python
  stand-ins in this package, whose classes are dynamo_lite's where one exists
  (``dynamo._core.Context`` is :class:`dynamo_lite.Context`).

A name outside the table is not found, as it would not be on a machine
without those extras. Nothing happens unless asked: importing dynamo_lite
never installs the finder; ``python -m dynamo_lite.compat`` or an explicit
:func:`install` does. When a real ``dynamo`` package (the ai-dynamo wheel) is
importable, :func:`install` refuses rather than shadowing it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RealDynamoInstalled", "install", "installed", "real_dynamo_origin", "uninstall"]

_PKG = "dynamo_lite"
_BACKEND = "dynamo.common.backend"
_HERE = __name__

#: Empty namespace packages that only hold the tree together.
_PACKAGES = frozenset({"dynamo", "dynamo.common", "dynamo.common.utils", "dynamo.runtime"})

#: Stock module name → the module that serves it (same object).
_ALIASES: dict[str, str] = {
    _BACKEND: _PKG,
    f"{_BACKEND}.agent_context": f"{_PKG}.agent_context",
    f"{_BACKEND}.disagg": f"{_PKG}.disagg",
    f"{_BACKEND}.dp_rank": f"{_PKG}.dp_rank",
    f"{_BACKEND}.engine": f"{_PKG}.engine",
    f"{_BACKEND}.health_check": f"{_PKG}.health_check",
    f"{_BACKEND}.logprobs": f"{_PKG}.logprobs",
    f"{_BACKEND}.metrics": f"{_PKG}.metrics",
    f"{_BACKEND}.multimodal": f"{_PKG}.multimodal",
    f"{_BACKEND}.publisher": f"{_PKG}.publisher",
    f"{_BACKEND}.run": f"{_PKG}.run",
    f"{_BACKEND}.telemetry": f"{_PKG}.telemetry",
    f"{_BACKEND}.worker": f"{_PKG}.worker",
    f"{_BACKEND}.sample_main": f"{_HERE}.sample_main",
    f"{_BACKEND}.sample_diffusion_main": f"{_HERE}.sample_diffusion_main",
    "dynamo.common.constants": f"{_HERE}.constants",
    "dynamo.common.utils.token_ids": f"{_PKG}.token_ids",
    "dynamo.common.utils.prometheus": f"{_HERE}.prometheus",
    "dynamo.health_check": f"{_PKG}.health_check",
    "dynamo.runtime.logging": f"{_HERE}.runtime_logging",
    "dynamo._core": f"{_HERE}.core",
    "dynamo._core.backend": f"{_HERE}.core_backend",
    "dynamo.llm": f"{_HERE}.llm",
}

#: Served modules that must look like packages (something is imported below them).
_NEEDS_PATH = frozenset({"dynamo._core"})

#: Stock module name → example file (the stock sample engines).
_EXAMPLES: dict[str, str] = {
    f"{_BACKEND}.sample_engine": "sample_engine.py",
    f"{_BACKEND}.sample_diffusion_engine": "sample_diffusion_engine.py",
}


class RealDynamoInstalled(RuntimeError):
    """A real ai-dynamo ``dynamo`` package is importable; the compat layer stays off."""


def example_path(filename: str) -> Path:
    """An example file: packaged in the wheel, or beside the package in a checkout."""
    pkg_dir = Path(__file__).resolve().parent.parent
    for candidate in (pkg_dir / "examples" / filename, pkg_dir.parent / "examples" / filename):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"examples/{filename} is not installed")


class _ServeExisting(importlib.abc.Loader):
    """Hands back an existing module object instead of executing anything."""

    def __init__(self, target: str | None) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if self.target is None:  # a namespace package of the tree
            module = types.ModuleType(spec.name, "dynamo_lite compat namespace")
            module.__path__ = []
            return module
        module = importlib.import_module(self.target)
        if spec.name in _NEEDS_PATH and not hasattr(module, "__path__"):
            module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        del module  # already executed (or empty)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        del path, target
        if fullname != "dynamo" and not fullname.startswith("dynamo."):
            return None
        if fullname in _PACKAGES:
            return importlib.machinery.ModuleSpec(fullname, _ServeExisting(None), is_package=True)
        if fullname in _EXAMPLES:
            try:
                where = example_path(_EXAMPLES[fullname])
            except FileNotFoundError:
                return None
            return importlib.util.spec_from_file_location(fullname, where)
        served = _ALIASES.get(fullname)
        if served is None and fullname.startswith(_BACKEND + "."):
            # Any other dynamo_lite module reached through the alias keeps its
            # identity too, rather than being loaded a second time from
            # dynamo_lite's directory under the stock name.
            candidate = _PKG + fullname[len(_BACKEND) :]
            if importlib.util.find_spec(candidate) is not None:
                served = candidate
        if served is None:
            return None
        return importlib.machinery.ModuleSpec(
            fullname, _ServeExisting(served), is_package=fullname in _NEEDS_PATH or None
        )


_finder: _Finder | None = None


def main_target(module: str) -> tuple[str, str]:
    """What ``-m module`` runs: ``("module", name)`` or ``("path", file)``.

    A served module has no code of its own to run as ``__main__``; its
    source is the dynamo_lite module (or example file) behind it.
    """
    if module in _EXAMPLES:
        return "path", str(example_path(_EXAMPLES[module]))
    if module in _ALIASES:
        return "module", _ALIASES[module]
    if module.startswith(_BACKEND + "."):
        candidate = _PKG + module[len(_BACKEND) :]
        if importlib.util.find_spec(candidate) is not None:
            return "module", candidate
    return "module", module


def real_dynamo_origin() -> str | None:
    """Where a real ``dynamo`` package would be imported from, or None."""
    if _finder is not None:
        return None
    existing = sys.modules.get("dynamo")
    if existing is not None:
        return str(getattr(existing, "__file__", None) or getattr(existing, "__path__", "?"))
    spec = importlib.util.find_spec("dynamo")
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    return spec.origin or (locations[0] if locations else "?")


def install() -> None:
    """Serve ``dynamo.*`` imports from dynamo_lite in this process. Idempotent.

    Raises :class:`RealDynamoInstalled` when a real ai-dynamo is importable.
    """
    global _finder
    if _finder is not None:
        return
    origin = real_dynamo_origin()
    if origin is not None:
        raise RealDynamoInstalled(
            f"a real 'dynamo' package is importable from {origin}; the dynamo_lite compat "
            "layer would shadow it. Run the program with that installation directly, or "
            "in an environment without ai-dynamo."
        )
    _finder = _Finder()
    sys.meta_path.insert(0, _finder)


def installed() -> bool:
    return _finder is not None


def uninstall() -> None:
    """Remove the finder and forget the ``dynamo.*`` names it served."""
    global _finder
    if _finder is None:
        return
    sys.meta_path.remove(_finder)
    _finder = None
    for name in [n for n in sys.modules if n == "dynamo" or n.startswith("dynamo.")]:
        del sys.modules[name]
