"""The conformance kit, as the repository has always imported it.

The kit lives in :mod:`dynamo_lite.conformance` (that is what the wheel
installs, so it cannot clash with another distribution's top-level
``conformance``). This folder keeps ``from conformance import …`` working
in a checkout: the package and each of its modules are the very same module
objects, so classes compare equal whichever name imported them.
"""

import importlib
import sys

import dynamo_lite.conformance as _kit

for _name in ("checks", "failures", "helpers", "pytest_plugin", "runner", "strict"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"{_kit.__name__}.{_name}")
sys.modules[__name__] = _kit
