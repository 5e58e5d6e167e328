"""The stock checks of ``dynamo_backend_common::testing`` (G5), one async function each.

A check takes a :class:`Session` (the factory, the engine under test and the
run's options), raises a :class:`~conformance.failures.ConformanceFailure`
when the engine breaks the contract, and may return a short note about what
it could not verify. The tables at the bottom list the checks of each suite
in the stock order together with the failure names each can raise; the
runner walks them.

In stock mode all checks share one engine, ``E1 = factory()``, exactly as the
Rust kit does; in strict mode the runner gives every check a fresh engine
prepared to the check's :class:`Setup` level.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from . import failures as F
from .failures import ConformanceFailure
from .helpers import (
    CONCURRENT_STREAMS,
    LONG_RAW_STEPS,
    GenerateSetupError,
    Stream,
    StreamError,
    SyntheticMetrics,
    chunk_get,
    describe,
    encode_request,
    finish_reason,
    is_cancelled_reason,
    is_terminal,
    long_request,
    maybe_await,
    mock_context,
    open_stream,
    raw_request,
    smoke_request,
    token_count,
)

__all__ = [
    "ENCODE_STOCK_CHECKS",
    "ENCODE_SUITE",
    "RAW_STOCK_CHECKS",
    "RAW_SUITE",
    "TOKEN_STOCK_CHECKS",
    "TOKEN_SUITE",
    "Check",
    "Options",
    "Session",
    "Setup",
    "Suite",
    "validate_encode_items",
    "validate_token_stream",
]


# --- framework -----------------------------------------------------------------------------


class Setup(enum.Enum):
    """How far strict mode prepares a fresh engine before running a check."""

    NONE = "none"  # the check builds what it needs from the factory itself
    ENGINE = "engine"  # factory() called, start() not yet
    STARTED = "started"  # start(0) succeeded
    SERVED = "served"  # started with a non-empty model, plus the Worker's post-start hooks


@dataclass(frozen=True)
class Suite:
    """What differs between the token, encode and raw suites."""

    name: str
    #: token/encode engines: chunks carry finish_reason; KV and metrics hooks exist.
    token_pipeline: bool
    smoke: Callable[[str], dict[str, Any]]
    long: Callable[[str], dict[str, Any]]


TOKEN_SUITE = Suite("token", True, smoke_request, long_request)
# The stock encode cancellation check reuses the plain encode request.
ENCODE_SUITE = Suite("encode", True, encode_request, encode_request)
RAW_SUITE = Suite(
    "raw", False, lambda _model: raw_request(), lambda _m: raw_request(LONG_RAW_STEPS)
)


@dataclass(frozen=True)
class Options:
    strict: bool
    #: per-check deadline in seconds; None = unbounded (stock mode's default).
    deadline: float | None
    #: how long a cancelled stream has to end (stock: 2 s).
    cancel_deadline: float
    #: how long abort() / aclose() may take (strict checks).
    prompt_deadline: float


class Session:
    """State shared by the checks of one run (stock) or one check (strict)."""

    def __init__(self, factory: Callable[[], Any], suite: Suite, options: Options) -> None:
        self.factory = factory
        self.suite = suite
        self.options = options
        self.engine: Any = None
        self.config: Any = None
        self.started = False
        self.cleaned = False
        #: items of the single smoke generate, kept for the usage check (stock mode).
        self.single_items: list[Any] | None = None
        self._streams: list[Stream] = []
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def model(self) -> str:
        return str(getattr(self.config, "model", "") or "")

    async def new_engine(self) -> Any:
        """``factory()``, sync or async."""
        try:
            return await maybe_await(self.factory())
        except Exception as exc:
            raise F.factory_failed(describe(exc)) from exc

    async def ensure_engine(self) -> None:
        if self.engine is None:
            self.engine = await self.new_engine()

    async def ensure_started(self) -> None:
        """``E1.start(0)`` once; worker id 0 as in the stock kit."""
        await self.ensure_engine()
        if self.started:
            return
        try:
            self.config = await maybe_await(self.engine.start(0))
        except Exception as exc:
            raise F.start_failed(describe(exc)) from exc
        self.started = True

    def require_model(self) -> None:
        if not getattr(self.config, "model", None):
            raise F.empty_model_in_config()

    async def run_worker_hooks(self) -> None:
        """The Worker's post-start calls, in its order, errors ignored.

        Strict mode runs each generate check on a fresh engine; the stock kit
        runs them after the KV and metrics hooks, matching the Worker, so some
        engines wire state in those hooks that generate() relies on. Failures
        here are reported by the hooks' own checks, not by the check at hand.
        """
        if not self.suite.token_pipeline:
            return
        engine = self.engine
        for name, args in (
            ("register_prometheus", (SyntheticMetrics(),)),
            ("component_metrics_dp_ranks", ()),
            ("kv_event_sources", ()),
        ):
            hook = getattr(engine, name, None)
            if hook is None:
                continue
            with contextlib.suppress(Exception):
                await maybe_await(hook(*args))

    async def open(self, request: Any, context: Any = None) -> Stream:
        """Start a stream on the engine under test; closed by :meth:`release`."""
        stream = await open_stream(
            self.engine, request, context if context is not None else mock_context()
        )
        self._streams.append(stream)
        return stream

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A background task cancelled by :meth:`release` if still running."""
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        return task

    async def release(self) -> None:
        """Cancel leftover tasks and close every stream a check opened."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.options.prompt_deadline)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it
        streams, self._streams = self._streams, []
        for stream in streams:
            await stream.close(self.options.prompt_deadline)


CheckFn = Callable[[Session], Awaitable[str | None]]


@dataclass(frozen=True)
class Check:
    """One row of a suite table."""

    id: str
    run: CheckFn
    #: failure names this check can raise (StepTimedOut/FactoryFailed apply to all).
    failures: tuple[str, ...]
    setup: Setup
    strict_only: bool = False

    @property
    def title(self) -> str:
        doc = (self.run.__doc__ or self.id).strip()
        return doc.splitlines()[0].rstrip(".")


# --- stream validation shared with the strict checks ---------------------------------------


def validate_token_stream(items: list[Any]) -> int:
    """The single-generate contract; returns the terminal's index.

    Order as in the Rust kit: empty, then any error item, then a second
    terminal or a terminal that is not last, then no terminal at all.
    """
    if not items:
        raise F.no_chunks_yielded()
    for item in items:
        if isinstance(item, StreamError):
            raise F.stream_yielded_error(str(item))
    terminal: int | None = None
    for i, chunk in enumerate(items):
        if is_terminal(chunk):
            if terminal is not None:
                raise F.chunk_after_terminal()
            terminal = i
    if terminal is None:
        raise F.no_terminal_chunk()
    if terminal != len(items) - 1:
        raise F.chunk_after_terminal()
    return terminal


def check_usage_consistency(items: list[Any], terminal: int) -> None:
    """Σ len(token_ids) over the stream must equal the terminal's completion_tokens."""
    usage = chunk_get(items[terminal], "completion_usage")
    if usage is None:
        return  # optional since G2
    chunked = sum(token_count(chunk) for chunk in items)
    # Rust's usage struct always has completion_tokens; a dict without it is
    # reported as a mismatch against None rather than silently accepted.
    reported = usage.get("completion_tokens") if isinstance(usage, Mapping) else usage
    if isinstance(reported, bool) or reported != chunked:
        raise F.completion_tokens_mismatch(chunked, reported)


ENCODE_PROMPT_TOKENS = 3


def validate_encode_items(items: list[Any], expected_prompt: int = ENCODE_PROMPT_TOKENS) -> None:
    """The Encode-role contract: one Ok ``stop`` terminal, no tokens, object encoder_result."""
    if len(items) != 1:
        raise F.encode_chunk_count(len(items))
    chunk = items[0]
    if isinstance(chunk, StreamError):
        raise F.stream_yielded_error(str(chunk))
    if finish_reason(chunk) != "stop":
        raise F.encode_terminal_expected()
    if token_count(chunk):
        raise F.encode_tokens_not_empty(token_count(chunk))
    if not isinstance(chunk_get(chunk, "encoder_result"), Mapping):
        raise F.encoder_result_expected_object()
    usage = chunk_get(chunk, "completion_usage")
    if usage is None:
        return
    values = usage if isinstance(usage, Mapping) else {}
    prompt = values.get("prompt_tokens")
    completion = values.get("completion_tokens")
    total = values.get("total_tokens")
    if (prompt, completion, total) != (expected_prompt, 0, expected_prompt):
        raise F.encode_usage_mismatch(expected_prompt, prompt, completion, total)


async def smoke_items(s: Session) -> list[Any]:
    """One smoke generate, drained; GenerateFailed if the call itself fails."""
    try:
        stream = await s.open(s.suite.smoke(s.model))
    except GenerateSetupError as exc:
        raise F.generate_failed(str(exc)) from exc.cause
    return await stream.drain()


# --- the stock checks ----------------------------------------------------------------------


async def check_start(s: Session) -> str | None:
    """start(0) succeeds."""
    await s.ensure_started()
    return None


async def check_model(s: Session) -> str | None:
    """EngineConfig.model is non-empty."""
    s.require_model()
    return None


async def check_raw_llm_unset(s: Session) -> str | None:
    """A raw engine leaves EngineConfig.llm None."""
    if getattr(s.config, "llm", None) is not None:
        raise F.raw_engine_advertised_llm_registration()
    return None


async def check_kv_event_sources(s: Session) -> str | None:
    """kv_event_sources() succeeds twice with the same ordered dp_rank list."""
    hook = getattr(s.engine, "kv_event_sources", None)
    if hook is None:
        return "engine has no kv_event_sources(); the ABC default declares none"
    ranks: list[list[Any]] = []
    for _ in range(2):
        try:
            sources = await maybe_await(hook())
            ranks.append([source.dp_rank for source in sources])
        except Exception as exc:
            raise F.kv_event_sources_failed(describe(exc)) from exc
    if ranks[0] != ranks[1]:
        raise F.kv_event_sources_not_idempotent()
    return None


async def check_setup_metrics(s: Session) -> str | None:
    """register_prometheus() + component_metrics_dp_ranks() succeed twice with stable ranks.

    The Python bridge's ``setup_metrics`` is those two calls; the stock kit
    drops the returned publisher callback, so attach_snapshot_publisher() is
    never called here.
    """
    metrics = SyntheticMetrics()
    ranks: list[list[Any]] = []
    for _ in range(2):
        try:
            register = getattr(s.engine, "register_prometheus", None)
            if register is not None:
                await maybe_await(register(metrics))
            dp_ranks = getattr(s.engine, "component_metrics_dp_ranks", None)
            ranks.append(list(await maybe_await(dp_ranks())) if dp_ranks is not None else [])
        except Exception as exc:
            raise F.setup_metrics_failed(describe(exc)) from exc
    if ranks[0] != ranks[1]:
        raise F.component_metrics_not_idempotent()
    return None


async def check_single_generate(s: Session) -> str | None:
    """One 8-token generate yields a non-empty, error-free stream ending in one terminal."""
    items = await smoke_items(s)
    s.single_items = items
    validate_token_stream(items)
    return None


async def check_completion_usage(s: Session) -> str | None:
    """If the terminal reports completion_usage, it counts the tokens actually streamed."""
    items = s.single_items if s.single_items is not None else await smoke_items(s)
    try:
        terminal = validate_token_stream(items)
    except ConformanceFailure as failure:
        # Only reachable in strict mode, where single_generate reports it.
        return f"not evaluated: {failure.name}"
    check_usage_consistency(items, terminal)
    if chunk_get(items[terminal], "completion_usage") is None:
        return "terminal carries no completion_usage (optional)"
    return None


async def _concurrent_one(s: Session) -> ConformanceFailure | None:
    try:
        stream = await s.open(s.suite.smoke(s.model))
    except GenerateSetupError as exc:
        return F.concurrent_generate_failed(str(exc))
    items = await stream.drain()
    if s.suite.name == "encode":
        try:
            validate_encode_items(items)
        except ConformanceFailure as failure:
            return failure
        return None
    # Error items count: this check only asks that every stream produced something.
    if not items:
        return F.concurrent_generate_failed("stream was empty")
    return None


async def check_concurrent_generate(s: Session) -> str | None:
    """Eight generates driven together on one loop all produce a non-empty stream.

    Interleaving rather than parallelism, as under the Rust kit's
    single-threaded test runtime. The encode suite validates each stream
    with the encode rules; the first failure in call order is reported.
    """
    results = await asyncio.gather(*(_concurrent_one(s) for _ in range(CONCURRENT_STREAMS)))
    for failure in results:
        if failure is not None:
            raise failure
    return None


async def check_cancellation(s: Session) -> str | None:
    """A stream stopped before its first poll ends with a Cancelled terminal within 2 s.

    Only the last item is examined, as in the Rust kit: a stream that ends
    with a non-terminal chunk fails as CancellationIgnored too.
    """
    ctx = mock_context()
    try:
        stream = await s.open(s.suite.long(s.model), ctx)
    except GenerateSetupError as exc:
        raise F.generate_failed(str(exc)) from exc.cause
    # Before the first poll: the engine's first is_stopped() sees the flag.
    ctx.stop_generating()
    deadline = s.options.cancel_deadline
    try:
        async with asyncio.timeout(deadline):
            items = await stream.drain()
    except TimeoutError:
        raise F.cancellation_not_observed(deadline) from None
    if not items:
        raise F.no_chunks_yielded()
    last = items[-1]
    if isinstance(last, StreamError):
        raise F.stream_yielded_error(str(last))
    if not is_cancelled_reason(finish_reason(last)):
        raise F.cancellation_ignored()
    return None


async def check_cleanup(s: Session) -> str | None:
    """cleanup() succeeds, and a second cleanup() succeeds too."""
    s.cleaned = True
    try:
        await maybe_await(s.engine.cleanup())
    except Exception as exc:
        raise F.cleanup_failed(describe(exc)) from exc
    try:
        await maybe_await(s.engine.cleanup())
    except Exception as exc:
        raise F.second_cleanup_failed(describe(exc)) from exc
    return None


async def check_cleanup_without_start(s: Session) -> str | None:
    """cleanup() succeeds on a fresh, never-started engine (E2 = factory())."""
    fresh = await s.new_engine()
    try:
        await maybe_await(fresh.cleanup())
    except Exception as exc:
        raise F.cleanup_without_start_failed(describe(exc)) from exc
    return None


async def check_encode_generate(s: Session) -> str | None:
    """One encode request yields exactly one Ok stop terminal with an object encoder_result."""
    validate_encode_items(await smoke_items(s))
    return None


async def check_raw_generate(s: Session) -> str | None:
    """One raw request yields a non-empty stream without error items."""
    items = await smoke_items(s)
    if not items:
        raise F.no_chunks_yielded()
    for item in items:
        if isinstance(item, StreamError):
            raise F.stream_yielded_error(str(item))
    return None


async def check_raw_cancellation(s: Session) -> str | None:
    """A long raw stream stopped before its first poll ends within 2 s.

    Raw responses have no finish_reason, so ending is the whole contract.
    """
    ctx = mock_context()
    try:
        stream = await s.open(s.suite.long(s.model), ctx)
    except GenerateSetupError as exc:
        raise F.generate_failed(str(exc)) from exc.cause
    ctx.stop_generating()
    deadline = s.options.cancel_deadline
    try:
        async with asyncio.timeout(deadline):
            await stream.drain()
    except TimeoutError:
        raise F.cancellation_not_observed(deadline) from None
    return None


# --- tables (stock order) ------------------------------------------------------------------

_START = Check("start", check_start, ("StartFailed",), Setup.ENGINE)
_MODEL = Check("model", check_model, ("EmptyModelInConfig",), Setup.STARTED)
_KV = Check(
    "kv_event_sources",
    check_kv_event_sources,
    ("KvEventSourcesFailed", "KvEventSourcesNotIdempotent"),
    Setup.STARTED,
)
_METRICS = Check(
    "setup_metrics",
    check_setup_metrics,
    ("SetupMetricsFailed", "ComponentMetricsNotIdempotent"),
    Setup.STARTED,
)
_CANCEL = Check(
    "cancellation",
    check_cancellation,
    (
        "GenerateFailed",
        "CancellationNotObserved",
        "NoChunksYielded",
        "StreamYieldedError",
        "CancellationIgnored",
    ),
    Setup.SERVED,
)
_CLEANUP = Check("cleanup", check_cleanup, ("CleanupFailed", "SecondCleanupFailed"), Setup.SERVED)
_CLEANUP_FRESH = Check(
    "cleanup_without_start", check_cleanup_without_start, ("CleanupWithoutStartFailed",), Setup.NONE
)

#: ``run_conformance`` — conformance.md §3, steps 1-10.
TOKEN_STOCK_CHECKS: tuple[Check, ...] = (
    _START,
    _MODEL,
    _KV,
    _METRICS,
    Check(
        "single_generate",
        check_single_generate,
        (
            "GenerateFailed",
            "NoChunksYielded",
            "StreamYieldedError",
            "ChunkAfterTerminal",
            "NoTerminalChunk",
        ),
        Setup.SERVED,
    ),
    Check("completion_usage", check_completion_usage, ("CompletionTokensMismatch",), Setup.SERVED),
    Check(
        "concurrent_generate",
        check_concurrent_generate,
        ("ConcurrentGenerateFailed",),
        Setup.SERVED,
    ),
    _CANCEL,
    _CLEANUP,
    _CLEANUP_FRESH,
)

_ENCODE_RULES = (
    "EncodeChunkCount",
    "StreamYieldedError",
    "EncodeTerminalExpected",
    "EncodeTokensNotEmpty",
    "EncoderResultExpectedObject",
    "EncodeUsageMismatch",
)

#: ``run_encode_conformance`` — conformance.md §4.
ENCODE_STOCK_CHECKS: tuple[Check, ...] = (
    _START,
    _MODEL,
    _KV,
    _METRICS,
    Check(
        "encode_generate",
        check_encode_generate,
        ("GenerateFailed", *_ENCODE_RULES),
        Setup.SERVED,
    ),
    Check(
        "concurrent_encode",
        check_concurrent_generate,
        ("ConcurrentGenerateFailed", *_ENCODE_RULES),
        Setup.SERVED,
    ),
    _CANCEL,
    _CLEANUP,
    _CLEANUP_FRESH,
)

#: ``run_raw_conformance`` — conformance.md §5.
RAW_STOCK_CHECKS: tuple[Check, ...] = (
    _START,
    _MODEL,
    Check("llm_unset", check_raw_llm_unset, ("RawEngineAdvertisedLlmRegistration",), Setup.STARTED),
    Check(
        "raw_generate",
        check_raw_generate,
        ("GenerateFailed", "NoChunksYielded", "StreamYieldedError"),
        Setup.SERVED,
    ),
    Check(
        "concurrent_generate",
        check_concurrent_generate,
        ("ConcurrentGenerateFailed",),
        Setup.SERVED,
    ),
    Check(
        "cancellation",
        check_raw_cancellation,
        ("GenerateFailed", "CancellationNotObserved"),
        Setup.SERVED,
    ),
    _CLEANUP,
    _CLEANUP_FRESH,
)
