"""The worker's TCP request-plane server.

One listener serves every endpoint of the process; frames name their
endpoint by path. For each frame the server asks the endpoint to *admit* it
synchronously, inside ``data_received``, and writes the reply at once: the
ack must reach the frontend within ``DYN_TCP_REQUEST_TIMEOUT`` (5 s) and in
frame order, so nothing that can block runs before it. The request itself
then runs as a task owned by the endpoint.

Ownership: :meth:`RequestPlaneServer.start` binds the listener (asyncio owns
the per-connection protocols, which hold no tasks); :meth:`~RequestPlaneServer.sweep`
is the one background loop, run by the worker as a service in its task group;
:meth:`~RequestPlaneServer.close` closes the listener and every connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Protocol, cast

import anyio
import anyio.abc

from ..protocol import request_plane as rp
from ..protocol.errors import FrameTooLarge, ProtocolError

logger = logging.getLogger(__name__)


class Submitter(Protocol):
    """What a request plane admits through (the endpoint), whatever the plane."""

    def submit(self, payload: bytes, headers: dict[str, str]) -> str | None:
        """Accept the request (None; its task is running) or say why not."""
        ...


def admit(submitter: Submitter, frame: rp.RequestFrame) -> bytes:
    """The TCP plane's reply to one frame: the ack, or the rejection, framed."""
    try:
        headers = frame.headers()
    except ProtocolError:
        headers = {}
    rejection = submitter.submit(frame.payload, headers)
    return rp.ACK if rejection is None else rp.encode_reply(rejection)


class _Connection(asyncio.Protocol):
    __slots__ = ("_decoder", "_server", "_transport", "last_activity", "partial_since")

    def __init__(self, server: RequestPlaneServer) -> None:
        self._server = server
        self._decoder = rp.RequestFrameDecoder(server.max_message_size)
        self._transport: asyncio.Transport | None = None
        self.last_activity = time.monotonic()
        #: When the current incomplete frame started arriving (slow-loris bound).
        self.partial_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if len(self._server.connections) >= self._server.max_connections:
            logger.warning(
                "request plane: %d connections open; refusing another",
                len(self._server.connections),
            )
            transport.abort()
            return
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            frames = self._decoder.feed(data)
        except FrameTooLarge as exc:
            logger.warning("request frame too large (%d > %d bytes); closing", exc.size, exc.limit)
            transport.write(rp.too_large_reply(exc.size, exc.limit))
            transport.close()
            return
        now = time.monotonic()
        self.last_activity = now
        if self._decoder.buffered:
            if self.partial_since is None or frames:
                self.partial_since = now
        else:
            self.partial_since = None
        if not frames:
            return
        admit = self._server.admit
        if len(frames) == 1:
            transport.write(admit(frames[0]))
        else:
            transport.write(b"".join(admit(f) for f in frames))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def bind_ip_literal(host: str, port: int) -> socket.socket | None:
    """A socket bound to ``host:port`` when ``host`` is a concrete IP address.

    ``loop.create_server(host, …)`` resolves even a literal: uvloop through
    libuv's thread pool (four threads that stay) and the ``idna`` codec, which
    costs ≈ 0.6 MiB of an idle worker. A literal needs no lookup, so it is
    bound here as ``create_server`` would (``SO_REUSEADDR``; ``IPV6_V6ONLY``
    for IPv6). Names and wildcards (None otherwise) keep the resolving path.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        if packed == bytes(len(packed)):
            return None  # 0.0.0.0 / ::, left to create_server
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock
    return None


class RequestPlaneServer:
    """Listener for request frames; bounds every connection it accepts.

    A frame that starts arriving must complete within ``frame_timeout``
    (slow-loris peers are dropped), a connection idle for ``idle_timeout``
    is closed (longer than the frontend's 300 s pool idle TTL, so healthy
    pooled connections are never cut), and at most ``max_connections`` are
    open at once.
    """

    def __init__(
        self,
        host: str,
        port: int = 0,
        *,
        max_message_size: int = rp.DEFAULT_MAX_MESSAGE_SIZE,
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout: float = 3.0,
        frame_timeout: float = 30.0,
        idle_timeout: float = 900.0,
        max_connections: int = 4096,
    ) -> None:
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.host = host
        self.port = port
        self.max_message_size = max_message_size
        self.endpoints: dict[str, Submitter] = {}
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    def admit(self, frame: rp.RequestFrame) -> bytes:
        endpoint = self.endpoints.get(frame.path)
        if endpoint is None:
            return rp.unknown_endpoint_reply(frame.path)
        return admit(endpoint, frame)

    async def start(self, bind_host: str | None = None) -> int:
        """Bind the listener; returns the port."""
        loop = asyncio.get_running_loop()
        host = bind_host or self.host
        handshake_timeout = self.ssl_handshake_timeout if self.ssl_context else None
        sock = bind_ip_literal(host, self.port)
        if sock is None:
            self._server = await loop.create_server(
                lambda: _Connection(self),
                host,
                self.port,
                backlog=1024,
                ssl=self.ssl_context,
                ssl_handshake_timeout=handshake_timeout,
            )
        else:
            try:
                self._server = await loop.create_server(
                    lambda: _Connection(self),
                    sock=sock,
                    backlog=1024,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=handshake_timeout,
                )
            except BaseException:
                sock.close()
                raise
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self.port

    async def sweep(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Close connections that trickle a frame too slowly or sit idle too long.

        Runs until cancelled.
        """
        interval = max(0.05, min(1.0, self.frame_timeout / 4, self.idle_timeout / 4))
        task_status.started()
        while True:
            await anyio.sleep(interval)
            self.sweep_once(time.monotonic())

    def sweep_once(self, now: float) -> None:
        """One pass of :meth:`sweep` at monotonic time ``now``."""
        for conn in list(self.connections):
            partial = conn.partial_since
            if partial is not None and now - partial > self.frame_timeout:
                logger.warning(
                    "request plane: frame incomplete after %.0fs; closing", self.frame_timeout
                )
                conn.abort()
            elif now - conn.last_activity > self.idle_timeout:
                logger.debug(
                    "request plane: closing a connection idle for %.0fs", self.idle_timeout
                )
                conn.close()

    async def close(self) -> None:
        """Close the listener and every connection (bounded, shielded)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.close()
        if server is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0) as scope:
                await server.wait_closed()
            if scope.cancelled_caught:
                logger.debug("request-plane server close timed out")
