"""Span events in the JSONL log (``DYN_LOGGING_SPAN_EVENTS``), as the stock worker writes them.

Theory of operation
-------------------
With JSONL logging and ``DYN_LOGGING_SPAN_EVENTS`` on, the stock worker logs
two records per request span, from its ``request_span`` target at the span's
level (INFO): ``SPAN_FIRST_ENTRY`` when the span is first entered and
``SPAN_CLOSED`` when it ends. A request has two spans:

* ``handle_payload`` — the whole request, from the request plane's receipt
  to the end of the response stream. Fields ``component``, ``endpoint``,
  ``instance_id``, ``namespace``, ``otel.kind`` (``server``), ``request_id``;
  ``parent_id`` and ``trace_flags`` when the request carried a
  ``traceparent``; ``x_request_id`` when it carried ``x-request-id``.
* ``engine.generate`` — the engine's stream, a child of ``handle_payload``.
  Fields ``disagg_role``, ``input_tokens``, ``model``, ``request_id``,
  ``parent_id``, ``x_request_id`` as above (raw engines: ``request_id``
  only); a stream closed before its terminal chunk was delivered (a
  cancellation, even if the engine then yields a ``cancelled`` chunk; a
  shutdown) adds ``cancelled`` (``true``) and ``finish_reason`` (``Dropped``).

Every span record also has ``span_name``, ``span_id`` (16 hex digits) and
``trace_id`` (32 hex digits: the ``traceparent``'s, or a fresh one). All span
field values are strings, as stock renders them. ``SPAN_CLOSED`` adds integers
``time.busy_us`` (time spent running the span's code), ``time.idle_us`` (time
spent waiting) and ``time.duration_us`` (their sum); stock derives them from
tracing's three-significant-digit display of each duration (``377µs``,
``53.4ms``), parsed back and truncated to whole microseconds, and so does
:func:`span_micros`. Busy time is measured the way tracing does: the time
spent inside each resumption of the request's coroutine (``handle_payload``)
or of the engine's generator (``engine.generate``).

Nothing is emitted in the readable format (stock ignores the switch there);
in JSONL the records pass whatever DYN_LOG says (stock logs them even with
``DYN_LOG=warn``). The switch is :data:`dynamo_lite.telemetry.span_events`:
when it is off this module is not even imported, and the request path pays
one boolean test per span.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, TypeVar

from . import telemetry
from .context import Context

__all__ = ["TARGET", "engine_generate", "handle_payload", "span_micros"]

#: The stock target of the span records (also the DYN_LOG target that filters them).
TARGET = "request_span"
FIRST_ENTRY = "SPAN_FIRST_ENTRY"
CLOSED = "SPAN_CLOSED"

_log = logging.getLogger(TARGET)
_T = TypeVar("_T")
#: The fields of each open ``handle_payload`` span by request id (its child's parent).
_open: dict[str, dict[str, str]] = {}


def _tracing_display(ns: int) -> str:
    """tracing-subscriber's rendering of a span duration: three significant digits."""
    t = float(ns)
    for unit in ("ns", "µs", "ms", "s"):
        if t < 10.0:
            return f"{t:.2f}{unit}"
        if t < 100.0:
            return f"{t:.1f}{unit}"
        if t < 1000.0:
            return f"{t:.0f}{unit}"
        t /= 1000.0
    return f"{t * 1000.0:.0f}s"


def span_micros(ns: int) -> int:
    """Whole microseconds as stock logs them (``time.busy_us``/``time.idle_us``)."""
    text = _tracing_display(ns)
    unit = next(u for u in ("ns", "µs", "ms", "s") if text.endswith(u))
    value = float(text[: -len(unit)])
    # Stock parses the display back and truncates; the same float operations give
    # the same artefacts ("2.01ms" is 2009).
    if unit == "ns":
        return int(value / 1000.0)
    return int(value * {"µs": 1.0, "ms": 1000.0, "s": 1_000_000.0}[unit])


def _hex_id(bits: int) -> str:
    # os.urandom, not ``random``: an engine seeding ``random`` must not repeat span
    # ids, and a worker that never logs spans does not load ``random`` for them.
    return f"{int.from_bytes(os.urandom(bits // 8), 'big') or 1:0{bits // 4}x}"


class _Span:
    """One span's fields and clock."""

    __slots__ = ("busy_ns", "fields", "started_ns")

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.busy_ns = 0
        self.started_ns = 0

    def enter(self) -> None:
        self.started_ns = time.perf_counter_ns()
        _log.info(FIRST_ENTRY, extra=self.fields)

    def close(self) -> None:
        total = time.perf_counter_ns() - self.started_ns
        busy = span_micros(self.busy_ns)
        idle = span_micros(max(0, total - self.busy_ns))
        extra: dict[str, Any] = dict(self.fields)
        extra["time.busy_us"] = busy
        extra["time.idle_us"] = idle
        extra["time.duration_us"] = busy + idle
        _log.info(CLOSED, extra=extra)


def _timed(awaitable: Awaitable[_T], span: _Span) -> Generator[Any, Any, _T]:
    """Drive ``awaitable``, adding the time spent inside each resumption to ``span.busy_ns``."""
    it = awaitable.__await__()
    send: Any = None
    thrown: BaseException | None = None
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        try:
            yielded = it.send(send) if thrown is None else it.throw(thrown)
        except StopIteration as stop:
            span.busy_ns += clock() - t0
            result: _T = stop.value
            return result
        except BaseException:
            span.busy_ns += clock() - t0
            raise
        span.busy_ns += clock() - t0
        thrown = None
        send = None
        try:
            send = yield yielded
        except BaseException as exc:  # delivered into the awaitable on the next resumption
            thrown = exc


class _Step:
    """An awaitable running :func:`_timed` (a plain generator is not awaitable)."""

    __slots__ = ("awaitable", "span")

    def __init__(self, awaitable: Awaitable[Any], span: _Span) -> None:
        self.awaitable = awaitable
        self.span = span

    def __await__(self) -> Generator[Any, Any, Any]:
        return _timed(self.awaitable, self.span)


def _trace_parts(ctx: Context) -> tuple[str | None, str | None, str | None]:
    """(trace_id, parent span id, flags) from the request's ``traceparent``."""
    headers = ctx._trace_headers
    parts = headers.get("traceparent", "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        return parts[1], parts[2], parts[3]
    return None, None, None


async def handle_payload(
    serve: Callable[[], Coroutine[Any, Any, None]], ctx: Context, identity: Mapping[str, str]
) -> None:
    """Run one request's coroutine inside a ``handle_payload`` span.

    The coroutine is made here, not by the caller: a task cancelled before its
    first step never runs this body, and an inner coroutine made beforehand
    would then be left never awaited.
    """
    trace_id, parent, flags = _trace_parts(ctx)
    fields = dict(identity)
    fields["otel.kind"] = "server"
    fields["request_id"] = ctx.id()
    if parent is not None and flags is not None:
        fields["parent_id"] = parent
        fields["trace_flags"] = flags
    x_request_id = ctx._trace_headers.get("x-request-id")
    if x_request_id:
        fields["x_request_id"] = x_request_id
    fields["span_id"] = _hex_id(64)
    fields["span_name"] = "handle_payload"
    fields["trace_id"] = trace_id or _hex_id(128)
    span = _Span(fields)
    request_id = ctx.id()
    _open[request_id] = fields
    span.enter()
    try:
        await _Step(serve(), span)
    finally:
        _open.pop(request_id, None)
        span.close()


async def engine_generate(
    agen: AsyncGenerator[Any, None],
    request: Mapping[str, Any],
    ctx: Context,
    *,
    raw: bool,
    role: str,
) -> AsyncGenerator[Any, None]:
    """``agen``'s chunks, unchanged, inside an ``engine.generate`` span."""
    parent = _open.get(ctx.id())
    # Stock's span fields are strings (the records list them sorted by name).
    fields = {k: str(v) for k, v in telemetry.entry_attributes(request, ctx, raw, role).items()}
    if parent is not None:
        fields["parent_id"] = parent["span_id"]
        fields["trace_id"] = parent["trace_id"]
        if "x_request_id" in parent:
            fields["x_request_id"] = parent["x_request_id"]
    else:
        trace_id, parent_id, _ = _trace_parts(ctx)
        if parent_id is not None:
            fields["parent_id"] = parent_id
        fields["trace_id"] = trace_id or _hex_id(128)
    fields["span_id"] = _hex_id(64)
    fields["span_name"] = "engine.generate"
    span = _Span(fields)
    span.enter()
    completed = False
    try:
        while True:
            try:
                chunk = await _Step(agen.__anext__(), span)
            except StopAsyncIteration:
                completed = completed or raw
                break
            except Exception:
                completed = True
                raise
            # A terminal chunk that arrives after a cancellation is not delivered
            # (the endpoint has ended the stream): the stream was still dropped.
            if (
                not completed
                and type(chunk) is dict
                and chunk.get("finish_reason") is not None
                and not ctx.is_stopped()
            ):
                completed = True
            yield chunk
    finally:
        if not completed:
            fields["cancelled"] = "true"
            fields["finish_reason"] = "Dropped"
        try:
            await _Step(agen.aclose(), span)
        finally:
            span.close()
