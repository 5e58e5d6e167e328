"""One served endpoint: admits requests and drives the engine per request.

Per request (theory of operation)::

    submit(payload)     sync, in the plane's callback: decide the answer
      ├─ not accepting   → "Server unavailable: …"   (frontend: 503 at once)
      ├─ at capacity     → "Server overloaded: …"    (frontend: 529)
      ├─ bad envelope    → "Server unavailable: malformed request …"
      └─ ok              → None (the plane acks), and a request task is spawned
    request task
      ├─ dial the frontend, handshake + prologue {"error":null}
      ├─ decode the body (garbage → InvalidArgument error item)
      ├─ pump: engine.generate() → StreamValidator → one item per chunk
      ├─ complete_final + sentinel, then wait for the frontend to close
      └─ on kill/stop/disconnect: context stopped+killed, the stream closed
         at once (nothing more written), engine.abort() once (on decode
         workers only after the first token), the generator closed at its
         next yield (or cancelled if it does not yield within KILL_GRACE);
         the engine's own stop_generating() ends the stream the same way,
         without the kill (see :mod:`dynamo_lite.cancellation`)

The kill grace is a cancel scope around the pump, ``asyncio.timeout(None)``
rescheduled to ``now + KILL_GRACE`` by the cancellation: the stdlib's scope,
because engine code is plain asyncio and expects one, edge-triggered
CancelledError (anyio's scopes re-deliver it), and because it is cheaper on
this per-request path. Request and abort tasks live in task sets (:class:`TaskSet`)
owned by the endpoint; the worker joins and cancels them in teardown.

Shutdown uses :meth:`Endpoint.cut`: streams still open end with an explicit
error item (never a bare end) before their tasks are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from . import telemetry
from .admission import EngineGate
from .cancellation import AbortGate, log_cancellation
from .context import Context
from .engine import BaseEngine
from .errors import EngineShutdown, InvalidArgument, WireError, classify
from .protocol import codec as wire_codec
from .protocol import control, items, twopart
from .protocol import request_plane as rp
from .protocol.codec import Codec
from .protocol.errors import ProtocolError
from .stats import EndpointStats
from .stream import RawStreamValidator, StreamValidator
from .tasks import TaskSet
from .transport.response_stream import Connector, ResponseSender, open_stream

logger = logging.getLogger(__name__)

#: How long an engine gets after a kill to reach its next yield before the
#: request task is cancelled (stock closes such a generator after ~0.1 s).
KILL_GRACE = 0.1
#: After the sentinel, how long to wait for the frontend to close (stock: 10 s).
CLOSE_WAIT = 10.0
#: How long a generator may run on after its terminal chunk before it is closed.
AFTER_TERMINAL = 0.05


def _closing_frames(codec: Codec, error: WireError | None) -> bytes:
    """The end of a stream: an optional error item, ``complete_final``, the sentinel."""
    end = items.COMPLETE_FINAL_FRAME[codec] + control.SENTINEL_FRAME
    return end if error is None else items.error_frame(codec, error.to_wire()) + end


class _Request:
    """Book-keeping for one in-flight request."""

    __slots__ = (
        "abort_task",
        "codec",
        "ctx",
        "cut_reason",
        "gate",
        "grace",
        "signal",
        "stream",
        "task",
        "validator",
    )

    def __init__(self, ctx: Context, codec: Codec, gate: AbortGate) -> None:
        self.ctx = ctx
        self.codec = codec
        self.gate = gate
        self.stream: ResponseSender | None = None
        self.signal: str | None = None
        self.abort_task: asyncio.Task[None] | None = None
        #: The kill-grace scope around the pump (see the module docstring).
        self.grace: asyncio.Timeout | None = None
        self.cut_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        #: Set when the engine's stream starts; its chunk count is what the stall detector reads.
        self.validator: StreamValidator | None = None

    # --- RequestProgress (what the stall detector reads) ----------------------
    @property
    def cancelled(self) -> bool:
        return self.signal is not None or self.cut_reason is not None

    @property
    def terminal(self) -> bool:
        return self.validator is not None and self.validator.terminal

    @property
    def chunks(self) -> int:
        return -1 if self.validator is None else self.validator.chunks


class Endpoint:
    def __init__(
        self,
        engine: BaseEngine,
        name: str,
        *,
        raw: bool = False,
        max_inflight: int = 10_000,
    ) -> None:
        self.engine = engine
        self.name = name
        self.raw = raw
        self.max_inflight = max_inflight
        #: ``DYN_ENGINE_REQUEST_LIMIT``: requests beyond it wait (:mod:`dynamo_lite.admission`).
        self.engine_gate = EngineGate()
        #: ``DYN_LITE_STREAM_DEBUG`` (the worker sets it); None: the process's.
        self.stream_debug: bool | None = None
        self.accepting = False
        self.stats = EndpointStats()
        self.requests: dict[str, _Request] = {}
        self.tasks = TaskSet(f"endpoint {name}")
        self._aborts = TaskSet(f"endpoint {name} abort")
        self.unavailable_detail = "worker is not serving"
        #: ``agg``/``prefill``/``decode``/``encode``: the ``disagg_role`` of trace spans.
        self.disagg_role = "agg"
        #: TLS for call-home connections (``DYN_TCP_TLS_CA_CERT_PATH`` & co).
        self.call_home_ssl: ssl.SSLContext | None = None
        #: A frontend that stops reading for this long is treated as gone.
        self.write_stall_timeout = 60.0
        #: Told each request's id once its first output is written (KV routing's
        #: ``active_sequences_events``); None costs one test per chunk.
        self.on_first_output: Callable[[str], None] | None = None
        #: How call-home connections are dialled (None: ``loop.create_connection``).
        self.connect: Connector | None = None
        #: ``namespace``/``component``/``endpoint``/``instance_id`` of the
        #: ``handle_payload`` span records (:mod:`dynamo_lite.spanlog`).
        self.span_identity: dict[str, str] = {"endpoint": name}

    # --- admission (runs inside the socket callback) -------------------------
    def submit(self, payload: bytes, headers: dict[str, str]) -> str | None:
        """Admit one request payload from any request plane (each encodes the answer).

        Returns None when the request was accepted (its task is running), or
        the rejection text (``Server overloaded: …`` / ``Server unavailable: …``).
        """
        if not self.accepting:
            self.stats.rejected += 1
            return rp.UNAVAILABLE_PREFIX + self.unavailable_detail
        if len(self.requests) >= self.max_inflight:
            self.stats.rejected += 1
            self.stats.overloaded += 1
            return rp.OVERLOADED_PREFIX + "worker at capacity"
        try:
            message = twopart.decode(payload)
            ctl = control.parse_request_control(message.header)
            codec = wire_codec.check_codec(ctl.payload_codec)
            if ctl.transport != control.TCP_TRANSPORT:
                return (
                    rp.UNAVAILABLE_PREFIX
                    + f"unsupported response transport {ctl.transport!r} (only tcp_server)"
                )
            address = ctl.info.host_port()
        except ProtocolError as exc:
            logger.warning("rejecting malformed request: %s", exc)
            self.stats.rejected += 1
            return rp.UNAVAILABLE_PREFIX + f"malformed request: {exc}"
        if not self.engine_gate.admit():  # DYN_ENGINE_REQUEST_LIMIT and its queue both full
            self.stats.rejected += 1
            self.stats.overloaded += 1
            return rp.OVERLOADED_PREFIX + "worker at capacity"
        sent_ns = headers.get("x-frontend-send-ts-ns")
        if sent_ns:
            with contextlib.suppress(ValueError):
                self.stats.transit.observe(max(0, time.time_ns() - int(sent_ns)) / 1e9)
        ctx = Context(ctl.id, ctl.metadata, trace_headers=headers)
        req = _Request(ctx, codec, AbortGate(lambda: self._spawn_abort(req), defer=self._defer))
        if self._defer:
            ctx._first_token_hook = req.gate.first_token
        self.requests[ctl.id] = req
        self.stats.requests += 1
        self.stats.request_bytes += len(payload)
        if telemetry.span_events:
            from . import spanlog  # loaded with the switch, by configure_logging

            serve = spanlog.handle_payload(
                lambda: self._serve(req, address, ctl.info.subject, message.body),
                ctx,
                self.span_identity,
            )
        else:
            serve = self._serve(req, address, ctl.info.subject, message.body)
        req.task = self.tasks.spawn(serve, name=f"request-{ctl.id}")
        return None

    # --- per request ---------------------------------------------------------
    @property
    def _defer(self) -> bool:
        """Decode workers defer ``abort()`` until the first token."""
        return self.disagg_role == "decode"

    def _spawn_abort(self, req: _Request) -> None:
        req.abort_task = self._aborts.spawn(self._abort(req.ctx), name=f"abort-{req.ctx.id()}")

    def _end_stream_now(self, req: _Request) -> None:
        """A cancelled stream ends at once: nothing more is written, the socket closes."""
        stream = req.stream
        if stream is not None:
            stream.finished = True
            stream.close()

    def _on_context_stop(self, req: _Request) -> None:
        """The engine stopped its own context (``stop_generating()``) mid-stream."""
        ctx = req.ctx
        if not ctx.is_stopped() or req.signal is not None or req.cut_reason is not None:
            return  # the request ended, or its cancellation is handled already
        stream = req.stream
        if stream is None or stream.finished:
            return
        req.signal = "stopped"
        req.gate.request()
        self._end_stream_now(req)

    def _on_cancel(self, req: _Request, signal: str) -> None:
        """The frontend sent kill/stop or went away before the stream ended."""
        if req.signal is not None:
            return
        req.signal = signal
        self.stats.cancelled += 1
        log_cancellation(req.ctx.id(), signal)
        req.ctx.kill()
        req.gate.request()
        self._end_stream_now(req)
        grace = req.grace
        if grace is not None and not grace.expired():
            grace.reschedule(asyncio.get_running_loop().time() + KILL_GRACE)

    async def _abort(self, ctx: Context) -> None:
        self.stats.aborts += 1
        try:
            await self.engine.abort(ctx)
        except Exception as exc:
            logger.warning("engine.abort raised; ignoring: %r", exc)

    async def _serve(
        self, req: _Request, address: tuple[str, int], subject: str, body: bytes
    ) -> None:
        started = time.monotonic()
        gate = self.engine_gate
        if not gate.try_enter():  # at once unless DYN_ENGINE_REQUEST_LIMIT is reached
            try:
                await gate.enter()
            except BaseException:
                req.ctx._end()
                self.requests.pop(req.ctx.id(), None)
                raise
        self.stats.inflight += 1
        try:
            try:
                req.stream = await open_stream(
                    address,
                    subject,
                    lambda signal: self._on_cancel(req, signal),
                    ssl_context=self.call_home_ssl,
                    connect=self.connect,
                )
            except (OSError, TimeoutError) as exc:
                logger.warning("cannot call home to %s:%d: %s", *address, exc)
                return
            self.stats.first_response.observe(time.monotonic() - started)
            grace = req.grace = asyncio.timeout(None)
            try:
                async with grace:
                    await self._pump(req, body)
            except TimeoutError:
                if not grace.expired():
                    raise
                # Killed, and the engine did not reach its next yield in time.
            finally:
                req.grace = None
            await req.stream.wait_closed(CLOSE_WAIT if req.signal is None else 0)
        finally:
            req.gate.close()
            if req.stream is not None:
                req.stream.close()
            req.ctx._end()
            self.requests.pop(req.ctx.id(), None)
            self.stats.inflight -= 1
            gate.leave()
            self.stats.duration.observe(time.monotonic() - started)

    def _end(self, req: _Request, error: WireError | None) -> None:
        stream = req.stream
        assert stream is not None
        if error is not None:
            self.stats.errors += 1
        else:
            self.stats.completed += 1
        stream.write_final(_closing_frames(req.codec, error))

    async def _pump(self, req: _Request, body: bytes) -> None:
        stream = req.stream
        assert stream is not None
        codec = req.codec
        ctx = req.ctx
        try:
            request = wire_codec.decode(codec, body)
            if not isinstance(request, dict):
                raise InvalidArgument("request body is not a map")
            if not self.raw:
                request["token_ids"] = wire_codec.token_ids_from_wire(request.get("token_ids"))
        except (ProtocolError, InvalidArgument) as exc:
            self._end(
                req,
                WireError(
                    "InvalidArgument",
                    f"malformed request body: {exc}",
                    f"malformed request body: {exc}",
                ),
            )
            return
        try:
            agen: AsyncGenerator[Any, None] = self.engine.generate(request, ctx)  # type: ignore[attr-defined]
        except Exception as exc:
            if telemetry.active():
                telemetry.generate_failed(request, ctx, exc, raw=self.raw, role=self.disagg_role)
            self._end(req, classify(exc))
            return
        if telemetry.active():
            agen = telemetry.traced(agen, request, ctx, raw=self.raw, role=self.disagg_role)
        if telemetry.span_events:
            from . import spanlog

            agen = spanlog.engine_generate(agen, request, ctx, raw=self.raw, role=self.disagg_role)
        ctx.add_done_callback(lambda _ctx: self._on_context_stop(req))
        validator = req.validator = (
            RawStreamValidator(self.stream_debug)
            if self.raw
            else StreamValidator(self.stream_debug)
        )
        output_frame = items.output_frame
        gate = req.gate
        first_output = self.on_first_output
        error: WireError | None = None
        try:
            async for chunk in agen:
                if gate.waiting and type(chunk) is dict and chunk.get("token_ids"):
                    gate.first_token()
                if req.signal is not None or req.cut_reason is not None:
                    break
                out = validator.accept(chunk)
                if type(out) is dict:
                    frame = output_frame(codec, out)
                    self.stats.response_bytes += len(frame)
                    stream.write(frame)
                    if first_output is not None:
                        first_output(ctx.id())
                        first_output = None
                    if stream.needs_drain:
                        await self._drain_or_give_up(req, stream)
                elif out is not None:
                    assert isinstance(out, WireError)
                    error = out
                if validator.terminal:
                    break
            else:
                error = validator.finish()
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            if req.signal is None:  # raised by the engine itself: stock answers Cancelled
                error = classify(exc)
        except (Exception, GeneratorExit) as exc:
            if req.signal is None:
                error = classify(exc)
                logger.debug(
                    "engine stream yielded typed error request_id=%s error=%s", ctx.id(), error
                )
        if req.signal is None and req.cut_reason is None:
            self._end(req, error)
        await self._close_generator(agen, validator)
        self.stats.dropped_chunks += validator.dropped

    async def _drain_or_give_up(self, req: _Request, stream: ResponseSender) -> None:
        try:
            async with asyncio.timeout(self.write_stall_timeout):
                await stream.drain()
        except TimeoutError:
            logger.warning(
                "request %s: frontend stopped reading for %.0fs; cancelling",
                req.ctx.id(),
                self.write_stall_timeout,
            )
            stream.abort()

    async def _close_generator(
        self, agen: AsyncGenerator[Any, None], validator: StreamValidator
    ) -> None:
        """Let a generator finish on its own (counting chunks after its terminal),
        briefly, then close it."""
        try:
            if validator.terminal and not validator.strict:
                async with asyncio.timeout(AFTER_TERMINAL):
                    async for extra in agen:
                        validator.accept(extra)
        except (TimeoutError, Exception):
            pass
        with contextlib.suppress(Exception):
            await agen.aclose()

    # --- shutdown ------------------------------------------------------------
    def cut(self, reason: str) -> int:
        """End every open stream now with an explicit error item; returns how many."""
        count = 0
        error = classify(EngineShutdown(reason))
        for req in list(self.requests.values()):
            if req.cut_reason is not None or req.signal is not None:
                continue
            req.cut_reason = reason
            # Engines polling is_stopped() end their generation promptly.
            req.ctx.kill()
            stream = req.stream
            if stream is not None and stream.is_open:
                count += 1
                stream.write_final(_closing_frames(req.codec, error))
        self.stats.cut += count
        return count

    async def join(self, timeout: float | None) -> bool:
        return await self.tasks.join(timeout)

    async def close(self, timeout: float = 2.0) -> None:
        """Cancel what is left and wait (bounded) for request and abort tasks."""
        await self.tasks.cancel(timeout)
        await self._aborts.join(timeout)
        await self._aborts.cancel(timeout)
