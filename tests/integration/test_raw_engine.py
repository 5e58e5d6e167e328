"""RawEngine: opaque JSON request and response objects, no token pipeline."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from dynamo_lite import (
    Context,
    EngineConfig,
    ModelInput,
    RawEngine,
    RawRequest,
    RawResponseChunk,
    RuntimeSettings,
    Worker,
    WorkerConfig,
)
from dynamo_lite.client import Client, RemoteError
from dynamo_lite.discovery import MemoryStore

pytestmark = pytest.mark.anyio


class ImageEngine(RawEngine):
    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[ImageEngine, WorkerConfig]:
        raise NotImplementedError

    async def start(self, worker_id: int) -> EngineConfig:
        return EngineConfig(model="tiny-diffusion")

    async def generate(
        self, request: RawRequest, context: Context
    ) -> AsyncGenerator[RawResponseChunk, None]:
        if request.get("bad"):
            yield "not an object"  # type: ignore[misc]
            return
        for step in range(request.get("steps", 2)):
            yield {"progress": (step + 1) / request.get("steps", 2)}
        yield {"created": 1, "data": [{"b64_json": "AA=="}], "prompt": request.get("prompt")}

    async def cleanup(self) -> None:
        pass


async def test_raw_engine_streams_objects_unchanged(tmp_path: Path) -> None:
    space = uuid.uuid4().hex
    config = WorkerConfig(
        namespace="dynamo",
        component="images",
        model_name="tiny-diffusion",
        model_input=ModelInput.Text,
        endpoint_types="images",
        discovery_backend="mem",
    )
    worker = Worker(
        ImageEngine(),
        config,
        store=MemoryStore(space),
        handle_signals=False,
        settings=RuntimeSettings(tcp_host="127.0.0.1", grace_period=0),
    )
    task = asyncio.create_task(worker.run())
    async with Client("dynamo", "images", "generate", store=MemoryStore(space)) as client:
        await client.wait_for_instances(10)
        stream = await client.generate({"prompt": "a cat", "steps": 3})
        outs = await stream.collect()
        assert outs[:3] == [{"progress": 1 / 3}, {"progress": 2 / 3}, {"progress": 1.0}]
        assert outs[-1]["prompt"] == "a cat"
        with pytest.raises(RemoteError, match="not dict"):
            await (await client.generate({"bad": True})).collect()
        card = worker.card
        assert card is not None
        assert card["model_type"] == "Images" and card["model_input"] == "Text"
    worker.request_shutdown()
    assert await asyncio.wait_for(task, 10) == 0
