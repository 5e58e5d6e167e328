"""Bad input never takes the worker down: fuzzing a live worker's planes.

Garbage on the request plane, structurally valid frames with garbage inside,
garbage on the response stream, oversized and slow frames. After each case
the offending connection is gone and a well-formed request still succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo_lite.protocol import control, twopart
from dynamo_lite.protocol import request_plane as rp
from dynamo_lite.tiny_model import write_tiny_model
from tests.support.inproc import Harness, ScriptedEngine, running

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("fuzz") / "tiny")


class Live:
    """One worker shared by every example of a test (started in its own loop)."""

    def __init__(self, model_dir: Path, **settings: object) -> None:
        self.model_dir = model_dir
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._cm: contextlib.AbstractAsyncContextManager[Harness] | None = None
        self.h: Harness | None = None

    def __enter__(self) -> Live:
        self._cm = running(ScriptedEngine(), self.model_dir, **self.settings)
        self.h = self.loop.run_until_complete(self._cm.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._cm is not None
        self.loop.run_until_complete(self._cm.__aexit__(None, None, None))
        self.loop.close()

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    @property
    def address(self) -> tuple[str, int]:
        assert self.h is not None and self.h.worker.advertised is not None
        return "127.0.0.1", self.h.worker.advertised[1]

    async def healthy(self) -> None:
        assert self.h is not None
        assert not self.h.task.done()
        outs = await self.h.generate(stop_conditions={"max_tokens": 2})
        assert outs[-1]["finish_reason"] == "length"


@contextlib.asynccontextmanager
async def raw(
    address: tuple[str, int],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@pytest.fixture(scope="module")
def live(model_dir: Path) -> AsyncIterator[Live]:
    with Live(model_dir, frame_timeout=0.5) as w:
        yield w  # type: ignore[misc]


@FUZZ
@given(st.binary(max_size=2000))
def test_request_plane_garbage(live: Live, data: bytes) -> None:
    async def case() -> None:
        async with raw(live.address) as (reader, writer):
            writer.write(data)
            await writer.drain()
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(65536), 0.05)
        await live.healthy()

    live.run(case())


@FUZZ
@given(path=st.text(max_size=60), headers=st.binary(max_size=200), payload=st.binary(max_size=500))
def test_well_framed_garbage_gets_one_clear_reply_per_frame(
    live: Live, path: str, headers: bytes, payload: bytes
) -> None:
    raw_path = path.encode()[:1000]
    frame = (
        struct.pack(">H", len(raw_path))
        + raw_path
        + struct.pack(">H", len(headers))
        + headers
        + struct.pack(">I", len(payload))
        + payload
    )

    async def case() -> None:
        async with raw(live.address) as (reader, writer):
            writer.write(frame * 2)
            await writer.drain()
            dec = rp.ReplyDecoder()
            replies: list[bytes] = []
            async with asyncio.timeout(5):
                while len(replies) < 2:
                    chunk = await reader.read(65536)
                    assert chunk, "worker closed the connection instead of replying"
                    replies += dec.feed(chunk)
            for reply in replies:
                assert reply.startswith(b"Server unavailable: ")
        await live.healthy()

    live.run(case())


@FUZZ
@given(st.binary(min_size=1, max_size=500))
def test_response_stream_garbage_cancels_only_that_request(live: Live, junk: bytes) -> None:
    async def case() -> None:
        assert live.h is not None
        arrived: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def fake_frontend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if not arrived.done():
                arrived.set_result(w)
            with contextlib.suppress(Exception):
                await r.read(65536)
                w.write(junk)
                await w.drain()
                await asyncio.sleep(0.05)
                w.close()

        server = await asyncio.start_server(fake_frontend, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        instance = (await live.h.client.instances())[0]
        ctl = control.RequestControl(
            id="fuzz",
            payload_codec="msgpack",
            transport="tcp_server",
            info=control.ConnectionInfo(f"127.0.0.1:{port}", "subject", "fuzz"),
        )
        from dynamo_lite.protocol import codec

        body = codec.encode(
            "msgpack", {"token_ids": [1], "stop_conditions": {"max_tokens": 10_000}}
        )
        frame = rp.encode_frame(
            instance.path, {}, twopart.encode(control.encode_request_control(ctl), body)
        )
        async with raw(live.address) as (reader, writer):
            writer.write(frame)
            await writer.drain()
            assert rp.ReplyDecoder().feed(await reader.read(4)) == [b""]
            await asyncio.wait_for(arrived, 5)
        server.close()
        async with asyncio.timeout(5):
            while "fuzz" in live.h.worker.endpoint.requests:
                await asyncio.sleep(0.01)
        await live.healthy()

    live.run(case())


def test_oversized_frame_is_refused_with_bounded_memory(live: Live) -> None:
    async def case() -> None:
        async with raw(live.address) as (reader, writer):
            # Refused on the length prefix alone: the 1 GiB body is never awaited
            # or buffered.
            prefix = struct.pack(">H", 1) + b"x" + struct.pack(">H", 0)
            writer.write(prefix + struct.pack(">I", 1 << 30))
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(200), 5)
            assert reply[4:].startswith(b"Read error: message too large: ")
            assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed
        await live.healthy()

    live.run(case())


def test_slow_loris_is_cut_and_others_are_served(live: Live) -> None:
    async def case() -> None:
        assert live.h is not None and live.h.worker.advertised is not None
        async with raw(live.address) as (reader, writer):
            writer.write(struct.pack(">H", 5) + b"ab")  # and nothing more
            await writer.drain()
            await live.healthy()  # meanwhile, others are fine
            assert await asyncio.wait_for(reader.read(1), 5) == b""  # cut after ~0.5 s
        await live.healthy()

    live.run(case())
