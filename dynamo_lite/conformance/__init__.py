"""Conformance kit for dynamo_lite engines: a Python port of ``dynamo_backend_common::testing``.

An engine author proves an engine honours the unified-backend contract with
one call, from any async test::

    report = await run_conformance(lambda: MyEngine(...))

or with one line of pytest (no async plugin needed)::

    test_my_engine = conformance_test(lambda: MyEngine(...), strict=True)

The kit takes a *factory* (a zero-argument callable, sync or async, returning
a fresh unstarted engine) so it can build a second, pristine engine for the
cleanup-without-start check, and, in strict mode, one engine per check.

Stock mode (default)
    The Rust kit of Dynamo 1.6.1 (generation G5), check for check: same
    order, same requests, same worker id 0, same 2 s cancellation deadline;
    the first failure is raised as a :class:`ConformanceFailure` whose
    ``.name`` is the Rust variant (``"CancellationIgnored"``) and whose
    ``.message`` is its Display text. Python specifics:

    * a terminal is a chunk with a truthy ``finish_reason``; ``"abort"``
      counts as ``"cancelled"``;
    * an exception raised while iterating ``generate()`` is an error item
      (``StreamYieldedError``); ``GenerateFailed`` means calling
      ``generate()`` itself raised (or returned no async iterator);
    * ``setup_metrics`` is ``register_prometheus(metrics)`` +
      ``component_metrics_dp_ranks()``, as in the 1.6.1 Python bridge;
    * the reader yields to the event loop after every item, as the
      framework's response writer does, so timers and deadlines can fire
      even for an engine that never awaits;
    * ``deadline=`` (off by default, as in stock) bounds every step and
      reports ``StepTimedOut``; a factory that raises is ``FactoryFailed``.

Strict mode (``strict=True``)
    conformance.md §10 proposals 1-5, 7, 8, 10, 11 and 12: every check —
    stock and strict — runs on its own engine (``factory()`` + ``start(0)``,
    plus the Worker's post-start hooks for generate checks) under a deadline
    (30 s by default), and every outcome lands in a
    :class:`ConformanceReport`. Any failure raises
    :class:`ConformanceFailures` carrying the report. ``RestartNotRejected``
    is advisory: reported, never failing.

Token suite (``run_conformance``); ``*`` marks strict-only rows:

=============================  ==============================================================
check                          failure names
=============================  ==============================================================
start                          StartFailed
model                          EmptyModelInConfig
kv_event_sources               KvEventSourcesFailed, KvEventSourcesNotIdempotent
setup_metrics                  SetupMetricsFailed, ComponentMetricsNotIdempotent
single_generate                GenerateFailed, NoChunksYielded, StreamYieldedError,
                               ChunkAfterTerminal, NoTerminalChunk
completion_usage               CompletionTokensMismatch
concurrent_generate            ConcurrentGenerateFailed
cancellation                   GenerateFailed, CancellationNotObserved, NoChunksYielded,
                               StreamYieldedError, CancellationIgnored
cleanup                        CleanupFailed, SecondCleanupFailed
cleanup_without_start          CleanupWithoutStartFailed
mid_stream_cancellation *      MidStreamCancellationIgnored
cancelled_terminal_shape *     CancelledTerminalMalformed
concurrent_stream_contract *   ConcurrentStreamMalformed
finish_reason_vocabulary *     InvalidFinishReason
chunk_schema *                 InvalidChunkShape
abort_contract *               AbortFailed, AbortNotIdempotent
drop_safety *                  LeakOnDrop
cleanup_during_stream *        CleanupHangsStream
cleanup_after_failed_start *   CleanupAfterFailedStartFailed
restart_rejected *             RestartNotRejected (advisory)
(any step, with a deadline)    StepTimedOut; FactoryFailed
=============================  ==============================================================

The encode suite (``run_encode_conformance``) replaces the generate rows with
``encode_generate`` / ``concurrent_encode`` (EncodeChunkCount,
EncodeTerminalExpected, EncodeTokensNotEmpty, EncoderResultExpectedObject,
EncodeUsageMismatch); the raw suite (``run_raw_conformance``) has no KV or
metrics rows, adds ``llm_unset`` (RawEngineAdvertisedLlmRegistration) and only
requires a cancelled stream to end. :func:`conformance.runner.suite_checks`
returns any suite's rows; each row's docstring says what it checks.

Drop-safety probe: to let strict mode see leaked per-request state, expose an
int attribute ``inflight``, ``active`` or ``request_count``, or a method
``inflight_requests()``; it must return to its earlier value once a dropped
stream's generator is closed. Without one, the check only verifies that
``aclose()`` returns promptly without raising.
"""

from __future__ import annotations

from .checks import Check, Setup
from .failures import (
    CheckResult,
    CheckStatus,
    ConformanceFailure,
    ConformanceFailures,
    ConformanceReport,
)
from .helpers import (
    DEFAULT_CANCEL_DEADLINE,
    SyntheticMetrics,
    cancelling_context,
    mock_context,
)
from .pytest_plugin import ConformanceWarning, conformance_test
from .runner import (
    DEFAULT_PROMPT_DEADLINE,
    DEFAULT_STRICT_DEADLINE,
    run_conformance,
    run_encode_conformance,
    run_raw_conformance,
    suite_checks,
)

__all__ = [
    "DEFAULT_CANCEL_DEADLINE",
    "DEFAULT_PROMPT_DEADLINE",
    "DEFAULT_STRICT_DEADLINE",
    "Check",
    "CheckResult",
    "CheckStatus",
    "ConformanceFailure",
    "ConformanceFailures",
    "ConformanceReport",
    "ConformanceWarning",
    "Setup",
    "SyntheticMetrics",
    "cancelling_context",
    "conformance_test",
    "mock_context",
    "run_conformance",
    "run_encode_conformance",
    "run_raw_conformance",
    "suite_checks",
]
