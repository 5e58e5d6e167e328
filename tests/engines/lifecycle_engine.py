"""A test engine that records every lifecycle call and injects failures.

Runs as a worker script with the sample engine's flags. Every call is
appended as one JSON line to ``PROBE_EVENTS``. Environment knobs:

* ``PROBE_FAIL=<hook>`` — that hook raises (``from_args``, ``start``,
  ``register_prometheus``, ``kv_event_sources``, ``on_endpoint_ready``,
  ``cleanup``, ``health_check_payload``);
* ``PROBE_DELAY_<HOOK>=<seconds>`` — that hook sleeps first (``START``,
  ``CLEANUP``);
* ``PROBE_DP_RANKS=1`` — declare rank 0, so ``attach_snapshot_publisher`` runs;
* ``PROBE_QUIESCENT=<n>`` — ``is_quiescent()`` returns True from the n-th call.

Hooks that run around registration also record whether the model card and
the instance record already exist in the file store (``DYN_FILE_KV``).
``max_tokens == 780`` makes ``generate`` record the worker's task and
file-descriptor counts (for leak checks).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from dynamo_lite import (
    Context,
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    PushSource,
    WorkerConfig,
    run,
)
from tests.engines.examples_loader import load_example

SampleEngine: Any = load_example("sample_engine.py").SampleEngine


def record(kind: str, **fields: Any) -> None:
    path = os.environ.get("PROBE_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": kind, "t": time.time(), **fields}) + "\n")


def registered() -> dict[str, bool]:
    root = Path(os.environ.get("DYN_FILE_KV", "/nonexistent")) / "v1"
    return {
        "card": any((root / "mdc").glob("*")),
        # The serving endpoint's record; the KV query endpoint has its own.
        "instance": any(
            "worker%5Fkv%5Fquery" not in p.name for p in (root / "instances").glob("*")
        ),
    }


async def hook(name: str, *, snapshot: bool = False) -> None:
    fields: dict[str, Any] = registered() if snapshot else {}
    record(name, **fields)
    delay = float(os.environ.get(f"PROBE_DELAY_{name.upper()}", "0") or 0)
    if delay:
        await asyncio.sleep(delay)
    if os.environ.get("PROBE_FAIL") == name:
        raise RuntimeError(f"probe: {name} failed on purpose")


class LifecycleEngine(SampleEngine):  # type: ignore[misc]
    quiescent_calls = 0

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[Any, WorkerConfig]:
        await hook("from_args")
        engine, config = await super().from_args(argv)
        return engine, config

    async def start(self, worker_id: int) -> EngineConfig:
        record("start", worker_id=worker_id, loop=type(asyncio.get_running_loop()).__module__)
        delay = float(os.environ.get("PROBE_DELAY_START", "0") or 0)
        if delay:
            await asyncio.sleep(delay)
        if os.environ.get("PROBE_FAIL") == "start":
            raise RuntimeError("probe: start failed on purpose")
        config: EngineConfig = await super().start(worker_id)
        record("start_done")
        return config

    async def register_prometheus(self, metrics: Any) -> None:
        await hook("register_prometheus")

    def component_metrics_dp_ranks(self) -> list[int]:
        record("component_metrics_dp_ranks")
        return [0] if os.environ.get("PROBE_DP_RANKS") else []

    async def kv_event_sources(self) -> list[Any]:
        await hook("kv_event_sources")
        return [PushSource(on_ready=lambda publisher: record("push_source_on_ready"))]

    def attach_snapshot_publisher(self, publisher: Any) -> None:
        record("attach_snapshot_publisher")

    async def on_endpoint_ready(self, endpoint: Any) -> None:
        await hook("on_endpoint_ready", snapshot=True)

    def supported_controls(self) -> set[str]:
        record("supported_controls", **registered())
        return set()

    def supported_updates(self) -> set[str]:
        record("supported_updates", **registered())
        return set()

    async def health_check_payload(self) -> dict[str, Any] | None:
        await hook("health_check_payload", snapshot=True)
        return None

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        max_tokens = (request.get("stop_conditions") or {}).get("max_tokens")
        if max_tokens == 780:
            record("stats", tasks=len(asyncio.all_tasks()), fds=len(os.listdir("/proc/self/fd")))
            yield {"token_ids": [1], "index": 0, "finish_reason": "stop"}
            return
        async for chunk in super().generate(request, context):
            yield chunk
            if chunk.get("finish_reason"):
                record("terminal", id=context.id(), finish_reason=chunk["finish_reason"])

    async def abort(self, context: Context) -> None:
        record("abort", id=context.id(), stopped=context.is_stopped(), killed=context.is_killed())

    async def drain(self) -> None:
        record("drain")

    async def is_quiescent(self) -> bool | None:
        self.quiescent_calls += 1
        record("is_quiescent", n=self.quiescent_calls)
        target = int(os.environ.get("PROBE_QUIESCENT", "0") or 0)
        return bool(target) and self.quiescent_calls >= target

    async def cleanup(self) -> None:
        await hook("cleanup")


if __name__ == "__main__":
    run(LifecycleEngine)
