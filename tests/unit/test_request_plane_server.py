"""dynamo_lite.transport.request_plane: framing, replies and the bounds on each connection.

The server is never started: each test attaches a connection protocol to an
in-memory transport and plays the frontend. The sweep's bounds are checked
by calling :meth:`RequestPlaneServer.sweep_once` with a chosen clock.
"""

from __future__ import annotations

import time

import pytest

from dynamo_lite.protocol import request_plane as rp
from dynamo_lite.transport.request_plane import RequestPlaneServer, _Connection
from tests.support.memory_transport import Peer, connect
from tests.support.wire import replies, vector

pytestmark = pytest.mark.anyio

HANG = 5.0
PATH = "390da20963411609/dynamo/sample/generate"  # the path in the stock captures
STOCK_FRAME = vector("stock_req_chat_stream.bin")


class Recorder:
    """An endpoint that accepts everything (or rejects with ``rejection``) and
    remembers what it was given."""

    def __init__(self, rejection: str | None = None) -> None:
        self.frames: list[tuple[bytes, dict[str, str]]] = []
        self.rejection = rejection

    def submit(self, payload: bytes, headers: dict[str, str]) -> str | None:
        self.frames.append((payload, headers))
        return self.rejection


def server(**kwargs: object) -> tuple[RequestPlaneServer, Recorder]:
    srv = RequestPlaneServer("127.0.0.1", **kwargs)  # type: ignore[arg-type]
    rec = Recorder()
    srv.endpoints[PATH] = rec
    return srv, rec


def open_conn(srv: RequestPlaneServer) -> tuple[_Connection, Peer]:
    conn = _Connection(srv)
    return conn, connect(conn)


async def test_one_stock_frame_gets_the_stock_ack() -> None:
    srv, rec = server()
    _, peer = open_conn(srv)
    peer.send(STOCK_FRAME)
    assert peer.take() == vector("stock_ack_ok.bin")
    # The server routed it by path to this endpoint, with the frame's headers.
    [(_payload, headers)] = rec.frames
    assert headers["request-id"].startswith("28bbb211")


async def test_frame_split_across_reads() -> None:
    srv, rec = server()
    conn, peer = open_conn(srv)
    for i in range(len(STOCK_FRAME) - 1):
        peer.send(STOCK_FRAME[i : i + 1])
        assert rec.frames == [] and peer.received == b""
        assert conn.partial_since is not None
    peer.send(STOCK_FRAME[-1:])
    assert len(rec.frames) == 1 and peer.take() == rp.ACK
    assert conn.partial_since is None


async def test_several_frames_in_one_read_get_replies_in_order() -> None:
    srv, rec = server()
    other = Recorder(rp.OVERLOADED_PREFIX + "busy")
    srv.endpoints["other"] = other
    second = rp.encode_frame("other", None, b"payload")
    _, peer = open_conn(srv)
    peer.send(STOCK_FRAME + second + STOCK_FRAME[:10])
    assert replies(peer.take()) == [b"", b"Server overloaded: busy"]
    peer.send(STOCK_FRAME[10:])
    assert peer.take() == rp.ACK
    assert len(rec.frames) == 2 and len(other.frames) == 1


async def test_unknown_endpoint_gets_the_stock_reply() -> None:
    srv, _ = server()
    _, peer = open_conn(srv)
    # The frame the stock worker was probed with: path "dynamo/nope/generate".
    expected = vector("stock_ack_unknown_endpoint.bin")
    [text] = replies(expected)
    path = text.decode().rsplit(" ", 1)[1]
    peer.send(rp.encode_frame(path, None, b"x"))
    assert peer.take() == expected


async def test_oversized_frame_gets_the_stock_reply_and_the_connection_closes() -> None:
    expected = vector("stock_reply_too_large.bin")
    [text] = replies(expected)
    # "Read error: message too large: N bytes (max: M bytes)"
    size, limit = (int(w) for w in text.decode().replace("(", " ").split() if w.isdigit())
    srv, rec = server(max_message_size=limit)
    _, peer = open_conn(srv)
    # Only the length prefix arrives: the frame is refused before its body.
    path = b"generate"
    payload_len = size - 8 - len(path)
    peer.send(len(path).to_bytes(2, "big") + path + b"\x00\x00" + payload_len.to_bytes(4, "big"))
    assert peer.take() == expected
    assert peer.transport.closing and rec.frames == []
    await peer.wait_closed(HANG)
    assert srv.connections == set()


async def test_frames_before_an_oversized_one_are_answered_first() -> None:
    srv, rec = server(max_message_size=len(STOCK_FRAME))
    _, peer = open_conn(srv)
    huge = rp.encode_frame(PATH, None, b"x" * len(STOCK_FRAME))
    peer.send(STOCK_FRAME + huge)
    assert peer.take() == rp.ACK and len(rec.frames) == 1
    peer.send(b"more")
    [text] = replies(peer.take())
    assert text.startswith(b"Read error: message too large")
    assert peer.transport.closing


async def test_connection_cap() -> None:
    srv, _ = server(max_connections=2)
    peers = [open_conn(srv)[1] for _ in range(3)]
    assert [p.transport.aborted for p in peers] == [False, False, True]
    assert len(srv.connections) == 2
    await peers[2].wait_closed(HANG)
    peers[0].disconnect()
    await peers[0].wait_closed(HANG)
    assert len(srv.connections) == 1
    assert not open_conn(srv)[1].transport.aborted


async def test_sweep_drops_a_slow_loris_frame() -> None:
    srv, _ = server(frame_timeout=30.0, idle_timeout=900.0)
    conn, peer = open_conn(srv)
    peer.send(STOCK_FRAME[:100])
    started = conn.partial_since
    assert started is not None
    srv.sweep_once(started + 29.0)
    assert not peer.transport.closing
    # More bytes of the same frame do not restart the clock.
    peer.send(STOCK_FRAME[100:200])
    assert conn.partial_since == started
    srv.sweep_once(started + 31.0)
    assert peer.transport.aborted
    await peer.wait_closed(HANG)
    assert srv.connections == set()


async def test_completed_frames_restart_the_frame_clock() -> None:
    srv, _ = server(frame_timeout=30.0)
    conn, peer = open_conn(srv)
    peer.send(STOCK_FRAME[:100])
    first = conn.partial_since
    assert first is not None
    peer.send(STOCK_FRAME[100:] + STOCK_FRAME[:100])  # one frame done, the next begun
    assert conn.partial_since is not None and conn.partial_since >= first


async def test_sweep_closes_idle_connections_only() -> None:
    srv, _ = server(frame_timeout=30.0, idle_timeout=900.0)
    idle, idle_peer = open_conn(srv)
    busy, busy_peer = open_conn(srv)
    now = time.monotonic()
    idle.last_activity = now - 901.0
    srv.sweep_once(now)
    assert idle_peer.transport.closing and not idle_peer.transport.aborted
    assert not busy_peer.transport.closing
    assert busy.last_activity <= now
    await idle_peer.wait_closed(HANG)
    assert srv.connections == {busy}


async def test_close_closes_every_connection() -> None:
    srv, _ = server()
    peers = [open_conn(srv)[1] for _ in range(3)]
    await srv.close()
    for p in peers:
        await p.wait_closed(HANG)
    assert srv.connections == set()


async def test_data_after_close_is_ignored() -> None:
    srv, rec = server()
    conn, peer = open_conn(srv)
    conn.connection_lost(None)
    conn.data_received(STOCK_FRAME)
    assert rec.frames == [] and peer.received == b""
