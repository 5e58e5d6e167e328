"""Strict-mode checks: conformance.md §10 proposals 3-5, 7, 8, 10, 11 and 12.

None of these is enforced by the stock 1.6.1 kit. Proposals 1 (a deadline
on every step) and 2 (every check on a fresh engine, all failures reported)
are how the runner executes strict mode rather than checks of their own.

Phase budgets: a check whose phases can each hang gives each phase a share
of the step deadline (``deadline / phases``), so its own failure name fires
before the runner's StepTimedOut does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from dynamo_lite import Context
from dynamo_lite.engine import GenerateChunk
from dynamo_lite.stream import FINISH_REASONS as STREAM_FINISH_REASONS
from dynamo_lite.stream import is_known_finish_reason

from . import failures as F
from .checks import (
    Check,
    Session,
    Setup,
    check_usage_consistency,
    smoke_items,
    validate_token_stream,
)
from .failures import ConformanceFailure
from .helpers import (
    CONCURRENT_STREAMS,
    GenerateSetupError,
    Stream,
    StreamError,
    cancelling_context,
    chunk_get,
    describe,
    finish_reason,
    is_cancelled_reason,
    is_terminal,
    maybe_await,
    mock_context,
    token_count,
)

__all__ = [
    "DROP_PROBES",
    "ENCODE_STRICT_CHECKS",
    "FINISH_REASONS",
    "RAW_STRICT_CHECKS",
    "TOKEN_STRICT_CHECKS",
]

#: finish_reason strings 1.6.1 parses (exact case); "error: <msg>" is matched by prefix.
FINISH_REASONS = frozenset({*STREAM_FINISH_REASONS, "error"})

#: Optional in-flight probes an engine may expose for the drop-safety check,
#: tried in this order: an int attribute, or a method (sync or async)
#: returning an int.
DROP_PROBES = ("inflight_requests", "inflight", "active", "request_count")

#: Timer of the mid-stream cancellation variant (conformance.md §10.3).
MID_STREAM_TIMER = 0.05
#: Mid-stream variants that stop the context right after this many chunks.
MID_STREAM_AFTER_CHUNKS = (1, 2, 4)

_CHUNK_KEYS = GenerateChunk.__required_keys__ | GenerateChunk.__optional_keys__
_MAPPING_KEYS = ("completion_usage", "disaggregated_params", "encoder_result", "engine_data")
_USAGE_INTS = ("prompt_tokens", "completion_tokens", "total_tokens")
_U32 = 2**32


def _phase(s: Session, phases: int) -> float:
    deadline = s.options.deadline
    assert deadline is not None, "strict checks always run with a deadline"
    return deadline / phases


async def _open(s: Session, request: Any, ctx: Context | None = None) -> Stream:
    try:
        return await s.open(request, ctx)
    except GenerateSetupError as exc:
        raise F.generate_failed(str(exc)) from exc.cause


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- §10.3 mid-stream cancellation ---------------------------------------------------------


def _cancelled_ending(stream: Stream) -> str | None:
    """Why a stream stopped mid-flight did not end properly, or None if it did."""
    if not stream.items:
        return "the stream yielded nothing"
    last = stream.last
    if isinstance(last, StreamError):
        return f"it ended with an error item ({last})"
    if not is_cancelled_reason(finish_reason(last)):
        return f"its last chunk has finish_reason {finish_reason(last)!r}"
    return None


async def _drain_after_stop(stream: Stream, how: str, budget: float) -> None:
    try:
        async with asyncio.timeout(budget):
            await stream.drain()
    except TimeoutError:
        raise F.mid_stream_cancellation_ignored(
            how, f"the stream did not end within {F.format_duration(budget)} of the stop"
        ) from None
    reason = _cancelled_ending(stream)
    if reason is not None:
        raise F.mid_stream_cancellation_ignored(how, reason)


async def check_mid_stream_cancellation(s: Session) -> str | None:
    """Stops after streaming began (50 ms timer; after chunk 1, 2, 4) end in a Cancelled terminal.

    A variant whose stream finished naturally before the stop arrived is
    inconclusive and passes; the note says so.
    """
    cancel = s.options.cancel_deadline
    inconclusive: list[str] = []

    how = f"by a {F.format_duration(MID_STREAM_TIMER)} timer"
    ctx = cancelling_context(MID_STREAM_TIMER)
    stream = await _open(s, s.suite.long(s.model), ctx)
    try:
        async with asyncio.timeout(MID_STREAM_TIMER + cancel):
            await stream.drain()
    except TimeoutError:
        raise F.mid_stream_cancellation_ignored(
            how, f"the stream did not end within {F.format_duration(cancel)} of the stop"
        ) from None
    after_stop = sum(stream.stopped_at_receipt)
    reason = _cancelled_ending(stream)
    if reason is not None and after_stop <= 1 and stream.items and is_terminal(stream.last):
        # The stream ended before the timer fired, or its natural terminal was
        # already on the way when it did: nothing was generated past the stop.
        inconclusive.append("timer")
    elif reason is not None:
        raise F.mid_stream_cancellation_ignored(how, reason)

    for after in MID_STREAM_AFTER_CHUNKS:
        how = f"after chunk {after}"
        ctx = mock_context()
        stream = await _open(s, s.suite.long(s.model), ctx)
        if not await stream.read(after) or is_terminal(stream.last) or stream.ended:
            inconclusive.append(how)
            continue
        ctx.stop_generating()
        await _drain_after_stop(stream, how, cancel)
    if inconclusive:
        return "ended before the stop (inconclusive): " + ", ".join(inconclusive)
    return None


# --- §10.4 cancelled terminal shape --------------------------------------------------------


def _cancelled_shape_problem(items: list[Any]) -> str | None:
    terminals = [i for i, item in enumerate(items) if is_terminal(item)]
    if len(terminals) != 1:
        return f"the stream carries {len(terminals)} terminal chunks, not one"
    terminal = items[terminals[0]]
    if token_count(terminal):
        return (
            f"the Cancelled terminal carries {token_count(terminal)} token_ids "
            "(nothing may be generated once cancellation is observed)"
        )
    try:
        check_usage_consistency(items, terminals[0])
    except ConformanceFailure as failure:
        return (
            f"its completion_usage.completion_tokens = {failure.fields['reported']} but "
            f"{failure.fields['chunked']} tokens were streamed"
        )
    return None


async def check_cancelled_terminal_shape(s: Session) -> str | None:
    """A Cancelled terminal is the only terminal, carries no tokens, and its usage is consistent."""
    cancel = s.options.cancel_deadline
    evaluated = 0
    for how, after in (("before the first poll", 0), ("after chunk 1", 1)):
        ctx = mock_context()
        stream = await _open(s, s.suite.long(s.model), ctx)
        if after and (not await stream.read(after) or stream.ended or is_terminal(stream.last)):
            continue
        ctx.stop_generating()
        try:
            async with asyncio.timeout(cancel):
                await stream.drain()
        except TimeoutError:
            continue  # the cancellation checks report this
        items = stream.items
        if not items or not is_cancelled_reason(finish_reason(items[-1])):
            continue  # not a Cancelled ending: the cancellation checks report this
        evaluated += 1
        problem = _cancelled_shape_problem(items)
        if problem is not None:
            raise F.cancelled_terminal_malformed(how, problem)
    if not evaluated:
        return "not evaluated: no stream ended with a Cancelled terminal"
    return None


# --- §10.5 terminal contract on every concurrent stream ------------------------------------


def _stream_contract_problem(items: list[Any]) -> str | None:
    try:
        terminal = validate_token_stream(items)
        check_usage_consistency(items, terminal)
    except ConformanceFailure as failure:
        return f"{failure.name}: {failure.message}"
    for i, chunk in enumerate(items):
        index = chunk_get(chunk, "index")
        if index is not None and index != 0:
            return f"chunk {i} has index {index!r}; single-choice streams use index 0"
    return None


async def check_concurrent_stream_contract(s: Session) -> str | None:
    """Each of eight concurrent streams meets the single-generate contract, with index 0."""

    async def one() -> str | None:
        try:
            stream = await s.open(s.suite.smoke(s.model))
        except GenerateSetupError as exc:
            return f"generate() failed: {exc}"
        return _stream_contract_problem(await stream.drain())

    problems = await asyncio.gather(*(one() for _ in range(CONCURRENT_STREAMS)))
    for i, problem in enumerate(problems):
        if problem is not None:
            raise F.concurrent_stream_malformed(i, CONCURRENT_STREAMS, problem)
    return None


# --- §10.7 / §10.8 vocabulary and schema ---------------------------------------------------


async def _sample_streams(s: Session) -> list[tuple[str, list[Any]]]:
    """A smoke stream and (token suite) a stream cancelled before its first poll."""
    samples = [("the smoke stream", await smoke_items(s))]
    if s.suite.name == "token":
        ctx = mock_context()
        stream = await _open(s, s.suite.long(s.model), ctx)
        ctx.stop_generating()
        try:
            async with asyncio.timeout(s.options.cancel_deadline):
                await stream.drain()
        except TimeoutError:
            pass  # judge what arrived; the cancellation check reports the hang
        samples.append(("the cancelled stream", stream.items))
    return samples


def _valid_finish_reason(value: object) -> bool:
    # One definition with the worker's validator: stock rejects "error:x" (no space).
    return value is None or (isinstance(value, str) and is_known_finish_reason(value))


async def check_finish_reason_vocabulary(s: Session) -> str | None:
    """Every finish_reason is one of the exact strings 1.6.1 parses."""
    for where, items in await _sample_streams(s):
        for i, chunk in enumerate(items):
            value = finish_reason(chunk)
            if not _valid_finish_reason(value):
                raise F.invalid_finish_reason(value, f"chunk {i} of {where}")
    return None


def _shape_problem(chunk: object) -> str | None:
    if not isinstance(chunk, Mapping):
        return f"it is a {type(chunk).__name__}, not a dict"
    extra = sorted(str(k) for k in chunk if k not in _CHUNK_KEYS)
    if extra:
        return f"unknown keys {extra}"
    ids = chunk.get("token_ids")
    if not isinstance(ids, list):
        return "token_ids is missing" if ids is None else f"token_ids is a {type(ids).__name__}"
    bad = [t for t in ids if not _is_int(t) or not 0 <= t < _U32]
    if bad:
        return f"token_ids holds {bad[0]!r}, not a u32 int"
    if "index" not in chunk:
        return "index is missing"
    if not _is_int(chunk["index"]) or chunk["index"] != 0:
        return f"index is {chunk['index']!r}; single-choice requests use 0"
    value = chunk.get("finish_reason")
    if value is not None and not isinstance(value, str):
        return f"finish_reason is a {type(value).__name__}"
    for key in _MAPPING_KEYS:
        if chunk.get(key) is not None and not isinstance(chunk[key], Mapping):
            return f"{key} is a {type(chunk[key]).__name__}, not a dict"
    usage = chunk.get("completion_usage")
    if isinstance(usage, Mapping):
        for key in _USAGE_INTS:
            if key in usage and not (_is_int(usage[key]) and usage[key] >= 0):
                return f"completion_usage.{key} is {usage[key]!r}"
    for key in ("log_probs", "top_logprobs"):
        values = chunk.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != len(ids):
            size = len(values) if isinstance(values, list) else type(values).__name__
            return f"{key} has {size} entries for {len(ids)} token_ids"
    return None


async def check_chunk_schema(s: Session) -> str | None:
    """Every chunk is a GenerateChunk: list[int] token_ids, index 0, only known keys."""
    for where, items in await _sample_streams(s):
        for i, chunk in enumerate(items):
            if isinstance(chunk, StreamError):
                continue
            problem = _shape_problem(chunk)
            if problem is not None:
                raise F.invalid_chunk_shape(f"chunk {i} of {where}", problem)
    return None


def _ended_without_terminal(s: Session, stream: Stream) -> bool:
    """Token/encode streams must end with a terminal chunk or an error item."""
    if not s.suite.token_pipeline:
        return False
    return not stream.items or not (
        is_terminal(stream.last) or isinstance(stream.last, StreamError)
    )


# --- §10.10 abort contract -----------------------------------------------------------------


async def _abort(s: Session, ctx: Context) -> str | None:
    """Call abort(ctx); a description of what went wrong, or None."""
    limit = s.options.prompt_deadline
    hook = getattr(s.engine, "abort", None)
    if hook is None:
        return None  # nothing to call: the ABC default is a no-op
    try:
        async with asyncio.timeout(limit):
            await maybe_await(hook(ctx))
    except TimeoutError:
        return f"did not return within {F.format_duration(limit)}"
    except Exception as exc:
        return f"raised {describe(exc)}"
    return None


async def check_abort_contract(s: Session) -> str | None:
    """abort() is prompt and never raises: in flight, again for the same id, for an unknown id."""
    ctx = mock_context()
    stream = await _open(s, s.suite.long(s.model), ctx)
    await stream.next()
    # The framework stops (kills) the context before it calls abort().
    ctx.stop_generating()
    problem = await _abort(s, ctx)
    if problem is not None:
        raise F.abort_failed(f"for an in-flight request {problem}")
    problem = await _abort(s, ctx)
    if problem is not None:
        raise F.abort_not_idempotent(problem)
    problem = await _abort(s, Context())
    if problem is not None:
        raise F.abort_failed(f"for an unknown request id {problem}")
    limit = s.options.cancel_deadline
    try:
        async with asyncio.timeout(limit):
            await stream.drain()
    except TimeoutError:
        raise F.abort_failed(
            f"left the in-flight stream running: it did not end within "
            f"{F.format_duration(limit)} after stop + abort"
        ) from None
    if _ended_without_terminal(s, stream):
        raise F.abort_failed("left the in-flight stream without a terminal chunk")
    return None


# --- §10.11 drop safety --------------------------------------------------------------------


async def _read_probe(engine: Any) -> tuple[str, int] | None:
    for name in DROP_PROBES:
        value = getattr(engine, name, None)
        if callable(value):
            try:
                value = await maybe_await(value())
            except Exception:
                continue  # not a probe after all
        if isinstance(value, int) and not isinstance(value, bool):
            return name, value
    return None


async def check_drop_safety(s: Session) -> str | None:
    """Closing a stream after one chunk is prompt, raises nothing and frees per-request state.

    Freed state is measured only if the engine exposes an in-flight probe:
    an int attribute ``inflight`` / ``active`` / ``request_count`` or a
    method ``inflight_requests()`` (see ``DROP_PROBES``); without one the
    check verifies only that ``aclose()`` returns promptly without raising.
    """
    limit = s.options.prompt_deadline
    before = await _read_probe(s.engine)
    stream = await _open(s, s.suite.long(s.model), mock_context())
    await stream.next()
    try:
        async with asyncio.timeout(limit):
            await stream.aclose_strict()
    except TimeoutError:
        raise F.leak_on_drop(
            f"hung: aclose() did not return within {F.format_duration(limit)}"
        ) from None
    except Exception as exc:
        raise F.leak_on_drop(f"raised {describe(exc)} from aclose()") from exc
    if before is None:
        return "no in-flight probe; verified only that aclose() is prompt and clean"
    name, baseline = before
    # Engines that release from a background task get prompt_deadline to settle.
    settle_until = time.monotonic() + limit
    while True:
        after = await _read_probe(s.engine)
        now = after[1] if after is not None else None
        if now == baseline:
            return None
        if time.monotonic() >= settle_until:
            raise F.leak_on_drop(
                f"left engine.{name} at {now} (it was {baseline} before the request)"
            )
        await asyncio.sleep(0.01)


# --- §10.12 start/cleanup edge cases -------------------------------------------------------


async def check_cleanup_during_stream(s: Session) -> str | None:
    """cleanup() during an in-flight stream returns, and the stream then ends."""
    budget = _phase(s, 2)
    stream = await _open(s, s.suite.smoke(s.model), mock_context())
    await stream.next()
    engine = s.engine

    async def run_cleanup() -> None:
        await maybe_await(engine.cleanup())

    cleanup = s.spawn(run_cleanup())
    try:
        async with asyncio.timeout(budget):
            await stream.drain()
    except TimeoutError:
        raise F.cleanup_hangs_stream(
            f"the stream did not end within {F.format_duration(budget)} of cleanup()"
        ) from None
    done, _ = await asyncio.wait({cleanup}, timeout=budget)
    if not done:
        raise F.cleanup_hangs_stream(f"cleanup() did not return within {F.format_duration(budget)}")
    if not cleanup.cancelled() and cleanup.exception() is not None:
        exc = cleanup.exception()
        assert exc is not None
        raise F.cleanup_hangs_stream(f"cleanup() raised {describe(exc)}") from exc
    if _ended_without_terminal(s, stream):
        raise F.cleanup_hangs_stream("the stream ended without a terminal chunk or error")
    return None


async def check_cleanup_after_failed_start(s: Session) -> str | None:
    """cleanup() succeeds after start() was interrupted at its first suspension point.

    Without engine cooperation the kit cannot make start() fail part-way;
    cancelling it at its first await is the closest generic stand-in (the
    Worker then calls cleanup() on whatever was allocated).
    """
    engine = s.engine

    async def run_start() -> None:
        await maybe_await(engine.start(0))

    start = asyncio.ensure_future(run_start())
    await asyncio.sleep(0)
    interrupted = not start.done()
    start.cancel()
    await asyncio.wait({start})
    if not start.cancelled():
        start.exception()  # a start() that raised on its own is just as valid here
    try:
        await maybe_await(engine.cleanup())
    except Exception as exc:
        raise F.cleanup_after_failed_start_failed(describe(exc)) from exc
    if not interrupted:
        return "start() has no suspension point; checked cleanup() after a completed start()"
    return None


async def check_restart_rejected(s: Session) -> str | None:
    """A second start() raises (advisory).

    Advisory, not a failure: the seed contract only promises that the Worker
    calls start() once, never that a second call is rejected.
    """
    try:
        await maybe_await(s.engine.start(0))
    except Exception as exc:
        return f"rejected with {describe(exc)}"
    raise F.restart_not_rejected()


# --- tables --------------------------------------------------------------------------------

_MID = Check(
    "mid_stream_cancellation",
    check_mid_stream_cancellation,
    ("GenerateFailed", "MidStreamCancellationIgnored"),
    Setup.SERVED,
    strict_only=True,
)
_SHAPE = Check(
    "cancelled_terminal_shape",
    check_cancelled_terminal_shape,
    ("GenerateFailed", "CancelledTerminalMalformed"),
    Setup.SERVED,
    strict_only=True,
)
_CONCURRENT = Check(
    "concurrent_stream_contract",
    check_concurrent_stream_contract,
    ("ConcurrentStreamMalformed",),
    Setup.SERVED,
    strict_only=True,
)
_VOCAB = Check(
    "finish_reason_vocabulary",
    check_finish_reason_vocabulary,
    ("GenerateFailed", "InvalidFinishReason"),
    Setup.SERVED,
    strict_only=True,
)
_SCHEMA = Check(
    "chunk_schema",
    check_chunk_schema,
    ("GenerateFailed", "InvalidChunkShape"),
    Setup.SERVED,
    strict_only=True,
)
_ABORT = Check(
    "abort_contract",
    check_abort_contract,
    ("GenerateFailed", "AbortFailed", "AbortNotIdempotent"),
    Setup.SERVED,
    strict_only=True,
)
_DROP = Check(
    "drop_safety",
    check_drop_safety,
    ("GenerateFailed", "LeakOnDrop"),
    Setup.SERVED,
    strict_only=True,
)
_CLEANUP_DURING = Check(
    "cleanup_during_stream",
    check_cleanup_during_stream,
    ("GenerateFailed", "CleanupHangsStream"),
    Setup.SERVED,
    strict_only=True,
)
_CLEANUP_PARTIAL = Check(
    "cleanup_after_failed_start",
    check_cleanup_after_failed_start,
    ("CleanupAfterFailedStartFailed",),
    Setup.ENGINE,
    strict_only=True,
)
_RESTART = Check(
    "restart_rejected",
    check_restart_rejected,
    ("RestartNotRejected",),
    Setup.STARTED,
    strict_only=True,
)

TOKEN_STRICT_CHECKS: tuple[Check, ...] = (
    _MID,
    _SHAPE,
    _CONCURRENT,
    _VOCAB,
    _SCHEMA,
    _ABORT,
    _DROP,
    _CLEANUP_DURING,
    _CLEANUP_PARTIAL,
    _RESTART,
)
# Encode streams are a single terminal (the stock concurrent check already
# validates each), so mid-stream cancellation and the per-stream contract do
# not apply; the finish_reason must be "stop", which the stock check pins.
ENCODE_STRICT_CHECKS: tuple[Check, ...] = (
    _SCHEMA,
    _ABORT,
    _DROP,
    _CLEANUP_DURING,
    _CLEANUP_PARTIAL,
    _RESTART,
)
# Raw responses are opaque objects: only the modality-neutral checks apply.
RAW_STRICT_CHECKS: tuple[Check, ...] = (
    _ABORT,
    _DROP,
    _CLEANUP_DURING,
    _CLEANUP_PARTIAL,
    _RESTART,
)
