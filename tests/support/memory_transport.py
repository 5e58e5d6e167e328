"""In-memory transports: drive asyncio protocols and anyio byte streams without sockets.

Modelled on httpcore's mock backend: the code under test gets an object with
the interface it expects (an ``asyncio.Transport`` for a protocol, an anyio
``ByteStream`` for a stream handler), and the test holds the other end.

asyncio side (theory of operation)::

    protocol ──write()──▶ MemoryTransport ──▶ peer.received   (peer reading)
                                         └──▶ buffer           (peer stalled)
    peer.send(b) ──▶ protocol.data_received(b)
    peer.send_eof() ──▶ protocol.eof_received() (falsy → transport closes)
    close()/abort()/peer.disconnect() ──▶ protocol.connection_lost() once, next loop turn

Flow control follows asyncio's: when the unread buffer goes above
``high_water`` the transport calls ``protocol.pause_writing()``; once the peer
reads it down to ``low_water`` or below, ``resume_writing()``. A peer that
calls :meth:`Peer.stall` stops reading (a slow or stalled frontend);
:meth:`Peer.resume` reads what was buffered and reads on.

:func:`memory_connector` stands in for ``loop.create_connection``: each dial
makes a transport, connects the protocol and hands the test its :class:`Peer`.

anyio side: :func:`byte_stream_pair` returns a server-side stream (what a
listener would hand a handler) and the client-side stream the test talks on.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream


class MemoryTransport(asyncio.Transport):
    """The protocol's end of an in-memory connection."""

    def __init__(
        self,
        protocol: asyncio.Protocol,
        *,
        high_water: int = 64 * 1024,
        low_water: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._protocol = protocol
        self.high_water = high_water
        self.low_water = high_water // 4 if low_water is None else low_water
        self.peer = Peer(self)
        #: Written but not yet read by a stalled peer.
        self.buffer = bytearray()
        self.paused = False
        self.closing = False
        self.aborted = False
        self.lost = False
        self.eof_written = False
        self.writes = 0

    # --- asyncio.Transport --------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            return  # asyncio drops (and warns about) writes after close
        self.writes += 1
        if self.peer.reading:
            self.peer.received += data
        else:
            self.buffer += data
            if not self.paused and len(self.buffer) > self.high_water:
                self.paused = True
                self._protocol.pause_writing()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """Graceful close: a reading peer gets what was buffered first."""
        if self.closing:
            return
        self.closing = True
        if self.peer.reading:
            self.peer.received += self.buffer
            self.buffer.clear()
        self._lose_soon(None)

    def abort(self) -> None:
        if self.closing and self.aborted:
            return
        self.aborted = True
        self.buffer.clear()
        if not self.closing:
            self.closing = True
            self._lose_soon(None)

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self.low_water, self.high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.high_water = high
        if low is not None:
            self.low_water = low

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def is_reading(self) -> bool:
        return not self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    # --- internals ----------------------------------------------------------
    def _lose_soon(self, exc: Exception | None) -> None:
        # asyncio calls connection_lost on a later loop turn, never inside close().
        asyncio.get_running_loop().call_soon(self._lose, exc)

    def _lose(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.peer.closed.set()
        self._protocol.connection_lost(exc)

    def _drained(self) -> None:
        if self.paused and len(self.buffer) <= self.low_water:
            self.paused = False
            if not self.lost:
                self._protocol.resume_writing()


class Peer:
    """The test's end: what the protocol wrote, and what the test sends it."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.received = bytearray()
        self.reading = True
        self.closed = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def protocol(self) -> asyncio.Protocol:
        protocol = self.transport.get_protocol()
        assert isinstance(protocol, asyncio.Protocol)
        return protocol

    def send(self, data: bytes) -> None:
        """Deliver bytes to the protocol, as one ``data_received`` call."""
        assert not self.transport.lost, "connection already lost"
        self.protocol.data_received(data)

    def send_eof(self) -> None:
        """Half-close from the peer; the transport closes unless the protocol keeps it."""
        if not self.protocol.eof_received():
            self.transport.close()

    def disconnect(self, exc: Exception | None = None) -> None:
        """The peer vanished (RST): connection_lost on the next loop turn."""
        self.transport.closing = True
        self.transport._lose_soon(exc)

    def stall(self) -> None:
        """Stop reading: further writes pile up and eventually pause the writer."""
        self.reading = False

    def resume(self) -> None:
        """Read everything buffered and keep reading."""
        self.reading = True
        self.read_buffered()

    def read_buffered(self, n: int | None = None) -> bytes:
        """Read up to ``n`` buffered bytes (all by default); may resume the writer."""
        buf = self.transport.buffer
        n = len(buf) if n is None else min(n, len(buf))
        chunk = bytes(buf[:n])
        del buf[:n]
        self.received += chunk
        self.transport._drained()
        return chunk

    def take(self) -> bytes:
        """Everything received so far, clearing it."""
        out = bytes(self.received)
        self.received.clear()
        return out

    async def wait_closed(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()


def connect(
    protocol: asyncio.Protocol, *, high_water: int = 64 * 1024, low_water: int | None = None
) -> Peer:
    """Attach ``protocol`` to a fresh in-memory transport (``connection_made`` runs now)."""
    transport = MemoryTransport(protocol, high_water=high_water, low_water=low_water)
    protocol.connection_made(transport)
    return transport.peer


class MemoryConnector:
    """A ``loop.create_connection`` stand-in that records every dial.

    ``await connector.next_peer()`` returns the peer of the next connection
    made; ``refuse`` makes dials fail with ``ConnectionRefusedError``;
    ``stalled`` makes new peers start without reading (before the first write).
    """

    def __init__(self, *, high_water: int = 64 * 1024) -> None:
        self.high_water = high_water
        self.peers: list[Peer] = []
        self.dialled: list[tuple[str, int, ssl.SSLContext | None]] = []
        self.refuse = False
        self.stalled = False
        self._new: asyncio.Queue[Peer] = asyncio.Queue()

    async def __call__(
        self,
        factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> tuple[asyncio.Transport, Any]:
        self.dialled.append((host, port, ssl_context))
        if self.refuse:
            raise ConnectionRefusedError(f"refused {host}:{port}")
        protocol = factory()
        transport = MemoryTransport(protocol, high_water=self.high_water)
        peer = transport.peer
        peer.reading = not self.stalled
        protocol.connection_made(transport)
        self.peers.append(peer)
        self._new.put_nowait(peer)
        return peer.transport, protocol

    async def next_peer(self, timeout: float = 5.0) -> Peer:
        async with asyncio.timeout(timeout):
            return await self._new.get()


# --- anyio byte streams ------------------------------------------------------


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory anyio byte stream pair."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._pending = b""
        self.closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            # EndOfStream once the other end sent EOF or closed.
            self._pending = await self._receive.receive()
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        await self._send.send(bytes(item))

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        self.closed = True
        await self._send.aclose()
        await self._receive.aclose()

    async def read_until_closed(self) -> bytes:
        out = bytearray()
        while True:
            try:
                out += await self.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return bytes(out)


def byte_stream_pair(buffer: int = 64) -> tuple[MemoryByteStream, MemoryByteStream]:
    """(server end, client end) of a connected in-memory byte stream."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](buffer)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)
