"""A ZMQ PUB socket in pure Python (asyncio + :mod:`dynamo_lite.protocol.zmtp`).

The stock worker's event plane binds one PUB socket per topic and advertises
``tcp://HOST:PORT`` in its ``v1/event_channels`` record; the frontend's SUB
socket connects and subscribes to the topic (verified in
``tests/vectors/kv/``). This server accepts any number of subscribers and
sends each message to those whose subscriptions prefix-match the first frame.

PUB semantics: a subscriber that cannot keep up loses messages (libzmq's
high-water mark), it never slows the publisher. Here a connection whose
kernel-side write buffer holds more than ``high_water`` bytes is skipped for
that message and the drop is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from ..protocol import zmtp
from ..protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

__all__ = ["ZmqPubServer"]

DEFAULT_HIGH_WATER = 8 << 20
#: A subscriber must finish its handshake within this long.
HANDSHAKE_TIMEOUT = 10.0


class _Subscriber(asyncio.Protocol):
    def __init__(self, server: ZmqPubServer) -> None:
        self.server = server
        self.conn = zmtp.ZmtpConnection(b"PUB", max_message=1 << 16)
        self.transport: asyncio.Transport | None = None
        self.topics: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self.server.subscribers.add(self)
        self.transport.write(self.conn.start())
        self._timer = asyncio.get_running_loop().call_later(
            HANDSHAKE_TIMEOUT, self._handshake_expired
        )

    def _handshake_expired(self) -> None:
        if not self.conn.ready and self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.feed(data)
        except ProtocolError as exc:
            logger.debug("dropping ZMQ subscriber: %s", exc)
            if self.transport is not None:
                self.transport.abort()
            return
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)
        for ev in events:
            if isinstance(ev, zmtp.Subscribe):
                self.topics.append(ev.topic)
            elif isinstance(ev, zmtp.Cancel):
                with contextlib.suppress(ValueError):
                    self.topics.remove(ev.topic)
            elif isinstance(ev, zmtp.Ready) and self._timer is not None:
                self._timer.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.server.subscribers.discard(self)
        self.transport = None

    def wants(self, topic: bytes) -> bool:
        return self.conn.ready and any(topic.startswith(t) for t in self.topics)


class ZmqPubServer:
    """One bound PUB socket; :meth:`send` is non-blocking."""

    def __init__(self, host: str, port: int = 0, *, high_water: int = DEFAULT_HIGH_WATER) -> None:
        self.host = host
        self.port = port
        self.high_water = high_water
        self.subscribers: set[_Subscriber] = set()
        self.sent = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Subscriber(self), self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def send(self, parts: list[bytes]) -> int:
        """Send one message to every matching subscriber; returns how many got it."""
        topic = parts[0]
        wire: bytes | None = None
        delivered = 0
        for sub in self.subscribers:
            t = sub.transport
            if t is None or not sub.wants(topic):
                continue
            if t.get_write_buffer_size() > self.high_water:
                self.dropped += 1
                continue
            if wire is None:
                wire = zmtp.encode_message(parts)
            t.write(wire)
            delivered += 1
        self.sent += 1
        return delivered

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for sub in list(self.subscribers):
            if sub.transport is not None:
                sub.transport.close()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
