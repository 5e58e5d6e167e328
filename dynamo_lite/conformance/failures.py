"""Failure values, their Display texts, and the strict-mode report.

Every failure the kit can report is built by one constructor below, so the
wording lives in one place. Stock failures (the ``ConformanceFailure`` enum of
``dynamo_backend_common::testing``) keep the Rust ``Display`` text word for
word; strict-only failures follow the same style.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ADVISORY_NAMES",
    "PYTHON_ONLY_NAMES",
    "STOCK_NAMES",
    "STRICT_NAMES",
    "CheckResult",
    "CheckStatus",
    "ConformanceFailure",
    "ConformanceFailures",
    "ConformanceReport",
    "format_duration",
]


class ConformanceFailure(Exception):
    """One failed conformance check.

    ``name`` is the failure's variant name (``"CancellationIgnored"``);
    ``message`` is its Display text; ``fields`` holds the variant's payload
    (``after``, ``chunked``/``reported``, …). ``check`` is the id of the
    check that raised it, filled in by the runner. ``str()`` is
    ``"<name>: <message>"`` so a bare traceback names the variant.
    """

    def __init__(self, name: str, message: str, *, advisory: bool = False, **fields: Any) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.advisory = advisory
        self.fields: dict[str, Any] = fields
        self.check: str | None = None
        self.report: ConformanceReport | None = None

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments defeat Exception's default pickling, which
        # pytest-xdist and multiprocessing rely on.
        return (_rebuild, (self.name, self.message, self.advisory, self.fields, self.check))


def _rebuild(
    name: str, message: str, advisory: bool, fields: dict[str, Any], check: str | None
) -> ConformanceFailure:
    failure = ConformanceFailure(name, message, advisory=advisory, **fields)
    failure.check = check
    return failure


def format_duration(seconds: float) -> str:
    """A duration the way Rust's ``Debug`` for ``Duration`` prints it (``2s``, ``500ms``)."""
    if not math.isfinite(seconds):
        return f"{seconds}s"
    if seconds <= 0:
        return "0ns"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            value = round(seconds / scale, 6)
            return f"{value:.6f}".rstrip("0").rstrip(".") + unit
    return f"{round(seconds * 1e9)}ns"


def _f(name: str, message: str, **fields: Any) -> ConformanceFailure:
    return ConformanceFailure(name, message, **fields)


# --- stock failures (Display text as in the Rust kit) --------------------------------------


def start_failed(msg: str) -> ConformanceFailure:
    return _f("StartFailed", f"start() failed: {msg}", msg=msg)


def empty_model_in_config() -> ConformanceFailure:
    return _f("EmptyModelInConfig", "EngineConfig.model is empty")


def raw_engine_advertised_llm_registration() -> ConformanceFailure:
    return _f(
        "RawEngineAdvertisedLlmRegistration",
        "RawEngine populated EngineConfig.llm; raw media engines have no token pipeline "
        "and must leave it None",
    )


def generate_failed(msg: str) -> ConformanceFailure:
    return _f("GenerateFailed", f"generate() failed: {msg}", msg=msg)


def no_chunks_yielded() -> ConformanceFailure:
    return _f("NoChunksYielded", "generate() stream yielded no chunks")


def chunk_after_terminal() -> ConformanceFailure:
    return _f("ChunkAfterTerminal", "chunk yielded after terminal chunk")


def no_terminal_chunk() -> ConformanceFailure:
    return _f("NoTerminalChunk", "stream ended without a terminal chunk")


def stream_yielded_error(msg: str) -> ConformanceFailure:
    return _f("StreamYieldedError", f"engine stream yielded Err: {msg}", msg=msg)


def concurrent_generate_failed(msg: str) -> ConformanceFailure:
    return _f("ConcurrentGenerateFailed", f"concurrent generate() calls failed: {msg}", msg=msg)


def cancellation_not_observed(after: float) -> ConformanceFailure:
    return _f(
        "CancellationNotObserved",
        f"stream did not terminate within {format_duration(after)} after cancellation",
        after=after,
    )


def cancellation_ignored() -> ConformanceFailure:
    return _f(
        "CancellationIgnored",
        "stream terminated but terminal chunk's finish_reason was not Cancelled "
        "(engine must emit FinishReason::Cancelled when it observes cancellation)",
    )


def cleanup_failed(msg: str) -> ConformanceFailure:
    return _f("CleanupFailed", f"cleanup() failed: {msg}", msg=msg)


def second_cleanup_failed(msg: str) -> ConformanceFailure:
    return _f(
        "SecondCleanupFailed", f"second cleanup() call failed (must be idempotent): {msg}", msg=msg
    )


def cleanup_without_start_failed(msg: str) -> ConformanceFailure:
    return _f(
        "CleanupWithoutStartFailed",
        f"cleanup() failed on a never-started engine: {msg} (Worker calls cleanup() after "
        "start() raises, so engines must be null-safe against partial / no allocation)",
        msg=msg,
    )


def kv_event_sources_failed(msg: str) -> ConformanceFailure:
    return _f("KvEventSourcesFailed", f"kv_event_sources() failed: {msg}", msg=msg)


def kv_event_sources_not_idempotent() -> ConformanceFailure:
    return _f(
        "KvEventSourcesNotIdempotent",
        "kv_event_sources() returned different dp_rank set on a second call "
        "(the descriptor list must be stable for the engine's lifetime)",
    )


def setup_metrics_failed(msg: str) -> ConformanceFailure:
    return _f("SetupMetricsFailed", f"setup_metrics() failed: {msg}", msg=msg)


def component_metrics_not_idempotent() -> ConformanceFailure:
    return _f(
        "ComponentMetricsNotIdempotent",
        "setup_metrics().dp_ranks returned different ranks across calls "
        "(the rank set must be stable for the engine's lifetime)",
    )


def completion_tokens_mismatch(chunked: int, reported: object) -> ConformanceFailure:
    return _f(
        "CompletionTokensMismatch",
        f"engine emitted {chunked} tokens across the stream but reported "
        f"completion_usage.completion_tokens = {reported} on the terminal "
        "(engine bookkeeping diverges from streamed output)",
        chunked=chunked,
        reported=reported,
    )


def encode_chunk_count(count: int) -> ConformanceFailure:
    return _f(
        "EncodeChunkCount",
        f"encode generate() must yield exactly one terminal chunk; got {count}",
        count=count,
    )


def encode_terminal_expected() -> ConformanceFailure:
    return _f(
        "EncodeTerminalExpected",
        "encode generate() must yield a terminal chunk with finish_reason = FinishReason::Stop",
    )


def encode_tokens_not_empty(count: int) -> ConformanceFailure:
    return _f(
        "EncodeTokensNotEmpty",
        f"encode terminal chunk must have empty token_ids; got {count} tokens",
        count=count,
    )


def encode_usage_mismatch(
    expected_prompt: int, prompt: object, completion: object, total: object
) -> ConformanceFailure:
    return _f(
        "EncodeUsageMismatch",
        f"encode terminal usage must report prompt={expected_prompt}, completion=0, "
        f"total={expected_prompt}; got prompt={prompt}, completion={completion}, total={total}",
        expected_prompt=expected_prompt,
        prompt=prompt,
        completion=completion,
        total=total,
    )


def encoder_result_expected_object() -> ConformanceFailure:
    return _f(
        "EncoderResultExpectedObject",
        "encode terminal chunk must carry an object-shaped encoder_result",
    )


# --- Python-side additions -----------------------------------------------------------------


def factory_failed(msg: str) -> ConformanceFailure:
    # The Rust factory cannot fail (a panic aborts the test); a Python factory
    # can raise, and naming that beats a bare traceback from inside the kit.
    return _f("FactoryFailed", f"factory() failed: {msg}", msg=msg)


def step_timed_out(step: str, after: float) -> ConformanceFailure:
    return _f(
        "StepTimedOut",
        f"step {step} did not finish within {format_duration(after)} "
        "(a hanging engine must fail the suite, not hang it)",
        step=step,
        after=after,
    )


# --- strict-mode failures (conformance.md §10) ---------------------------------------------


def mid_stream_cancellation_ignored(how: str, detail: str) -> ConformanceFailure:
    return _f(
        "MidStreamCancellationIgnored",
        f"stream cancelled {how} did not end with a Cancelled terminal: {detail} "
        "(engines must poll is_stopped() between yields, not only before the first token)",
        how=how,
        detail=detail,
    )


def cancelled_terminal_malformed(how: str, detail: str) -> ConformanceFailure:
    return _f(
        "CancelledTerminalMalformed",
        f"stream cancelled {how} ended with a malformed Cancelled terminal: {detail}",
        how=how,
        detail=detail,
    )


def concurrent_stream_malformed(index: int, total: int, detail: str) -> ConformanceFailure:
    return _f(
        "ConcurrentStreamMalformed",
        f"concurrent stream {index + 1} of {total} broke the stream contract: {detail}",
        index=index,
        detail=detail,
    )


def invalid_finish_reason(value: object, where: str) -> ConformanceFailure:
    return _f(
        "InvalidFinishReason",
        f"{where} carries finish_reason {value!r}; 1.6.1 accepts only stop, eos, length, "
        "cancelled, abort, content_filter, error and 'error: <msg>' (exact case) and "
        "answers anything else with HTTP 400",
        value=value,
    )


def invalid_chunk_shape(where: str, detail: str) -> ConformanceFailure:
    return _f(
        "InvalidChunkShape",
        f"{where} does not match GenerateChunk: {detail}",
        where=where,
        detail=detail,
    )


def abort_failed(detail: str) -> ConformanceFailure:
    return _f(
        "AbortFailed",
        f"abort() {detail} (abort must return promptly and never raise)",
        detail=detail,
    )


def abort_not_idempotent(detail: str) -> ConformanceFailure:
    return _f(
        "AbortNotIdempotent",
        f"second abort() for the same request {detail} (abort must be idempotent)",
        detail=detail,
    )


def leak_on_drop(detail: str) -> ConformanceFailure:
    return _f(
        "LeakOnDrop",
        f"dropping a stream after one chunk {detail} (the framework closes the generator on "
        "kill and at shutdown; release per-request state in try/finally)",
        detail=detail,
    )


def cleanup_hangs_stream(detail: str) -> ConformanceFailure:
    return _f(
        "CleanupHangsStream",
        f"cleanup() during an in-flight stream: {detail}",
        detail=detail,
    )


def cleanup_after_failed_start_failed(msg: str) -> ConformanceFailure:
    return _f(
        "CleanupAfterFailedStartFailed",
        f"cleanup() failed after start() was interrupted part-way: {msg} (Worker calls "
        "cleanup() after start() raises, so engines must be null-safe against partial "
        "allocation)",
        msg=msg,
    )


def restart_not_rejected() -> ConformanceFailure:
    return ConformanceFailure(
        "RestartNotRejected",
        "a second start() on a started engine returned normally; it should raise clearly "
        "(advisory: the Worker never calls start() twice)",
        advisory=True,
    )


#: The names the Rust kit (G5) can report.
STOCK_NAMES = frozenset(
    {
        "StartFailed",
        "EmptyModelInConfig",
        "RawEngineAdvertisedLlmRegistration",
        "GenerateFailed",
        "NoChunksYielded",
        "ChunkAfterTerminal",
        "NoTerminalChunk",
        "StreamYieldedError",
        "ConcurrentGenerateFailed",
        "CancellationNotObserved",
        "CancellationIgnored",
        "CleanupFailed",
        "SecondCleanupFailed",
        "CleanupWithoutStartFailed",
        "KvEventSourcesFailed",
        "KvEventSourcesNotIdempotent",
        "SetupMetricsFailed",
        "ComponentMetricsNotIdempotent",
        "CompletionTokensMismatch",
        "EncodeChunkCount",
        "EncodeTerminalExpected",
        "EncodeTokensNotEmpty",
        "EncodeUsageMismatch",
        "EncoderResultExpectedObject",
    }
)

#: Names only this port reports, in any mode.
PYTHON_ONLY_NAMES = frozenset({"FactoryFailed", "StepTimedOut"})

#: Names only strict mode reports.
STRICT_NAMES = frozenset(
    {
        "MidStreamCancellationIgnored",
        "CancelledTerminalMalformed",
        "ConcurrentStreamMalformed",
        "InvalidFinishReason",
        "InvalidChunkShape",
        "AbortFailed",
        "AbortNotIdempotent",
        "LeakOnDrop",
        "CleanupHangsStream",
        "CleanupAfterFailedStartFailed",
        "RestartNotRejected",
    }
)

#: Strict results that warn instead of failing.
ADVISORY_NAMES = frozenset({"RestartNotRejected"})


# --- report --------------------------------------------------------------------------------


class CheckStatus(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    ADVISORY = "advisory"
    SKIPPED = "skipped"


_MARK = {
    CheckStatus.PASSED: "PASS",
    CheckStatus.FAILED: "FAIL",
    CheckStatus.ADVISORY: "WARN",
    CheckStatus.SKIPPED: "SKIP",
}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    ``failure`` is set for FAILED and ADVISORY results, and for SKIPPED ones
    (then it is the setup failure that prevented the check from running).
    ``note`` says what a passing check could not verify.
    """

    check: str
    title: str
    status: CheckStatus
    seconds: float
    failure: ConformanceFailure | None = None
    note: str | None = None


@dataclass
class ConformanceReport:
    """Every check the kit ran, in order, with its outcome."""

    suite: str
    strict: bool
    results: list[CheckResult] = field(default_factory=list)

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def _with(self, status: CheckStatus) -> list[CheckResult]:
        return [r for r in self.results if r.status is status]

    @property
    def passed(self) -> list[CheckResult]:
        return self._with(CheckStatus.PASSED)

    @property
    def failed(self) -> list[CheckResult]:
        return self._with(CheckStatus.FAILED)

    @property
    def advisories(self) -> list[CheckResult]:
        return self._with(CheckStatus.ADVISORY)

    @property
    def skipped(self) -> list[CheckResult]:
        return self._with(CheckStatus.SKIPPED)

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing was skipped; advisories are allowed."""
        return not self.failed and not self.skipped

    @property
    def failure_names(self) -> list[str]:
        """Names of the failures (not advisories), in check order."""
        return [r.failure.name for r in self.failed if r.failure is not None]

    def format(self) -> str:
        """A readable multi-line summary, one line per check."""
        mode = "strict" if self.strict else "stock"
        counts = ", ".join(f"{len(self._with(s))} {s.value}" for s in CheckStatus if self._with(s))
        lines = [f"conformance ({self.suite} suite, {mode} mode): {counts or 'no checks run'}"]
        width = max((len(r.check) for r in self.results), default=0)
        for r in self.results:
            detail = r.title
            if r.failure is not None:
                prefix = "setup failed: " if r.status is CheckStatus.SKIPPED else ""
                detail = f"{prefix}{r.failure}"
            elif r.note:
                detail = f"{r.title} [{r.note}]"
            took = _took(r.seconds)
            lines.append(f"  {_MARK[r.status]}  {r.check:<{width}}  {took:>9}  {detail}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _took(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds >= 1 else f"{seconds * 1000:.1f}ms"


class ConformanceFailures(ConformanceFailure):
    """Strict mode: one or more checks failed or could not run; carries the report.

    ``failures`` are the failed checks' failures (``names`` their names);
    checks skipped because their setup failed are listed in the report.
    """

    def __init__(self, report: ConformanceReport) -> None:
        failed = ", ".join(
            f"{r.check}={r.failure.name if r.failure else '?'}" for r in report.failed
        )
        summary = f"{len(report.failed)} of {len(report.results)} conformance checks failed"
        if failed:
            summary += f" ({failed})"
        if report.skipped:
            summary += f"; {len(report.skipped)} could not run because their setup failed"
        super().__init__("ConformanceFailures", f"{summary}\n{report.format()}")
        self.report = report
        self.failures: list[ConformanceFailure] = [
            r.failure for r in report.failed if r.failure is not None
        ]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.failures]

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConformanceFailures, (self.report,))
