"""The worker in-process: real sockets and the pure-Python client, in-memory discovery."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dynamo_lite import (
    Context,
    EngineConfig,
    EngineShutdown,
    GenerateRequest,
    InvalidArgument,
    RuntimeSettings,
    Settings,
    Worker,
    WorkerConfig,
    serve,
)
from dynamo_lite.client import Rejected, RemoteError
from dynamo_lite.discovery import MemoryStore
from dynamo_lite.lifecycle import State
from dynamo_lite.tiny_model import write_tiny_model
from tests.support.inproc import ScriptedEngine, running


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "tiny")


pytestmark = pytest.mark.anyio


async def test_stream_and_clean_shutdown(model_dir: Path) -> None:
    engine = ScriptedEngine()
    async with running(engine, model_dir) as h:
        outs = await h.generate(stop_conditions={"max_tokens": 5})
        assert [o["token_ids"] for o in outs] == [[1], [2], [3], [4], [5]]
        assert outs[-1]["finish_reason"] == "length"
        instance = (await h.client.instances())[0]
        assert engine.calls[0] == f"start:{instance.instance_id}"
        assert await h.stop() == 0
        assert engine.calls.count("cleanup") == 1
        assert h.worker.lifecycle.state is State.STOPPED
        assert await h.client.instances() == []


async def test_json_codec(model_dir: Path) -> None:
    async with running(ScriptedEngine(), model_dir, codec="json") as h:
        assert (await h.client.instances())[0].codec == "json"
        outs = await h.generate(stop_conditions={"max_tokens": 2})
        assert outs[-1]["finish_reason"] == "length"


async def test_token_ids_as_bytes_are_decoded(model_dir: Path) -> None:
    seen: list[Any] = []

    async def echo(request: GenerateRequest, context: Context) -> AsyncGenerator[Any, None]:
        seen.append(request["token_ids"])
        yield {"token_ids": [7], "index": 0, "finish_reason": "stop"}

    async with running(ScriptedEngine({"echo": echo}), model_dir) as h:
        raw = b"".join(i.to_bytes(4, "little") for i in (1, 87, 266))
        await h.generate(mode="echo", token_ids=raw)
    assert seen == [[1, 87, 266]]


async def test_kill_sets_context_and_aborts_once(model_dir: Path) -> None:
    engine = ScriptedEngine()
    async with running(engine, model_dir) as h:
        stream = await h.client.generate(
            {"token_ids": [1], "stop_conditions": {"max_tokens": 10_000}}
        )
        n = 0
        async for _ in stream:
            n += 1
            if n == 3:
                await stream.cancel()
                break
        # Once the request task has ended, no further abort can come.
        assert await h.worker.endpoint.join(10)
        await h.worker.endpoint.close(10)
        assert engine.aborts == [stream.request_id]
        assert stream.request_id in engine.closed
        assert not h.worker.endpoint.requests


async def test_engine_ignoring_cancellation_is_closed(model_dir: Path) -> None:
    async def stubborn(request: GenerateRequest, context: Context) -> AsyncGenerator[Any, None]:
        yield {"token_ids": [1], "index": 0}
        await asyncio.sleep(3600)
        yield {"token_ids": [2], "index": 0}

    engine = ScriptedEngine({"stubborn": stubborn})
    async with running(engine, model_dir) as h:
        stream = await h.client.generate({"token_ids": [1], "mode": "stubborn"})
        async for _ in stream:
            await stream.cancel()
            break
        assert await h.worker.endpoint.join(10)  # the kill grace, then the generator closed
        await h.worker.endpoint.close(10)
        assert stream.request_id in engine.closed
        assert engine.aborts == [stream.request_id]


@pytest.mark.parametrize(
    ("exc", "cls", "public"),
    [
        (InvalidArgument("bad input"), "InvalidRequest", "bad input"),
        (ValueError("v"), "InvalidRequest", None),
        (RuntimeError("boom"), "Internal", None),
        (EngineShutdown("bye"), "Unavailable", None),
    ],
)
async def test_exceptions_become_error_items(
    model_dir: Path, exc: Exception, cls: str, public: str | None
) -> None:
    async def raising(request: GenerateRequest, context: Context) -> AsyncGenerator[Any, None]:
        yield {"token_ids": [1], "index": 0}
        raise exc

    async with running(ScriptedEngine({"raise": raising}), model_dir) as h:
        stream = await h.client.generate({"token_ids": [1], "mode": "raise"})
        got: list[dict[str, Any]] = []
        with pytest.raises(RemoteError) as err:
            async for out in stream:
                got.append(out)
        assert got == [{"token_ids": [1], "index": 0}]
        assert err.value.error_class == cls
        assert err.value.public == public
        # The worker keeps serving.
        assert (await h.generate(stop_conditions={"max_tokens": 1}))[-1][
            "finish_reason"
        ] == "length"


async def test_contract_violations_end_with_an_error(model_dir: Path) -> None:
    async def no_terminal(request: GenerateRequest, context: Context) -> AsyncGenerator[Any, None]:
        yield {"token_ids": [1], "index": 0}

    async def empty(request: GenerateRequest, context: Context) -> AsyncGenerator[Any, None]:
        return
        yield

    async def after_terminal(
        request: GenerateRequest, context: Context
    ) -> AsyncGenerator[Any, None]:
        yield {"token_ids": [1], "index": 0, "finish_reason": "stop"}
        yield {"token_ids": [2], "index": 0}

    async def bad_reason(request: GenerateRequest, context: Context) -> AsyncGenerator[Any, None]:
        yield {"token_ids": [1], "index": 0, "finish_reason": "STOP"}

    async def no_ids(request: GenerateRequest, context: Context) -> AsyncGenerator[Any, None]:
        yield {"index": 0}

    engine = ScriptedEngine(
        {
            "no_terminal": no_terminal,
            "empty": empty,
            "after_terminal": after_terminal,
            "bad_reason": bad_reason,
            "no_ids": no_ids,
        }
    )
    async with running(engine, model_dir) as h:
        for mode, needle in (
            ("no_terminal", "without a terminal"),
            ("empty", "without yielding"),
            ("bad_reason", "unknown finish_reason 'STOP'"),
            ("no_ids", "no token_ids"),
        ):
            with pytest.raises(RemoteError) as err:
                await h.generate(mode=mode)
            assert needle in err.value.message, mode
            assert err.value.error_class == "Internal"
        outs = await h.generate(mode="after_terminal")
        assert outs == [{"token_ids": [1], "index": 0, "finish_reason": "stop"}]
        assert await h.worker.endpoint.join(10)  # counted when the generator is closed
        assert h.worker.endpoint.stats.dropped_chunks == 1


async def test_finish_reason_normalisation(model_dir: Path) -> None:
    async def reason(request: GenerateRequest, context: Context) -> AsyncGenerator[Any, None]:
        yield {"token_ids": [1], "index": 0, "finish_reason": request["why"]}  # type: ignore[typeddict-item]

    async with running(ScriptedEngine({"r": reason}), model_dir) as h:
        for why, wire in (
            ("abort", "cancelled"),
            ("eos", "eos"),
            ("stop", "stop"),
            ("content_filter", "content_filter"),
            ("cancelled", "cancelled"),
        ):
            assert (await h.generate(mode="r", why=why))[-1]["finish_reason"] == wire
        # Sent as the wire's error finish reason, which the frontend answers with 500.
        outs = await h.generate(mode="r", why="error: the GPU caught fire")
        assert outs[-1]["finish_reason"] == {"error": "the GPU caught fire"}


async def test_overload_and_draining_acks(model_dir: Path) -> None:
    engine = ScriptedEngine()
    async with running(engine, model_dir) as h:
        instance = (await h.client.instances())[0]
        h.worker.endpoint.max_inflight = 0
        with pytest.raises(Rejected) as err:
            await h.generate()
        assert err.value.overloaded
        h.worker.endpoint.max_inflight = 10
        # A long request keeps the worker draining once shutdown begins.
        long = await h.client.generate(
            {"token_ids": [1], "stop_conditions": {"max_tokens": 100_000}}, instance=instance
        )
        h.worker.request_shutdown()
        with anyio.fail_after(10):
            while h.worker.lifecycle.state is not State.DRAINING:
                await asyncio.sleep(0.01)
        with pytest.raises(Rejected) as err:
            await h.client.generate({"token_ids": [1]}, instance=instance)
        assert err.value.reply.startswith("Server unavailable: ")
        assert not err.value.overloaded
        await long.cancel()
        assert await asyncio.wait_for(h.task, 20) == 0


async def test_malformed_request_body_is_invalid_argument(model_dir: Path) -> None:
    from dynamo_lite.protocol import codec as wire_codec

    async with running(ScriptedEngine(), model_dir) as h:
        original = wire_codec.encode

        def garbage(codec: Any, obj: Any) -> bytes:
            return b"\xc1\xc1\xc1"

        wire_codec.encode = garbage  # type: ignore[assignment]
        try:
            stream = await h.client.generate({"token_ids": [1]})
        finally:
            wire_codec.encode = original  # type: ignore[assignment]
        with pytest.raises(RemoteError) as err:
            await stream.collect()
        assert err.value.error_class == "InvalidRequest"


async def test_in_flight_streams_drain_on_shutdown(model_dir: Path) -> None:
    engine = ScriptedEngine()
    async with running(engine, model_dir, grace_period=0.2) as h:
        streams = [
            await h.client.generate({"token_ids": [1], "stop_conditions": {"max_tokens": 60}})
            for _ in range(5)
        ]
        collectors = [asyncio.create_task(s.collect()) for s in streams]
        assert len(h.worker.endpoint.requests) == 5  # acked: all in flight
        h.worker.request_shutdown()
        results = await asyncio.gather(*collectors)
        assert all(r[-1]["finish_reason"] == "length" and len(r) == 60 for r in results)
        assert await asyncio.wait_for(h.task, 20) == 0


async def test_second_signal_cuts_streams_with_an_error(model_dir: Path) -> None:
    engine = ScriptedEngine()
    async with running(engine, model_dir, grace_period=5.0) as h:
        stream = await h.client.generate(
            {"token_ids": [1], "stop_conditions": {"max_tokens": 100_000}}
        )
        collector = asyncio.create_task(stream.collect())
        h.worker.request_shutdown()
        with anyio.fail_after(10):
            while h.worker.lifecycle.state is not State.GRACE:
                await asyncio.sleep(0.01)
        h.worker.request_shutdown()
        with pytest.raises(RemoteError) as err:
            await collector
        assert err.value.error_class == "Unavailable"
        assert await asyncio.wait_for(h.task, 10) == 0
        assert engine.calls.count("cleanup") == 1


async def test_start_failure_cleans_up_once_and_exits_1(model_dir: Path) -> None:
    class Failing(ScriptedEngine):
        async def start(self, worker_id: int) -> EngineConfig:
            raise RuntimeError("no GPU")

    engine = Failing()
    config = WorkerConfig(namespace="dynamo", model_name=str(model_dir), discovery_backend="mem")
    worker = Worker(
        engine,
        config,
        settings=RuntimeSettings(tcp_host="127.0.0.1"),
        store=MemoryStore(uuid.uuid4().hex),
        handle_signals=False,
    )
    assert await worker.run() == 1
    assert engine.calls == ["cleanup"]


async def test_missing_model_dir_fails_startup(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    config = WorkerConfig(
        namespace="dynamo", model_name=str(tmp_path / "nope"), discovery_backend="mem"
    )
    worker = Worker(
        engine,
        config,
        settings=RuntimeSettings(tcp_host="127.0.0.1"),
        store=MemoryStore(uuid.uuid4().hex),
        handle_signals=False,
    )
    assert await worker.run() == 1
    assert engine.calls[-1] == "cleanup"


async def test_requests_during_grace_are_served_then_unavailable(model_dir: Path) -> None:
    engine = ScriptedEngine()
    async with running(engine, model_dir, grace_period=1.0) as h:
        instance = (await h.client.instances())[0]
        # A long request keeps the worker in its drain after the grace period.
        long = await h.client.generate(
            {"token_ids": [1], "stop_conditions": {"max_tokens": 100_000}}, instance=instance
        )
        h.worker.request_shutdown()
        with anyio.fail_after(10):  # unregistered at once, before the grace period ends
            while await h.client.instances():
                await asyncio.sleep(0.01)
        # The frontend may not have seen that yet: what still arrives is served.
        stream = await h.client.generate(
            {"token_ids": [1], "stop_conditions": {"max_tokens": 3}}, instance=instance
        )
        assert (await stream.collect())[-1]["finish_reason"] == "length"
        while h.worker.lifecycle.state is State.GRACE:
            await asyncio.sleep(0.02)
        assert h.worker.lifecycle.state is State.DRAINING
        # After the grace period: the "unavailable" ack, answered at once.
        with pytest.raises(Rejected) as err:
            await h.client.generate({"token_ids": [1]}, instance=instance)
        assert err.value.reply.startswith("Server unavailable: ")
        await long.cancel()


async def test_settings_given_as_a_mapping_configure_every_part(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process environment says otherwise: the given settings must win everywhere.
    monkeypatch.setenv("DYN_SYSTEM_LIVE_PATH", "/wrong")
    monkeypatch.setenv("DYN_ENGINE_REQUEST_LIMIT", "99")
    monkeypatch.setenv("DYN_LITE_STREAM_DEBUG", "0")
    engine = ScriptedEngine()
    engine.model = str(model_dir)
    config = WorkerConfig(namespace="dynamo", model_name=str(model_dir), discovery_backend="mem")
    env = {
        "DYN_TCP_RPC_HOST": "127.0.0.1",
        "DYN_SYSTEM_HOST": "127.0.0.1",
        "DYN_SYSTEM_PORT": "0",
        "DYN_SYSTEM_LIVE_PATH": "/alive",
        "DYN_ENGINE_REQUEST_LIMIT": "2",
        "DYN_LITE_STREAM_DEBUG": "1",
        "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "0",
    }
    async with serve(
        engine, config, settings=env, store=MemoryStore(uuid.uuid4().hex), handle_signals=False
    ) as worker:
        assert worker.env_settings == Settings.from_env(env)
        assert worker.settings.system_port == 0 and worker.settings.grace_period == 0.0
        assert worker.system_server is not None
        assert "/alive" in worker.system_server.routes
        assert "/wrong" not in worker.system_server.routes
        assert worker.endpoint.engine_gate.limit == 2
        assert worker.endpoint.stream_debug is True
