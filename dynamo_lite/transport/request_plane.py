"""The worker's TCP request-plane server.

One listener serves every endpoint of the process; frames name their
endpoint by path. For each frame the server asks the endpoint to *admit* it
synchronously, inside ``data_received``, and writes the reply at once: the
ack must reach the frontend within ``DYN_TCP_REQUEST_TIMEOUT`` (5 s) and in
frame order, so nothing that can block runs before it. The request itself
then runs as a task owned by the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Protocol

from ..protocol import request_plane as rp
from ..protocol.errors import FrameTooLarge

logger = logging.getLogger(__name__)


class Admitter(Protocol):
    def admit(self, frame: rp.RequestFrame) -> bytes:
        """Decide at once: return the reply bytes (ack or rejection)."""
        ...


class _Connection(asyncio.Protocol):
    __slots__ = ("_decoder", "_server", "_transport")

    def __init__(self, server: RequestPlaneServer) -> None:
        self._server = server
        self._decoder = rp.RequestFrameDecoder(server.max_message_size)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
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


class RequestPlaneServer:
    def __init__(
        self,
        host: str,
        port: int = 0,
        *,
        max_message_size: int = rp.DEFAULT_MAX_MESSAGE_SIZE,
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout: float = 3.0,
    ) -> None:
        self.ssl_context = ssl_context
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.host = host
        self.port = port
        self.max_message_size = max_message_size
        self.endpoints: dict[str, Admitter] = {}
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        #: Reply for frames arriving when no endpoint is open (during teardown).
        self.closed_reply: Callable[[str], bytes] = rp.unknown_endpoint_reply

    def admit(self, frame: rp.RequestFrame) -> bytes:
        endpoint = self.endpoints.get(frame.path)
        if endpoint is None:
            return self.closed_reply(frame.path)
        return endpoint.admit(frame)

    async def start(self, bind_host: str | None = None) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            bind_host or self.host,
            self.port,
            backlog=1024,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.ssl_handshake_timeout if self.ssl_context else None,
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self.port

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.close()
        if server is not None:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                logger.debug("request-plane server close timed out")
