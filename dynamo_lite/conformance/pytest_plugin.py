"""A one-line pytest test for an engine::

    from dynamo_lite.conformance import conformance_test
    from my_engine import MyEngine
    test_my_engine = conformance_test(lambda: MyEngine(...), strict=True)

The returned test is a plain synchronous function that runs the kit with
``asyncio.run``, so it needs no async pytest plugin. A failure fails the test
with the readable report (no kit traceback); strict-mode advisories become
:class:`ConformanceWarning` warnings in pytest's summary.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Literal, NoReturn

from .failures import ConformanceFailure, ConformanceFailures, ConformanceReport
from .helpers import DEFAULT_CANCEL_DEADLINE
from .runner import (
    DEFAULT_PROMPT_DEADLINE,
    EngineFactory,
    run_conformance,
    run_encode_conformance,
    run_raw_conformance,
)

__all__ = ["ConformanceWarning", "conformance_test"]

SuiteName = Literal["token", "encode", "raw"]

_RUNNERS = {
    "token": run_conformance,
    "encode": run_encode_conformance,
    "raw": run_raw_conformance,
}


class ConformanceWarning(UserWarning):
    """A strict-mode advisory: worth fixing, not a contract violation."""


def _fail(text: str) -> NoReturn:
    try:
        import pytest
    except ImportError:  # used outside pytest: a plain assertion still reads well
        raise AssertionError(text) from None
    pytest.fail(text, pytrace=False)


def _failure_text(failure: ConformanceFailure) -> str:
    if isinstance(failure, ConformanceFailures):
        return failure.message  # summary line plus the whole report
    if failure.report is not None:
        # Stock mode: the failure, then the checks run up to it.
        return f"{failure}\n\n{failure.report.format()}"
    return str(failure)


def conformance_test(
    factory: EngineFactory,
    *,
    suite: SuiteName = "token",
    strict: bool = False,
    deadline: float | None = None,
    cancel_deadline: float = DEFAULT_CANCEL_DEADLINE,
    prompt_deadline: float = DEFAULT_PROMPT_DEADLINE,
    name: str = "test_conformance",
) -> Callable[[], None]:
    """A synchronous pytest test that runs the ``suite`` kit against ``factory``.

    Options are those of :func:`~conformance.run_conformance`; ``name`` is
    the function's ``__name__`` (pytest reports the module attribute name).
    """
    if suite not in _RUNNERS:
        raise ValueError(f"suite must be one of {sorted(_RUNNERS)}, not {suite!r}")
    runner = _RUNNERS[suite]

    def test() -> None:
        try:
            report: ConformanceReport = asyncio.run(
                runner(
                    factory,
                    strict=strict,
                    deadline=deadline,
                    cancel_deadline=cancel_deadline,
                    prompt_deadline=prompt_deadline,
                )
            )
        except ConformanceFailure as failure:
            _fail(_failure_text(failure))
        for result in report.advisories:
            warnings.warn(ConformanceWarning(str(result.failure)), stacklevel=1)

    mode = "strict" if strict else "stock"
    test.__name__ = test.__qualname__ = name
    test.__doc__ = f"The {suite}-engine conformance kit passes ({mode} mode)."
    return test
