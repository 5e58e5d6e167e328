"""dynamo_lite.endpoint: admission, one request's stream, cancellation, cut and back-pressure.

Everything runs on one event loop with an in-memory call-home connection
(tests/support/memory_transport.py): the test is the frontend, reading the
bytes the endpoint writes and sending ``kill``/``stop`` or vanishing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest

from dynamo_lite import endpoint as endpoint_mod
from dynamo_lite.context import Context
from dynamo_lite.endpoint import Endpoint
from dynamo_lite.protocol import control, items, twopart
from dynamo_lite.protocol import request_plane as rp
from dynamo_lite.transport.request_plane import admit
from tests.support.memory_transport import MemoryConnector, Peer
from tests.support.wire import read_stream, replies, vector

pytestmark = pytest.mark.anyio

#: A generous bound, only to turn a hang into a failure.
HANG = 5.0

STREAM_REQUEST = rp.RequestFrameDecoder().feed(vector("stock_req_chat_stream.bin"))[0]
REQUEST_ID = "28bbb211-a6a6-4030-90f1-ce91e1516a80"
SUBJECT = "e83c719d-2b45-4931-b928-27e3c0765d4b"


def split_frames(data: bytes) -> list[bytes]:
    """The TwoPart frames of a byte stream, each re-encoded as sent."""
    return [twopart.encode(m.header, m.body) for m in twopart.TwoPartDecoder().feed(data)]


def stock_outputs() -> list[dict[str, Any]]:
    """The four outputs of the stock streaming capture, as an engine would yield them."""
    return read_stream(vector("stock_respstream_stream.bin")).outputs


Generate = Callable[[dict[str, Any], Context], AsyncGenerator[Any, None]]


class Engine:
    """An engine whose generate() the test supplies; records aborts and closes."""

    def __init__(self, generate: Generate) -> None:
        self._generate = generate
        self.aborts: list[str] = []
        self.closed = asyncio.Event()
        self.cancelled = False
        self.requests: list[dict[str, Any]] = []

    async def generate(self, request: dict[str, Any], ctx: Context) -> AsyncGenerator[Any, None]:
        self.requests.append(request)
        try:
            async for chunk in self._generate(request, ctx):
                yield chunk
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed.set()

    async def abort(self, ctx: Context) -> None:
        self.aborts.append(ctx.id())


def make(generate: Generate, **kwargs: Any) -> tuple[Endpoint, Engine, MemoryConnector]:
    engine = Engine(generate)
    ep = Endpoint(engine, "generate", **kwargs)  # type: ignore[arg-type]
    connector = MemoryConnector()
    ep.connect = connector
    ep.accepting = True
    return ep, engine, connector


async def start(ep: Endpoint, connector: MemoryConnector) -> tuple[Peer, Context]:
    """Admit the stock streaming request and wait for its call-home connection."""
    assert admit(ep, STREAM_REQUEST) == rp.ACK == vector("stock_ack_ok.bin")
    peer = await connector.next_peer(HANG)
    return peer, ep.requests[REQUEST_ID].ctx


async def finished(ep: Endpoint) -> None:
    """Wait for every request task of the endpoint to end."""
    assert await ep.join(HANG), "request task hung"
    assert ep.requests == {}


async def stock_engine(request: dict[str, Any], ctx: Context) -> AsyncGenerator[Any, None]:
    for out in stock_outputs():
        yield out


async def endless(request: dict[str, Any], ctx: Context) -> AsyncGenerator[Any, None]:
    i = 0
    while True:
        i += 1
        yield {"token_ids": [i % 200], "index": 0}
        await asyncio.sleep(0)


async def wait_for_outputs(peer: Peer, n: int) -> None:
    async with asyncio.timeout(HANG):
        while len(read_stream(bytes(peer.received)).outputs) < n:
            await asyncio.sleep(0)


async def wait_for_sentinel(peer: Peer) -> None:
    """Wait until the stream has ended; the endpoint then waits for the frontend to close."""
    async with asyncio.timeout(HANG):
        while not read_stream(bytes(peer.received)).sentinel:
            await asyncio.sleep(0)


# --- admission ---------------------------------------------------------------


async def test_not_accepting_replies_unavailable() -> None:
    ep, _, connector = make(stock_engine)
    ep.accepting = False
    reply = admit(ep, STREAM_REQUEST)
    assert replies(reply) == [b"Server unavailable: worker is not serving"]
    assert ep.stats.rejected == 1 and ep.requests == {} and connector.dialled == []


async def test_at_capacity_replies_overloaded() -> None:
    ep, _, connector = make(stock_engine, max_inflight=0)
    [text] = replies(admit(ep, STREAM_REQUEST))
    assert text == b"Server overloaded: worker at capacity"  # the stock worker's text
    assert ep.stats.overloaded == 1 and connector.dialled == []


@pytest.mark.parametrize(
    "payload",
    [
        b"garbage",
        twopart.encode(b"{not json", b""),
        twopart.encode(b'{"id":"x"}', b""),
    ],
)
async def test_malformed_envelope_replies_unavailable(payload: bytes) -> None:
    ep, _, connector = make(stock_engine)
    frame = rp.RequestFrame("generate", b"", payload)
    [text] = replies(admit(ep, frame))
    assert text.startswith(b"Server unavailable: malformed request")
    assert ep.requests == {} and connector.dialled == []


async def test_garbage_headers_do_not_reject_the_request() -> None:
    ep, _, connector = make(stock_engine)
    frame = STREAM_REQUEST._replace(raw_headers=b"\xff not json")
    assert admit(ep, frame) == rp.ACK
    peer = await connector.next_peer(HANG)
    peer.disconnect()
    await finished(ep)


# --- one request -------------------------------------------------------------


async def test_stream_frames_match_the_stock_capture() -> None:
    ep, engine, connector = make(stock_engine)
    peer, ctx = await start(ep, connector)
    assert connector.dialled == [("127.0.0.1", 46265, None)]
    await wait_for_sentinel(peer)
    ours = split_frames(bytes(peer.received))
    stock = split_frames(vector("stock_respstream_stream.bin"))
    # Handshake, prologue, the terminal item, complete_final and the sentinel
    # are the stock bytes; the three middle items are the stock items without
    # their ``finish_reason: null`` (which the validator does not forward).
    assert len(ours) == len(stock) == 8
    assert ours[:2] == stock[:2] and ours[-3:] == stock[-3:]
    for mine, theirs in zip(ours[2:5], stock[2:5], strict=True):
        expected = items.parse_item("msgpack", twopart.decode(theirs).body).output
        assert expected is not None and expected.pop("finish_reason") is None
        assert items.output_frame("msgpack", expected) == mine
    assert REQUEST_ID in ep.requests
    peer.disconnect()
    await finished(ep)
    assert engine.requests[0]["stop_conditions"]["max_tokens"] == 4
    assert not ctx.is_killed() and engine.aborts == []
    assert ep.stats.completed == 1 and ep.stats.cancelled == 0


async def test_garbage_body_ends_with_invalid_argument() -> None:
    ep, engine, connector = make(stock_engine)
    message = twopart.decode(STREAM_REQUEST.payload)
    frame = STREAM_REQUEST._replace(payload=twopart.encode(message.header, b"\xc1garbage"))
    assert admit(ep, frame) == rp.ACK
    peer = await connector.next_peer(HANG)
    await wait_for_sentinel(peer)
    peer.disconnect()
    await finished(ep)
    frames = read_stream(bytes(peer.received))
    assert frames.kinds == ["handshake", "prologue", "error", "complete_final", "sentinel"]
    stock = read_stream(vector("stock_frame_error_invalid_argument.bin"))
    assert frames.errors[0]["error_type"] == stock.errors[0]["error_type"]
    assert frames.errors[0]["class"] == stock.errors[0]["class"] == "InvalidRequest"
    assert engine.requests == []


async def test_engine_error_becomes_an_error_item() -> None:
    async def failing(request: dict[str, Any], ctx: Context) -> AsyncGenerator[Any, None]:
        yield {"token_ids": [1]}
        raise ValueError("boom")

    ep, _engine, connector = make(failing)
    peer, _ = await start(ep, connector)
    await wait_for_sentinel(peer)
    peer.disconnect()
    await finished(ep)
    frames = read_stream(bytes(peer.received))
    assert frames.kinds == [
        "handshake",
        "prologue",
        "output",
        "error",
        "complete_final",
        "sentinel",
    ]
    assert ep.stats.errors == 1


# --- cancellation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "signal"), [(vector("stock_ctrl_kill.bin"), "kill"), (control.STOP_FRAME, "stop")]
)
async def test_kill_and_stop_cancel_the_request(frame: bytes, signal: str) -> None:
    ep, engine, connector = make(endless)
    peer, ctx = await start(ep, connector)
    await wait_for_outputs(peer, 3)
    peer.send(frame)
    # The callback acts at once, inside data_received.
    assert ctx.is_killed() and ctx.is_stopped()
    written = len(peer.received)
    await finished(ep)
    assert engine.closed.is_set() and not engine.cancelled
    assert engine.aborts == [REQUEST_ID]
    # Nothing more after a cancellation, not even the end of the stream.
    assert len(peer.received) == written
    assert "sentinel" not in read_stream(bytes(peer.received)).kinds
    assert ep.stats.cancelled == 1 and ep.stats.aborts == 1
    assert peer.transport.closing


async def test_kill_twice_aborts_once() -> None:
    ep, engine, connector = make(endless)
    peer, _ = await start(ep, connector)
    await wait_for_outputs(peer, 1)
    peer.send(vector("stock_ctrl_kill.bin") + control.STOP_FRAME)
    peer.send(vector("stock_ctrl_kill.bin"))
    await finished(ep)
    await ep.close(HANG)
    assert engine.aborts == [REQUEST_ID]


async def test_disconnect_cancels_the_request() -> None:
    ep, engine, connector = make(endless)
    peer, ctx = await start(ep, connector)
    await wait_for_outputs(peer, 1)
    peer.disconnect()
    await finished(ep)
    assert ctx.is_killed() and engine.closed.is_set()
    assert engine.aborts == [REQUEST_ID]


async def test_engine_that_does_not_yield_is_cancelled_after_the_kill_grace() -> None:
    hold = asyncio.Event()

    async def stuck(request: dict[str, Any], ctx: Context) -> AsyncGenerator[Any, None]:
        yield {"token_ids": [1]}
        await hold.wait()  # ignores the kill: never reaches its next yield
        yield {"token_ids": [2]}

    ep, engine, connector = make(stuck)
    peer, _ = await start(ep, connector)
    await wait_for_outputs(peer, 1)
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    peer.send(vector("stock_ctrl_kill.bin"))
    await finished(ep)
    # Order and outcome: the generator was cancelled, not left running, and not
    # before the grace it is owed.
    assert engine.cancelled and engine.closed.is_set()
    assert loop.time() - killed_at >= endpoint_mod.KILL_GRACE
    assert engine.aborts == [REQUEST_ID]


async def test_engine_that_yields_within_the_grace_is_closed_not_cancelled() -> None:
    async def polite(request: dict[str, Any], ctx: Context) -> AsyncGenerator[Any, None]:
        while True:
            yield {"token_ids": [1]}
            await ctx.async_killed_or_stopped()

    ep, engine, connector = make(polite)
    peer, _ = await start(ep, connector)
    await wait_for_outputs(peer, 1)
    peer.send(vector("stock_ctrl_kill.bin"))
    await finished(ep)
    assert engine.closed.is_set() and not engine.cancelled


# --- cut ---------------------------------------------------------------------


async def test_cut_ends_open_streams_with_an_error_item() -> None:
    ep, engine, connector = make(endless)
    peer, ctx = await start(ep, connector)
    await wait_for_outputs(peer, 2)
    assert ep.cut("worker shutting down") == 1
    assert ctx.is_killed()
    frames = read_stream(bytes(peer.received))
    assert frames.kinds[-3:] == ["error", "complete_final", "sentinel"]
    assert "worker shutting down" in frames.errors[0]["message"]
    # A second cut finds nothing left to end.
    assert ep.cut("again") == 0
    peer.disconnect()
    await finished(ep)
    assert engine.closed.is_set()
    assert read_stream(bytes(peer.received)).kinds[-1] == "sentinel"
    assert ep.stats.cut == 1


async def test_cut_skips_cancelled_requests() -> None:
    ep, _engine, connector = make(endless)
    peer, _ = await start(ep, connector)
    await wait_for_outputs(peer, 1)
    peer.send(control.STOP_FRAME)
    assert ep.cut("shutdown") == 0
    await finished(ep)


# --- back-pressure -----------------------------------------------------------


async def test_stalled_reader_is_given_up_after_the_write_stall_bound() -> None:
    ep, engine, connector = make(endless)
    connector.high_water = 4096
    connector.stalled = True
    ep.write_stall_timeout = 0.05
    peer, ctx = await start(ep, connector)
    await finished(ep)
    assert peer.transport.paused and peer.transport.aborted
    assert ctx.is_killed() and engine.aborts == [REQUEST_ID]
    assert engine.closed.is_set()


async def test_slow_reader_that_resumes_gets_the_whole_stream() -> None:
    total = 400

    async def many(request: dict[str, Any], ctx: Context) -> AsyncGenerator[Any, None]:
        for i in range(total - 1):
            yield {"token_ids": [i % 200], "index": 0}
        yield {"token_ids": [7], "index": 0, "finish_reason": "stop"}

    ep, engine, connector = make(many)
    connector.high_water = 4096
    connector.stalled = True
    ep.write_stall_timeout = HANG
    peer, ctx = await start(ep, connector)
    async with asyncio.timeout(HANG):
        while not peer.transport.paused:
            await asyncio.sleep(0)
    assert not engine.closed.is_set()  # the pump waits in drain()
    while not engine.closed.is_set():
        peer.read_buffered(1024)  # a slow reader: a little at a time
        await asyncio.sleep(0)
    peer.resume()
    frames = read_stream(bytes(peer.received))
    assert len(frames.outputs) == total
    assert frames.kinds[-2:] == ["complete_final", "sentinel"]
    assert not peer.transport.aborted and not ctx.is_killed() and engine.aborts == []
    peer.disconnect()
    await finished(ep)


async def test_call_home_refused_ends_the_request() -> None:
    ep, engine, connector = make(stock_engine)
    connector.refuse = True
    assert admit(ep, STREAM_REQUEST) == rp.ACK
    await finished(ep)
    assert engine.requests == [] and ep.stats.inflight == 0


async def test_close_cancels_what_is_left() -> None:
    ep, engine, connector = make(endless)
    _peer, _ = await start(ep, connector)
    await ep.close(HANG)
    assert len(ep.tasks) == 0 and ep.requests == {}
    assert engine.closed.is_set()
