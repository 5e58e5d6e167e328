"""Walks a suite table in stock or strict mode.

Stock mode is the Rust kit: one engine for every check, checks in table
order, the first failure raised. Strict mode runs every row of the stock and
strict tables on its own fresh engine under a deadline and collects every
outcome into a :class:`~conformance.failures.ConformanceReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import failures as F
from .checks import (
    ENCODE_STOCK_CHECKS,
    ENCODE_SUITE,
    RAW_STOCK_CHECKS,
    RAW_SUITE,
    TOKEN_STOCK_CHECKS,
    TOKEN_SUITE,
    Check,
    Options,
    Session,
    Setup,
    Suite,
)
from .failures import (
    CheckResult,
    CheckStatus,
    ConformanceFailure,
    ConformanceFailures,
    ConformanceReport,
)
from .helpers import DEFAULT_CANCEL_DEADLINE, maybe_await
from .strict import ENCODE_STRICT_CHECKS, RAW_STRICT_CHECKS, TOKEN_STRICT_CHECKS

__all__ = [
    "DEFAULT_PROMPT_DEADLINE",
    "DEFAULT_STRICT_DEADLINE",
    "EngineFactory",
    "run_conformance",
    "run_encode_conformance",
    "run_raw_conformance",
    "suite_checks",
]

#: Per-check deadline in strict mode unless ``deadline=`` says otherwise.
DEFAULT_STRICT_DEADLINE = 30.0
#: How long abort() and aclose() may take in strict mode.
DEFAULT_PROMPT_DEADLINE = 1.0

#: A zero-argument callable returning a fresh, unstarted engine (or an awaitable of one).
EngineFactory = Callable[[], Any]

T = TypeVar("T")

_SUITES: dict[str, tuple[Suite, tuple[Check, ...], tuple[Check, ...]]] = {
    "token": (TOKEN_SUITE, TOKEN_STOCK_CHECKS, TOKEN_STRICT_CHECKS),
    "encode": (ENCODE_SUITE, ENCODE_STOCK_CHECKS, ENCODE_STRICT_CHECKS),
    "raw": (RAW_SUITE, RAW_STOCK_CHECKS, RAW_STRICT_CHECKS),
}


def suite_checks(suite: str, *, strict: bool = False) -> tuple[Check, ...]:
    """The rows ``suite`` ("token", "encode" or "raw") runs, in order."""
    _, stock, extra = _SUITES[suite]
    return stock + extra if strict else stock


async def _bounded(aw: Awaitable[T], deadline: float | None, step: str) -> T:
    if deadline is None:
        return await aw
    scope = asyncio.timeout(deadline)
    try:
        async with scope:
            return await aw
    except TimeoutError:
        if scope.expired():
            raise F.step_timed_out(step, deadline) from None
        raise


async def _quiet_cleanup(s: Session) -> None:
    """Best-effort cleanup of a check's engine; outcomes are reported elsewhere.

    The Rust kit just drops the engine; Python has no destructor to release
    threads or subprocesses, so the kit cleans up what it started.
    """
    if s.engine is None or s.cleaned:
        return
    s.cleaned = True
    with contextlib.suppress(Exception):
        await _bounded(maybe_await(s.engine.cleanup()), s.options.deadline, "cleanup")


async def _run_stock(
    factory: EngineFactory, suite: Suite, checks: tuple[Check, ...], options: Options
) -> ConformanceReport:
    report = ConformanceReport(suite.name, strict=False)
    s = Session(factory, suite, options)
    try:
        s.engine = await _bounded(s.new_engine(), options.deadline, "factory")
        for number, check in enumerate(checks, 1):
            began = time.monotonic()
            try:
                note = await _bounded(check.run(s), options.deadline, f"{number} ({check.id})")
            except ConformanceFailure as failure:
                failure.check = check.id
                failure.report = report
                report.results.append(
                    CheckResult(
                        check.id,
                        check.title,
                        CheckStatus.FAILED,
                        time.monotonic() - began,
                        failure,
                    )
                )
                raise
            finally:
                await s.release()
            report.results.append(
                CheckResult(
                    check.id, check.title, CheckStatus.PASSED, time.monotonic() - began, note=note
                )
            )
    except ConformanceFailure:
        await _quiet_cleanup(s)
        raise
    return report


async def _prepare(s: Session, setup: Setup) -> None:
    if setup is Setup.NONE:
        return
    await s.ensure_engine()
    if setup is Setup.ENGINE:
        return
    await s.ensure_started()
    if setup is Setup.STARTED:
        return
    s.require_model()
    await s.run_worker_hooks()


async def _run_one_strict(
    factory: EngineFactory, suite: Suite, check: Check, options: Options
) -> CheckResult:
    s = Session(factory, suite, options)
    try:
        try:
            await _bounded(_prepare(s, check.setup), options.deadline, f"{check.id} (setup)")
        except ConformanceFailure as failure:
            failure.check = check.id
            return CheckResult(check.id, check.title, CheckStatus.SKIPPED, 0.0, failure)
        began = time.monotonic()
        try:
            note = await _bounded(check.run(s), options.deadline, check.id)
        except ConformanceFailure as failure:
            failure.check = check.id
            status = CheckStatus.ADVISORY if failure.advisory else CheckStatus.FAILED
            return CheckResult(check.id, check.title, status, time.monotonic() - began, failure)
        finally:
            await s.release()
        return CheckResult(
            check.id, check.title, CheckStatus.PASSED, time.monotonic() - began, note=note
        )
    finally:
        await _quiet_cleanup(s)


async def _run_strict(
    factory: EngineFactory, suite: Suite, checks: tuple[Check, ...], options: Options
) -> ConformanceReport:
    report = ConformanceReport(suite.name, strict=True)
    for check in checks:
        report.results.append(await _run_one_strict(factory, suite, check, options))
    if not report.ok:
        raise ConformanceFailures(report)
    return report


def _seconds(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return value


async def _run(
    suite_name: str,
    factory: EngineFactory,
    *,
    strict: bool,
    deadline: float | None,
    cancel_deadline: float,
    prompt_deadline: float,
) -> ConformanceReport:
    if not callable(factory):
        raise TypeError("factory must be a zero-argument callable returning a fresh engine")
    suite, stock, extra = _SUITES[suite_name]
    step = _seconds("deadline", deadline)
    if strict and step is None:
        step = DEFAULT_STRICT_DEADLINE
    options = Options(
        strict=strict,
        deadline=step,
        cancel_deadline=_seconds("cancel_deadline", cancel_deadline) or DEFAULT_CANCEL_DEADLINE,
        prompt_deadline=_seconds("prompt_deadline", prompt_deadline) or DEFAULT_PROMPT_DEADLINE,
    )
    if strict:
        return await _run_strict(factory, suite, stock + extra, options)
    return await _run_stock(factory, suite, stock, options)


async def run_conformance(
    factory: EngineFactory,
    *,
    strict: bool = False,
    deadline: float | None = None,
    cancel_deadline: float = DEFAULT_CANCEL_DEADLINE,
    prompt_deadline: float = DEFAULT_PROMPT_DEADLINE,
) -> ConformanceReport:
    """Run the token-engine suite (conformance.md §3) against engines from ``factory``.

    Stock mode (default) raises the first :class:`ConformanceFailure`, in the
    stock order; a step runs unbounded unless ``deadline`` (seconds per step)
    is given, then a hanging step raises ``StepTimedOut``. ``strict=True``
    adds the §10 checks, runs every check on a fresh engine under ``deadline``
    (default 30 s) and raises :class:`ConformanceFailures` listing every
    failure. Either way, success returns the :class:`ConformanceReport`.

    ``cancel_deadline`` is how long a cancelled stream has to end (stock:
    2 s); ``prompt_deadline`` bounds abort() and aclose() in strict mode.
    """
    return await _run(
        "token",
        factory,
        strict=strict,
        deadline=deadline,
        cancel_deadline=cancel_deadline,
        prompt_deadline=prompt_deadline,
    )


async def run_encode_conformance(
    factory: EngineFactory,
    *,
    strict: bool = False,
    deadline: float | None = None,
    cancel_deadline: float = DEFAULT_CANCEL_DEADLINE,
    prompt_deadline: float = DEFAULT_PROMPT_DEADLINE,
) -> ConformanceReport:
    """Run the Encode-role suite (conformance.md §4); options as :func:`run_conformance`."""
    return await _run(
        "encode",
        factory,
        strict=strict,
        deadline=deadline,
        cancel_deadline=cancel_deadline,
        prompt_deadline=prompt_deadline,
    )


async def run_raw_conformance(
    factory: EngineFactory,
    *,
    strict: bool = False,
    deadline: float | None = None,
    cancel_deadline: float = DEFAULT_CANCEL_DEADLINE,
    prompt_deadline: float = DEFAULT_PROMPT_DEADLINE,
) -> ConformanceReport:
    """Run the raw-engine suite (conformance.md §5); options as :func:`run_conformance`."""
    return await _run(
        "raw",
        factory,
        strict=strict,
        deadline=deadline,
        cancel_deadline=cancel_deadline,
        prompt_deadline=prompt_deadline,
    )
