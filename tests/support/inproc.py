"""In-process workers for tests: real sockets, in-memory discovery, the pure-Python client."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

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
from dynamo_lite.client import Client
from dynamo_lite.discovery import MemoryStore

Behaviour = Callable[[GenerateRequest, Context], AsyncGenerator[Any, None]]


class ScriptedEngine(LLMEngine):
    """Runs the request's ``mode`` (a key into ``behaviours``) and records calls."""

    def __init__(self, behaviours: dict[str, Behaviour] | None = None) -> None:
        self.behaviours = behaviours or {}
        self.calls: list[str] = []
        self.aborts: list[str] = []
        self.closed: list[str] = []
        self.model = ""

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[ScriptedEngine, WorkerConfig]:
        raise NotImplementedError

    async def start(self, worker_id: int) -> EngineConfig:
        self.calls.append(f"start:{worker_id}")
        return EngineConfig(model=self.model, context_length=2048, kv_cache_block_size=16)

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        mode = request.get("mode", "count")  # type: ignore[typeddict-item]
        try:
            if mode in self.behaviours:
                async for item in self.behaviours[mode](request, context):
                    yield item
                return
            n = (request.get("stop_conditions") or {}).get("max_tokens") or 4
            for i in range(n):
                if context.is_stopped():
                    yield {"token_ids": [], "index": 0, "finish_reason": "cancelled"}
                    return
                await asyncio.sleep(0.005)
                chunk: GenerateChunk = {"token_ids": [i + 1], "index": 0}
                if i == n - 1:
                    chunk["finish_reason"] = "length"
                    chunk["completion_usage"] = {
                        "prompt_tokens": 1,
                        "completion_tokens": n,
                        "total_tokens": n + 1,
                    }
                yield chunk
        finally:
            self.closed.append(context.id())

    async def abort(self, context: Context) -> None:
        self.aborts.append(context.id())

    async def cleanup(self) -> None:
        self.calls.append("cleanup")


class Harness:
    def __init__(self, worker: Worker, task: asyncio.Task[int], client: Client) -> None:
        self.worker = worker
        self.task = task
        self.client = client

    async def generate(self, **request: Any) -> list[dict[str, Any]]:
        request.setdefault("token_ids", [1, 2, 3])
        stream = await self.client.generate(request)
        return await stream.collect()

    async def stop(self) -> int:
        self.worker.request_shutdown()
        return await asyncio.wait_for(self.task, 20)


@contextlib.asynccontextmanager
async def running(
    engine: ScriptedEngine, model_dir: Path, *, codec: str = "msgpack", **settings: Any
) -> AsyncIterator[Harness]:
    space = uuid.uuid4().hex
    engine.model = str(model_dir)
    config = WorkerConfig(
        namespace="dynamo", component="test", model_name=str(model_dir), discovery_backend="mem"
    )
    opts: dict[str, Any] = {"tcp_host": "127.0.0.1", "grace_period": 0.0, "request_codec": codec}
    opts.update(settings)
    worker = Worker(
        engine,
        config,
        settings=RuntimeSettings(**opts),
        store=MemoryStore(space),
        handle_signals=False,
    )
    task = asyncio.create_task(worker.run())
    client = Client("dynamo", "test", "generate", store=MemoryStore(space))
    try:
        await client.wait_for_instances(10)
        yield Harness(worker, task, client)
    finally:
        await client.close()
        if not task.done():
            worker.request_shutdown()
            await asyncio.wait_for(task, 20)
