"""dynamo_lite.transport.response_stream: the worker end of one call-home connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dynamo_lite.protocol import control, twopart
from dynamo_lite.transport.response_stream import ResponseSender, open_stream
from tests.support.memory_transport import MemoryConnector, Peer, connect
from tests.support.wire import vector

pytestmark = pytest.mark.anyio

HANG = 5.0
SUBJECT = "0b6b8180-42d2-48b1-b647-c78c94203c94"  # as in stock_frame_handshake.bin


def stream(high_water: int = 64 * 1024) -> tuple[ResponseSender, Peer, list[str]]:
    signals: list[str] = []
    rs = ResponseSender(signals.append)
    peer = connect(rs, high_water=high_water)
    return rs, peer, signals


async def test_open_stream_sends_the_stock_handshake_and_prologue() -> None:
    connector = MemoryConnector()
    rs = await open_stream(("127.0.0.1", 46265), SUBJECT, lambda s: None, connect=connector)
    peer = connector.peers[0]
    assert connector.dialled == [("127.0.0.1", 46265, None)]
    assert peer.received == vector("stock_frame_handshake.bin") + vector(
        "stock_frame_prologue_ok.bin"
    )
    assert rs.is_open and not rs.finished


async def test_open_stream_dial_is_bounded() -> None:
    async def never(*args: Any) -> Any:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        await open_stream(("127.0.0.1", 1), SUBJECT, lambda s: None, timeout=0.01, connect=never)


async def test_open_stream_refused_raises_oserror() -> None:
    connector = MemoryConnector()
    connector.refuse = True
    with pytest.raises(OSError):
        await open_stream(("127.0.0.1", 1), SUBJECT, lambda s: None, connect=connector)


@pytest.mark.parametrize(
    ("frame", "signal"), [(vector("stock_ctrl_kill.bin"), "kill"), (control.STOP_FRAME, "stop")]
)
async def test_control_frames_cancel_once(frame: bytes, signal: str) -> None:
    rs, peer, signals = stream()
    peer.send(frame)
    peer.send(vector("stock_ctrl_kill.bin"))
    assert signals == [signal]
    assert rs.finished and not rs.is_open
    rs.write(b"late")
    rs.write_final(b"late")
    assert peer.received == b""


async def test_control_frame_split_byte_by_byte() -> None:
    _rs, peer, signals = stream()
    for b in vector("stock_ctrl_kill.bin"):
        assert signals == []
        peer.send(bytes([b]))
    assert signals == ["kill"]


async def test_unknown_frames_are_ignored() -> None:
    _rs, peer, signals = stream()
    peer.send(twopart.encode(b'"bogus"') + twopart.encode(b"", b"a body") + twopart.encode())
    assert signals == []


async def test_garbage_cancels_and_aborts() -> None:
    _rs, peer, signals = stream()
    peer.send(b"\xff" * 24)  # a TwoPart prefix announcing an absurd length
    assert signals == ["protocol-error"]
    assert peer.transport.aborted


async def test_eof_and_disconnect_cancel() -> None:
    rs, peer, signals = stream()
    peer.send_eof()
    assert signals == ["disconnect"]
    await peer.wait_closed(HANG)
    assert not rs.is_open


async def test_close_after_the_sentinel_is_not_a_cancellation() -> None:
    rs, peer, signals = stream()
    rs.write(b"item")
    rs.write_final(b"end")
    assert rs.finished and not rs.is_open
    peer.disconnect()
    await rs.wait_closed(HANG)
    assert signals == [] and peer.received == b"itemend"


async def test_wait_closed_returns_when_the_frontend_closes() -> None:
    rs, peer, _ = stream()
    rs.write_final(b"end")
    waiter = asyncio.ensure_future(rs.wait_closed(HANG))
    await asyncio.sleep(0)
    assert not waiter.done()
    peer.disconnect()
    async with asyncio.timeout(HANG):
        await waiter
    assert peer.transport.lost


async def test_wait_closed_is_bounded_then_closes() -> None:
    rs, peer, _ = stream()
    rs.write_final(b"end")
    await rs.wait_closed(0.01)  # the frontend never closes
    assert peer.transport.closing
    await peer.wait_closed(HANG)


async def test_wait_closed_zero_closes_at_once() -> None:
    rs, peer, _ = stream()
    await rs.wait_closed(0)
    assert peer.transport.closing


async def test_drain_waits_for_the_reader_and_resumes() -> None:
    rs, peer, _ = stream(high_water=10)
    peer.stall()
    rs.write(b"x" * 11)
    assert rs.needs_drain
    drain = asyncio.ensure_future(rs.drain())
    await asyncio.sleep(0)
    assert not drain.done()
    peer.resume()
    async with asyncio.timeout(HANG):
        await drain
    assert not rs.needs_drain and peer.received == b"x" * 11


async def test_drain_returns_when_the_connection_is_lost() -> None:
    rs, peer, signals = stream(high_water=10)
    peer.stall()
    rs.write(b"x" * 11)
    drain = asyncio.ensure_future(rs.drain())
    await asyncio.sleep(0)
    peer.disconnect()
    async with asyncio.timeout(HANG):
        await drain
    assert signals == ["disconnect"]


async def test_drain_without_back_pressure_does_not_wait() -> None:
    rs, _peer, _ = stream()
    async with asyncio.timeout(HANG):
        await rs.drain()
