"""Cancelling ``Worker.run()`` is a shutdown, in every state of the lifecycle.

Each case runs a worker in-process on the file backend with real sockets, holds
it in one state (a hook that blocks, a grace period, a request that never
ends), cancels the task running ``run()`` and checks the whole orderly path:
the cancellation propagates, the lifecycle reaches STOPPED, ``cleanup()`` ran
exactly once when ``start()`` did (and never again when it was the step
interrupted), in-flight streams ended with an explicit error item and their
generators were closed, the listener is closed, no discovery file is left,
the signal handlers are the ones from before, and no task the worker created
is still alive.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dynamo_lite import (
    Context,
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    LLMEngine,
    RuntimeSettings,
    Worker,
    WorkerConfig,
)
from dynamo_lite.client import Client, RemoteError
from dynamo_lite.discovery import FileStore
from dynamo_lite.lifecycle import State
from dynamo_lite.tiny_model import write_tiny_model

pytestmark = pytest.mark.anyio

#: Every state a run can be cancelled in (CREATED is left at once, STOPPED is the end).
STATES = [
    State.CONNECTING,
    State.STARTING,
    State.REGISTERING,
    State.SERVING,
    State.GRACE,
    State.DRAINING,
    State.FAILED,
    State.CLEANING,
    State.TEARDOWN,
]


class HoldingEngine(LLMEngine):
    """Blocks in the hook named by ``hold`` until cancelled; streams forever on request."""

    def __init__(self, model: str, hold: str | None) -> None:
        self.model = model
        self.hold = hold
        self.calls: list[str] = []
        self.closed: list[str] = []
        self.streaming = asyncio.Event()

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> Any:
        raise NotImplementedError

    async def _maybe_hold(self, hook: str) -> None:
        # A failed start is held in the cleanup that follows it: FAILED itself
        # moves on to CLEANING without waiting for anything.
        if self.hold == hook or (self.hold == "start-raises" and hook == "cleanup"):
            self.calls.append(f"{hook}:holding")
            await asyncio.sleep(3600)

    async def start(self, worker_id: int) -> EngineConfig:
        self.calls.append("start")
        await self._maybe_hold("start")
        if self.hold == "start-raises":
            raise RuntimeError("start failed on purpose")
        return EngineConfig(model=self.model, context_length=2048, kv_cache_block_size=16)

    async def health_check_payload(self) -> dict[str, Any] | None:
        # Called after the model card is written: holding here is REGISTERING
        # with a record already in discovery.
        await self._maybe_hold("register")
        return None

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        try:
            i = 0
            while True:
                i += 1
                yield {"token_ids": [i], "index": 0}
                self.streaming.set()
                await asyncio.sleep(0.01)
        finally:
            self.closed.append(context.id())

    async def cleanup(self) -> None:
        self.calls.append("cleanup")
        await self._maybe_hold("cleanup")


class HoldingStore(FileStore):
    """A file store whose ``open()`` or first ``close()`` blocks when asked."""

    def __init__(self, root: Path, hold: str | None) -> None:
        super().__init__(root)
        self.hold = hold
        self.closes = 0

    async def open(self) -> int:
        if self.hold == "open":
            await asyncio.sleep(3600)
        return await super().open()

    async def close(self) -> None:
        self.closes += 1
        if self.hold == "close" and self.closes == 1:
            await asyncio.sleep(3600)
        await super().close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("cancel") / "tiny")


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def _wait_for(what: str, check: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await asyncio.sleep(0.005)


def _refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


@pytest.mark.parametrize("target", STATES, ids=[s.value for s in STATES])
async def test_cancelling_run_shuts_down_in_order(
    target: State, model_dir: Path, tmp_path: Path
) -> None:
    hold = {
        State.CONNECTING: ("store", "open"),
        State.STARTING: ("engine", "start"),
        State.REGISTERING: ("engine", "register"),
        State.FAILED: ("engine", "start-raises"),
        State.CLEANING: ("engine", "cleanup"),
        State.TEARDOWN: ("store", "close"),
    }.get(target, (None, None))
    engine = HoldingEngine(str(model_dir), hold[1] if hold[0] == "engine" else None)
    root = tmp_path / "kv"
    store = HoldingStore(root, hold[1] if hold[0] == "store" else None)
    config = WorkerConfig(
        namespace="dynamo", component="cancel", model_name=str(model_dir), discovery_backend="file"
    )
    grace = 60.0 if target is State.GRACE else 0.0
    worker = Worker(
        engine,
        config,
        settings=RuntimeSettings(tcp_host="127.0.0.1", grace_period=grace),
        store=store,
        handle_signals=True,
    )
    handlers_before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    tasks_before = asyncio.all_tasks()
    run = asyncio.create_task(worker.run(), name="worker-run")
    client: Client | None = None
    stream_items: list[dict[str, Any]] = []
    stream_error: list[RemoteError] = []
    reader: asyncio.Task[None] | None = None
    try:
        if target in (State.SERVING, State.GRACE, State.DRAINING):
            await _wait_for("serving", lambda: worker.lifecycle.state is State.SERVING)
            client = Client("dynamo", "cancel", "generate", store=FileStore(root))
            await client.wait_for_instances(10)
            stream = await client.generate({"token_ids": [1]})

            async def read() -> None:
                try:
                    async for item in stream:
                        stream_items.append(item)
                except RemoteError as exc:
                    stream_error.append(exc)

            reader = asyncio.create_task(read())
            await _wait_for("streaming", engine.streaming.is_set)
        if target in (State.GRACE, State.DRAINING, State.CLEANING, State.TEARDOWN):
            if target is not State.GRACE:
                await _wait_for("serving", lambda: worker.lifecycle.state is State.SERVING)
            worker.shutdown()
        held = State.CLEANING if target is State.FAILED else target
        await _wait_for(held.value, lambda: worker.lifecycle.state is held)
        if target in (State.STARTING, State.REGISTERING, State.CLEANING, State.FAILED):
            await _wait_for("hook holding", lambda: any(":holding" in c for c in engine.calls))
        if target is State.TEARDOWN:
            await _wait_for("close holding", lambda: store.closes == 1)
        advertised = worker.advertised
        run.cancel()
        with anyio.fail_after(20):
            with pytest.raises(asyncio.CancelledError):
                await run
        if reader is not None:
            with anyio.fail_after(10):
                await reader
    finally:
        if client is not None:
            await client.close()
        if not run.done():
            run.cancel()

    lc = worker.lifecycle
    assert lc.state is State.STOPPED
    started = "start" in engine.calls
    assert engine.calls.count("cleanup") == (1 if started else 0), engine.calls
    if target is State.FAILED:
        assert worker.failure is not None and State.FAILED in lc.visited
    if target in (State.CLEANING, State.FAILED):
        # The interrupted cleanup() is not called a second time.
        assert engine.calls.count("cleanup:holding") == 1
    # Nothing left in discovery: no instance record, no card.
    assert _files(root) == []
    if advertised is not None:
        assert _refused(*advertised)
    if reader is not None:
        # The stream was cut with an explicit error item, and the generator closed.
        assert stream_items, "the stream never started"
        assert stream_error, "the stream ended without an error item"
        assert engine.closed
    assert {sig: signal.getsignal(sig) for sig in handlers_before} == handlers_before
    assert not loop_guard_left()
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
    assert not left, left


def loop_guard_left() -> bool:
    return "add_signal_handler" in asyncio.get_running_loop().__dict__


async def test_cancelling_the_enclosing_task_group_is_the_same_shutdown(
    model_dir: Path, tmp_path: Path
) -> None:
    engine = HoldingEngine(str(model_dir), None)
    root = tmp_path / "kv"
    config = WorkerConfig(
        namespace="dynamo", component=f"tg{uuid.uuid4().hex[:6]}", model_name=str(model_dir)
    )
    worker = Worker(
        engine,
        config,
        settings=RuntimeSettings(tcp_host="127.0.0.1", grace_period=0.0),
        store=FileStore(root),
        handle_signals=False,
    )
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            assert await worker.wait_serving()
            assert _files(root)
            tg.cancel_scope.cancel()
    assert worker.lifecycle.state is State.STOPPED
    assert engine.calls == ["start", "cleanup"]
    assert _files(root) == []
