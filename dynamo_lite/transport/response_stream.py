"""The call-home connection: one TCP connection per request, worker → frontend.

:class:`ResponseSender` is the worker's end: it writes the response frames
(the client that reads them is :class:`dynamo_lite.client.ResponseStream`).
The worker dials the address in the request's control message, sends the
handshake and prologue, then one data-only frame per item, then
``complete_final`` and the sentinel, and waits for the frontend to close
(it closes with FIN+RST, leaving no TIME_WAIT behind on either side).

The frontend may write ``"kill"`` or ``"stop"`` on this connection at any
time, or simply vanish; either cancels the request. After a cancellation
nothing more is written.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ..protocol import control, twopart
from ..protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

CancelCallback = Callable[[str], None]
#: Dials ``(protocol_factory, host, port, ssl_context)`` → ``(transport, protocol)``;
#: the default is ``loop.create_connection``, tests pass an in-memory one.
Connector = Callable[
    [Callable[[], asyncio.Protocol], str, int, ssl.SSLContext | None],
    Awaitable[tuple[Any, Any]],
]


class ResponseSender(asyncio.Protocol):
    """The worker end of one response stream: writes its frames, hears kill/stop and the close."""

    __slots__ = (
        "_closed",
        "_decoder",
        "_drain_waiter",
        "_on_cancel",
        "_paused",
        "_transport",
        "finished",
    )

    def __init__(self, on_cancel: CancelCallback) -> None:
        self._on_cancel = on_cancel
        self._transport: asyncio.Transport | None = None
        self._decoder = twopart.TwoPartDecoder(1 << 20)
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Set once the sentinel is written: a close after that is the normal end.
        self.finished = False

    # --- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            logger.debug("garbage on response stream: %s", exc)
            self._cancel("protocol-error")
            self.abort()
            return
        for msg in messages:
            if msg.body or not msg.header:
                continue
            try:
                frame = control.parse_header_frame(msg.header)
            except ProtocolError:
                continue
            if frame is control.StreamControl.KILL:
                self._cancel("kill")
            elif frame is control.StreamControl.STOP:
                self._cancel("stop")

    def eof_received(self) -> bool:
        self._cancel("disconnect")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._cancel("disconnect")
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake_writer()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    # --- worker side ---------------------------------------------------------
    def _cancel(self, signal: str) -> None:
        if not self.finished:
            self.finished = True
            self._on_cancel(signal)

    def _wake_writer(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.finished

    @property
    def needs_drain(self) -> bool:
        return self._paused

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not self.finished:
            transport.write(data)

    def write_final(self, data: bytes) -> None:
        """Write the last bytes of a completed stream; later closes are normal."""
        transport = self._transport
        if transport is not None and not self.finished:
            self.finished = True
            transport.write(data)

    async def drain(self) -> None:
        if self._paused and self._transport is not None:
            if self._drain_waiter is None:
                self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    async def wait_closed(self, timeout: float) -> None:
        """Wait for the frontend to close, then make sure the socket is closed."""
        closed = self._closed
        if self._transport is not None and not closed.done() and timeout > 0:
            # A timer that resolves the same future: cheaper per request than
            # wait_for(shield(...)), which wraps the future in a task.
            timer = asyncio.get_running_loop().call_later(timeout, _resolve, closed)
            try:
                await closed
            finally:
                timer.cancel()
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def open_stream(
    address: tuple[str, int],
    subject: str,
    on_cancel: CancelCallback,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    connect: Connector | None = None,
) -> ResponseSender:
    """Dial the frontend and send the handshake and the OK prologue."""
    host, port = address
    async with asyncio.timeout(timeout):
        if connect is None:
            _transport, stream = await asyncio.get_running_loop().create_connection(
                lambda: ResponseSender(on_cancel),
                host,
                port,
                ssl=ssl_context,
                server_hostname=host if ssl_context is not None else None,
            )
        else:
            _transport, stream = await connect(
                lambda: ResponseSender(on_cancel), host, port, ssl_context
            )
    stream.write(control.handshake_frame(subject) + control.PROLOGUE_OK_FRAME)
    return stream
