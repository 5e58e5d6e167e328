"""Tests of the conformance kit (``conformance/``): every failure name fires for a
minimal broken engine, the repo's sample engine and the seed guide's MyBackend pass,
and the stock mode drives an engine exactly as the Rust kit does."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import pickle
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest
from conformance.failures import (
    ADVISORY_NAMES,
    PYTHON_ONLY_NAMES,
    STOCK_NAMES,
    STRICT_NAMES,
    CheckStatus,
    format_duration,
)
from conformance.helpers import SyntheticMetrics

import conformance
from conformance import (
    DEFAULT_CANCEL_DEADLINE,
    ConformanceFailure,
    ConformanceFailures,
    ConformanceReport,
    ConformanceWarning,
    cancelling_context,
    conformance_test,
    mock_context,
    run_conformance,
    run_encode_conformance,
    run_raw_conformance,
    suite_checks,
)
from conformance import failures as F
from dynamo_lite import Context, EngineConfig, GenerateChunk, GenerateRequest, KvEventSource
from dynamo_lite.engine import RawRequest, RawResponseChunk
from tests import conformance_engines as E

RUNNERS: dict[str, Callable[..., Any]] = {
    "token": run_conformance,
    "encode": run_encode_conformance,
    "raw": run_raw_conformance,
}

STOCK_CASES = [c for c in E.NEGATIVE_CASES if c.mode == "stock"]
STRICT_CASES = [c for c in E.NEGATIVE_CASES if c.mode == "strict"]

SampleEngine = E.load_sample_engine()
MyBackend = E.load_my_backend()


def _ids(case: E.NegativeCase) -> str:
    return f"{case.id}-{getattr(case.factory, '__name__', 'factory')}"


# --- every failure name fires --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("case", STOCK_CASES, ids=_ids)
async def test_stock_failure_fires(case: E.NegativeCase) -> None:
    with pytest.raises(ConformanceFailure) as info:
        await RUNNERS[case.suite](case.factory, **case.options)
    failure = info.value
    assert not isinstance(failure, ConformanceFailures)
    assert failure.name == case.name, str(failure)


@pytest.mark.anyio
@pytest.mark.parametrize("case", STOCK_CASES, ids=_ids)
async def test_stock_failure_fires_in_strict_mode_too(case: E.NegativeCase) -> None:
    with pytest.raises(ConformanceFailures) as info:
        await RUNNERS[case.suite](case.factory, strict=True, **case.options)
    assert case.name in info.value.names, info.value.message


@pytest.mark.anyio
@pytest.mark.parametrize("case", STRICT_CASES, ids=_ids)
async def test_strict_failure_fires_alone(case: E.NegativeCase) -> None:
    # Stock mode has no such check: the engine passes it.
    await RUNNERS[case.suite](case.factory, **case.options)
    with pytest.raises(ConformanceFailures) as info:
        await RUNNERS[case.suite](case.factory, strict=True, **case.options)
    assert info.value.names == [case.name], info.value.message
    assert info.value.report is not None and not info.value.report.skipped


def test_every_failure_name_has_a_negative_engine() -> None:
    fired = {case.name for case in E.NEGATIVE_CASES}
    assert fired == (STOCK_NAMES | STRICT_NAMES | PYTHON_ONLY_NAMES) - ADVISORY_NAMES
    assert {c.name for c in STRICT_CASES} - {"StepTimedOut"} <= STRICT_NAMES


def test_tables_name_only_known_failures_in_stock_order() -> None:
    known = STOCK_NAMES | STRICT_NAMES | PYTHON_ONLY_NAMES
    declared = set()
    for suite in RUNNERS:
        for check in suite_checks(suite, strict=True):
            assert set(check.failures) <= known, check.id
            assert check.title and check.run.__doc__, check.id
            declared |= set(check.failures)
    assert declared == known - PYTHON_ONLY_NAMES
    assert [c.id for c in suite_checks("token")] == [
        "start",
        "model",
        "kv_event_sources",
        "setup_metrics",
        "single_generate",
        "completion_usage",
        "concurrent_generate",
        "cancellation",
        "cleanup",
        "cleanup_without_start",
    ]
    assert [c.id for c in suite_checks("raw")][:3] == ["start", "model", "llm_unset"]
    assert not any(c.strict_only for c in suite_checks("encode"))


# --- conformant engines pass ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("delay", [0.0, 0.01])
async def test_sample_engine_passes_stock(delay: float) -> None:
    report = await run_conformance(lambda: SampleEngine("m", 16, delay))
    assert report.ok and len(report.passed) == len(suite_checks("token"))


@pytest.mark.anyio
@pytest.mark.parametrize("delay", [0.0, 0.01])
async def test_sample_engine_passes_strict(delay: float) -> None:
    report = await run_conformance(lambda: SampleEngine("m", 16, delay), strict=True)
    assert report.ok, report.format()
    # The sample engine refuses a second start(), so not even an advisory.
    assert [r.failure.name for r in report.advisories if r.failure] == []
    drop = next(r for r in report.results if r.check == "drop_safety")
    assert drop.note is None  # its `active` counter served as the leak probe


@pytest.mark.anyio
@pytest.mark.parametrize("strict", [False, True])
async def test_seed_guide_my_backend_passes(strict: bool) -> None:
    report = await run_conformance(lambda: MyBackend("my-model"), strict=strict)
    assert report.ok, report.format()
    if strict:
        drop = next(r for r in report.results if r.check == "drop_safety")
        assert drop.note is not None and "no in-flight probe" in drop.note


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("suite", "factory"),
    [
        ("token", E.GoodEngine),
        ("token", E.AbortAlias),
        ("token", E.CoroutineGenerate),
        ("token", lambda: E.GoodEngine(0.002)),
        ("encode", E.GoodEncodeEngine),
        ("raw", E.GoodRawEngine),
    ],
    ids=["good", "abort-alias", "coroutine-generate", "slow", "encode", "raw"],
)
async def test_good_engines_pass_both_modes(suite: str, factory: Callable[[], Any]) -> None:
    assert (await RUNNERS[suite](factory)).ok
    report = await RUNNERS[suite](factory, strict=True)
    assert report.ok, report.format()
    assert [r.check for r in report.advisories] == ["restart_rejected"]


@pytest.mark.anyio
async def test_engine_rejecting_restart_has_no_advisory() -> None:
    report = await run_conformance(E.RejectsRestart, strict=True)
    assert report.ok and not report.advisories
    restart = next(r for r in report.results if r.check == "restart_rejected")
    assert restart.status is CheckStatus.PASSED and "RuntimeError" in (restart.note or "")


@pytest.mark.anyio
async def test_async_factory_is_accepted() -> None:
    async def factory() -> E.GoodEngine:
        await asyncio.sleep(0)
        return E.GoodEngine()

    assert (await run_conformance(factory)).ok
    assert (await run_conformance(factory, strict=True)).ok


# --- stock semantics -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_never_terminating_cancel_ignorer_is_reported_by_step_5() -> None:
    # conformance.md §9.1: checks are ordered, so this mock never reaches step 8.
    with pytest.raises(ConformanceFailure) as info:
        await run_conformance(E.IgnoresCancelNeverTerminates, cancel_deadline=0.3)
    assert info.value.name == "NoTerminalChunk"
    assert info.value.check == "single_generate"


@pytest.mark.anyio
async def test_stock_mode_stops_at_the_first_failure_and_keeps_the_report() -> None:
    class TwiceBroken(E.EmptyStream, E.CleanupRaises):
        pass

    with pytest.raises(ConformanceFailure) as info:
        await run_conformance(TwiceBroken)
    failure = info.value
    assert failure.name == "NoChunksYielded"
    assert failure.report is not None
    assert [r.status for r in failure.report.results] == [CheckStatus.PASSED] * 4 + [
        CheckStatus.FAILED
    ]


@pytest.mark.anyio
async def test_stock_cancellation_deadline_is_two_seconds() -> None:
    assert DEFAULT_CANCEL_DEADLINE == 2.0
    for runner in RUNNERS.values():
        params = inspect.signature(runner).parameters
        assert params["cancel_deadline"].default == 2.0
        assert params["deadline"].default is None  # stock steps are unbounded
    began = time.monotonic()
    with pytest.raises(ConformanceFailure) as info:
        await run_conformance(E.IgnoresCancel)
    assert time.monotonic() - began >= 2.0
    assert info.value.message == "stream did not terminate within 2s after cancellation"
    assert info.value.fields == {"after": 2.0}


@pytest.mark.anyio
async def test_step_deadline_in_stock_mode_names_the_step() -> None:
    with pytest.raises(ConformanceFailure) as info:
        await run_conformance(E.HangsBeforeFirstToken, deadline=0.2)
    assert info.value.name == "StepTimedOut"
    assert info.value.message.startswith("step 5 (single_generate) did not finish within 200ms")


class Recorder(E.GoodEngine):
    """Logs every call the kit makes."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Any]] = []

    async def start(self, worker_id: int) -> EngineConfig:
        self.log.append(("start", worker_id))
        return await super().start(worker_id)

    async def register_prometheus(self, metrics: Any) -> None:
        self.log.append(("register_prometheus", metrics))

    def component_metrics_dp_ranks(self) -> list[int]:
        self.log.append(("component_metrics_dp_ranks", None))
        return [0]

    def attach_snapshot_publisher(self, publisher: Any) -> None:
        self.log.append(("attach_snapshot_publisher", publisher))

    async def kv_event_sources(self) -> list[KvEventSource]:
        self.log.append(("kv_event_sources", None))
        return []

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        self.log.append(("generate", (dict(request), context.id(), context.is_stopped())))
        async for chunk in super().generate(request, context):
            yield chunk

    async def abort(self, context: Context) -> None:
        self.log.append(("abort", context.id()))

    async def cleanup(self) -> None:
        self.log.append(("cleanup", None))
        await super().cleanup()


def _recording_factory() -> tuple[list[Recorder], Callable[[], Recorder]]:
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    return made, factory


@pytest.mark.anyio
async def test_stock_mode_drives_the_engine_like_the_rust_kit() -> None:
    made, factory = _recording_factory()
    await run_conformance(factory)
    assert len(made) == 2  # E1, then the pristine E2 for cleanup-without-start
    e1, e2 = made
    names = [name for name, _ in e1.log]
    assert names == [
        "start",
        "kv_event_sources",
        "kv_event_sources",
        "register_prometheus",
        "component_metrics_dp_ranks",
        "register_prometheus",
        "component_metrics_dp_ranks",
        *["generate"] * (1 + 8 + 1),
        "cleanup",
        "cleanup",
    ]
    assert e1.log[0] == ("start", 0)
    metrics = [arg for name, arg in e1.log if name == "register_prometheus"]
    assert metrics[0] is metrics[1] and isinstance(metrics[0], SyntheticMetrics)
    assert (metrics[0].model, metrics[0].component, metrics[0].model_load_time_seconds) == (
        "test-model",
        "test",
        0.0,
    )
    calls = [arg for name, arg in e1.log if name == "generate"]
    smoke = {
        "model": "good-model",
        "token_ids": [1, 2, 3],
        "stop_conditions": {"max_tokens": 8},
        "sampling_options": {},
        "output_options": {},
    }
    assert all(request == smoke and not stopped for request, _, stopped in calls[:9])
    long_request, _, stopped_before_first_poll = calls[9]
    assert long_request == {**smoke, "stop_conditions": {"max_tokens": 10_000}}
    assert stopped_before_first_poll
    assert len({ctx_id for _, ctx_id, _ in calls}) == 10  # a fresh Context per call
    assert e2.log == [("cleanup", None)]


@pytest.mark.anyio
async def test_strict_mode_uses_a_fresh_engine_per_check() -> None:
    made, factory = _recording_factory()
    report = await run_conformance(factory, strict=True)
    assert len(made) == len(report.results) == len(suite_checks("token", strict=True))
    for engine in made:
        names = [name for name, _ in engine.log]
        assert "attach_snapshot_publisher" not in names
        if "start" in names:
            # The kit cleans up every engine it started.
            assert names[-1] == "cleanup"
    abort_engine = made[[r.check for r in report.results].index("abort_contract")]
    aborts = [arg for name, arg in abort_engine.log if name == "abort"]
    assert len(aborts) == 3 and aborts[0] == aborts[1] != aborts[2]


@pytest.mark.anyio
async def test_encode_and_raw_requests_match_the_stock_kit() -> None:
    seen: list[dict[str, Any]] = []

    class EncodeRecorder(E.GoodEncodeEngine):
        async def generate(
            self, request: GenerateRequest, context: Context
        ) -> AsyncGenerator[GenerateChunk, None]:
            seen.append(dict(request))
            async for chunk in super().generate(request, context):
                yield chunk

    await run_encode_conformance(EncodeRecorder)
    assert len(seen) == 1 + 8 + 1
    assert all(request == seen[0] for request in seen)
    assert seen[0]["multi_modal_data"] == {"image": [{"url": "data:image/png;base64,AA=="}]}
    assert seen[0]["mm_processor_kwargs"] == {"min_pixels": 64}
    assert seen[0]["token_ids"] == [1, 2, 3]
    assert seen[0]["stop_conditions"] == {"max_tokens": 8}

    raw_seen: list[RawRequest] = []

    class RawRecorder(E.GoodRawEngine):
        async def generate(
            self, request: RawRequest, context: Context
        ) -> AsyncGenerator[RawResponseChunk, None]:
            raw_seen.append(dict(request))
            async for chunk in super().generate(request, context):
                yield chunk

    await run_raw_conformance(RawRecorder)
    assert raw_seen == [{"prompt": "ping"}] * 9 + [{"prompt": "ping", "steps": 100_000}]


# --- failures, texts and the report --------------------------------------------------------

DISPLAY_TEXTS = [
    (F.start_failed("boom"), "StartFailed", "start() failed: boom"),
    (F.empty_model_in_config(), "EmptyModelInConfig", "EngineConfig.model is empty"),
    (
        F.kv_event_sources_failed("boom"),
        "KvEventSourcesFailed",
        "kv_event_sources() failed: boom",
    ),
    (
        F.kv_event_sources_not_idempotent(),
        "KvEventSourcesNotIdempotent",
        "kv_event_sources() returned different dp_rank set on a second call (the descriptor "
        "list must be stable for the engine's lifetime)",
    ),
    (F.setup_metrics_failed("boom"), "SetupMetricsFailed", "setup_metrics() failed: boom"),
    (
        F.component_metrics_not_idempotent(),
        "ComponentMetricsNotIdempotent",
        "setup_metrics().dp_ranks returned different ranks across calls (the rank set must be "
        "stable for the engine's lifetime)",
    ),
    (F.generate_failed("boom"), "GenerateFailed", "generate() failed: boom"),
    (F.no_chunks_yielded(), "NoChunksYielded", "generate() stream yielded no chunks"),
    (F.stream_yielded_error("boom"), "StreamYieldedError", "engine stream yielded Err: boom"),
    (F.chunk_after_terminal(), "ChunkAfterTerminal", "chunk yielded after terminal chunk"),
    (F.no_terminal_chunk(), "NoTerminalChunk", "stream ended without a terminal chunk"),
    (
        F.completion_tokens_mismatch(8, 9),
        "CompletionTokensMismatch",
        "engine emitted 8 tokens across the stream but reported "
        "completion_usage.completion_tokens = 9 on the terminal (engine bookkeeping diverges "
        "from streamed output)",
    ),
    (
        F.concurrent_generate_failed("stream was empty"),
        "ConcurrentGenerateFailed",
        "concurrent generate() calls failed: stream was empty",
    ),
    (
        F.cancellation_not_observed(2.0),
        "CancellationNotObserved",
        "stream did not terminate within 2s after cancellation",
    ),
    (
        F.cancellation_ignored(),
        "CancellationIgnored",
        "stream terminated but terminal chunk's finish_reason was not Cancelled (engine must "
        "emit FinishReason::Cancelled when it observes cancellation)",
    ),
    (F.cleanup_failed("boom"), "CleanupFailed", "cleanup() failed: boom"),
    (
        F.second_cleanup_failed("boom"),
        "SecondCleanupFailed",
        "second cleanup() call failed (must be idempotent): boom",
    ),
    (
        F.cleanup_without_start_failed("boom"),
        "CleanupWithoutStartFailed",
        "cleanup() failed on a never-started engine: boom (Worker calls cleanup() after "
        "start() raises, so engines must be null-safe against partial / no allocation)",
    ),
    (
        F.raw_engine_advertised_llm_registration(),
        "RawEngineAdvertisedLlmRegistration",
        "RawEngine populated EngineConfig.llm; raw media engines have no token pipeline and "
        "must leave it None",
    ),
    (
        F.encode_chunk_count(2),
        "EncodeChunkCount",
        "encode generate() must yield exactly one terminal chunk; got 2",
    ),
    (
        F.encode_terminal_expected(),
        "EncodeTerminalExpected",
        "encode generate() must yield a terminal chunk with finish_reason = FinishReason::Stop",
    ),
]


@pytest.mark.parametrize(("failure", "name", "text"), DISPLAY_TEXTS, ids=lambda v: "")
def test_stock_display_texts(failure: ConformanceFailure, name: str, text: str) -> None:
    assert failure.name == name
    assert failure.message == text
    assert str(failure) == f"{name}: {text}"


def test_format_duration_matches_rust_debug() -> None:
    assert format_duration(2.0) == "2s"
    assert format_duration(0.5) == "500ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(0.0001) == "100µs"
    assert format_duration(0.0) == "0ns"


def test_failures_pickle() -> None:
    failure = F.completion_tokens_mismatch(8, 9)
    failure.check = "completion_usage"
    copy = pickle.loads(pickle.dumps(failure))
    assert (copy.name, copy.message, copy.fields, copy.check) == (
        failure.name,
        failure.message,
        {"chunked": 8, "reported": 9},
        "completion_usage",
    )
    report = ConformanceReport("token", strict=True)
    many = pickle.loads(pickle.dumps(ConformanceFailures(report)))
    assert many.name == "ConformanceFailures" and many.report is not None


@pytest.mark.anyio
async def test_strict_report_lists_every_failure_readably() -> None:
    class Broken(E.WrongCancelReason, E.MissingIndex, E.SecondCleanupRaises):
        pass

    with pytest.raises(ConformanceFailures) as info:
        await run_conformance(Broken, strict=True)
    failures = info.value
    assert isinstance(failures, ConformanceFailure)
    assert {"CancellationIgnored", "InvalidChunkShape", "SecondCleanupFailed"} <= set(
        failures.names
    )
    report = failures.report
    assert report is not None and not report.ok
    assert report.failure_names == failures.names
    text = failures.message
    assert text.splitlines()[0].startswith(f"{len(report.failed)} of {len(report.results)}")
    for result in report.results:
        assert result.check in text
    assert "FAIL  cancellation" in text and "WARN  restart_rejected" in text


@pytest.mark.anyio
async def test_setup_failure_skips_dependent_checks() -> None:
    with pytest.raises(ConformanceFailures) as info:
        await run_conformance(E.EmptyModel, strict=True)
    report = info.value.report
    assert report is not None
    assert info.value.names == ["EmptyModelInConfig"]
    assert report.skipped and all(
        r.failure is not None and r.failure.name == "EmptyModelInConfig" for r in report.skipped
    )


@pytest.mark.anyio
async def test_option_validation() -> None:
    with pytest.raises(ValueError, match="deadline"):
        await run_conformance(E.GoodEngine, deadline=0)
    with pytest.raises(ValueError, match="cancel_deadline"):
        await run_conformance(E.GoodEngine, cancel_deadline=-1)
    with pytest.raises(TypeError, match="factory"):
        await run_conformance(E.GoodEngine())  # type: ignore[arg-type]


# --- helpers -------------------------------------------------------------------------------


def test_mock_context_is_fresh() -> None:
    a, b = mock_context(), mock_context()
    assert isinstance(a, Context) and not a.is_stopped() and not a.is_killed()
    assert a.id() != b.id()


@pytest.mark.anyio
async def test_cancelling_context_stops_after_delay() -> None:
    ctx = cancelling_context(0.03)
    other = cancelling_context(datetime.timedelta(milliseconds=30))
    assert isinstance(ctx, Context) and not ctx.is_stopped()
    await asyncio.wait_for(ctx.stopped(), 1.0)
    assert ctx.is_stopped() and not ctx.is_killed()
    await asyncio.wait_for(other.stopped(), 1.0)


def test_cancelling_context_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        cancelling_context(0.01)


# --- the pytest entry point ----------------------------------------------------------------


def test_conformance_test_builds_a_plain_test_function() -> None:
    test = conformance_test(E.GoodEngine, name="test_good")
    assert test.__name__ == "test_good"
    assert not inspect.iscoroutinefunction(test)
    assert not inspect.signature(test).parameters
    test()


def test_conformance_test_fails_with_the_readable_report() -> None:
    with pytest.raises(pytest.fail.Exception) as info:
        conformance_test(E.WrongCancelReason)()
    text = str(info.value)
    assert text.startswith("CancellationIgnored: stream terminated")
    assert "PASS  single_generate" in text and "FAIL  cancellation" in text

    with pytest.raises(pytest.fail.Exception) as info:
        conformance_test(E.MissingIndex, strict=True)()
    assert "chunk_schema=InvalidChunkShape" in str(info.value)


def test_conformance_test_turns_advisories_into_warnings() -> None:
    with pytest.warns(ConformanceWarning, match="RestartNotRejected"):
        conformance_test(E.GoodEngine, strict=True)()


def test_conformance_test_other_suites() -> None:
    conformance_test(E.GoodEncodeEngine, suite="encode")()
    conformance_test(E.GoodRawEngine, suite="raw")()
    with pytest.raises(ValueError, match="suite"):
        conformance_test(E.GoodEngine, suite="image")  # type: ignore[arg-type]


def test_public_api() -> None:
    for name in (
        "run_conformance",
        "run_encode_conformance",
        "run_raw_conformance",
        "mock_context",
        "cancelling_context",
        "ConformanceFailure",
        "ConformanceReport",
        "conformance_test",
    ):
        assert name in conformance.__all__ and hasattr(conformance, name)
    assert issubclass(ConformanceFailures, ConformanceFailure)
    assert issubclass(ConformanceFailure, Exception)
