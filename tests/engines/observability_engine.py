"""A test engine for health, canary, metrics and logging checks.

The sample engine (same flags) plus these environment knobs:

* ``OBS_EVENTS=<path>`` — calls are appended there as JSON lines:
  ``health_check_payload``, ``probe`` (the request a canary sent),
  ``probe_closed`` (a probe generator was closed before it finished),
  ``request`` (a real request's id and trace headers);
* ``OBS_PROBE_MODE=<path>`` — a file whose content decides how the next
  canary probe goes: ``ok`` (one token, ``length``), ``error`` (raises),
  ``finish_error`` (a terminal ``finish_reason: "error: …"``), ``empty``
  (yields nothing), ``timeout`` (never yields); default ``ok``;
* ``OBS_ENGINE_PAYLOAD`` — JSON ``health_check_payload()`` returns (``null``
  for None); default a one-token payload with ``"who": "engine"``;
* ``OBS_CONFIG_PAYLOAD`` — JSON put into ``WorkerConfig.health_check_payload``;
* ``OBS_DP_RANKS=1`` — declare rank 0 and publish one snapshot for it;
* ``OBS_ENGINE_METRICS=1`` — bridge an engine-owned registry with one counter,
  ``obs_engine_requests_total``, counting real requests;
* ``OBS_CLEANUP_DELAY=<seconds>`` — ``cleanup()`` sleeps that long first.

A real request with ``"stall_secs": s`` yields one token, goes silent for
``s`` seconds, then finishes normally.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from dynamo_lite import (
    ComponentSnapshot,
    Context,
    GenerateChunk,
    GenerateRequest,
    WorkerConfig,
    run,
)
from dynamo_lite.health_check import build_health_check_payload, is_probe
from dynamo_lite.metrics import EngineMetrics, register_engine_registry
from tests.engines.examples_loader import load_example

SampleEngine: Any = load_example("sample_engine.py").SampleEngine


def record(kind: str, **fields: Any) -> None:
    path = os.environ.get("OBS_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": kind, "t": time.time(), **fields}) + "\n")


def probe_mode() -> str:
    path = os.environ.get("OBS_PROBE_MODE")
    if not path:
        return "ok"
    try:
        return Path(path).read_text().strip() or "ok"
    except OSError:
        return "ok"


class ObservabilityEngine(SampleEngine):  # type: ignore[misc]
    registry: CollectorRegistry | None = None
    served: Counter | None = None

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[Any, WorkerConfig]:
        engine, config = await super().from_args(argv)
        raw = os.environ.get("OBS_CONFIG_PAYLOAD")
        if raw:
            config.health_check_payload = json.loads(raw)
        return engine, config

    async def register_prometheus(self, metrics: Any) -> None:
        record("register_prometheus", handle=type(metrics).__name__)
        if os.environ.get("OBS_ENGINE_METRICS") and isinstance(metrics, EngineMetrics):
            self.registry = CollectorRegistry()
            self.served = Counter(
                "obs_engine_requests", "Requests the engine served", registry=self.registry
            )
            register_engine_registry(metrics, self.registry, prefix_filters=["obs_engine_"])

    def component_metrics_dp_ranks(self) -> list[int]:
        return [0] if os.environ.get("OBS_DP_RANKS") else []

    def attach_snapshot_publisher(self, publisher: Any) -> None:
        publisher.publish(
            0,
            ComponentSnapshot(
                kv_used_blocks=10, kv_total_blocks=1000, gpu_cache_usage=0.25, dp_rank=0
            ),
        )

    async def health_check_payload(self) -> dict[str, Any] | None:
        record("health_check_payload")
        raw = os.environ.get("OBS_ENGINE_PAYLOAD")
        if raw is not None:
            value: dict[str, Any] | None = json.loads(raw)
            return value
        return build_health_check_payload(7, extras={"who": "engine"})

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        if is_probe(request):
            async for chunk in self._probe(request):
                yield chunk
            return
        record("request", id=context.id(), trace_headers=context.trace_headers())
        if self.served is not None:
            self.served.inc()
        stall = request.get("stall_secs")  # type: ignore[typeddict-item]
        if stall:
            yield {"token_ids": [1], "index": 0}
            await asyncio.sleep(float(stall))
            yield {"token_ids": [2], "index": 0, "finish_reason": "length"}
            return
        async for chunk in super().generate(request, context):
            yield chunk

    async def _probe(self, request: GenerateRequest) -> AsyncGenerator[GenerateChunk, None]:
        mode = probe_mode()
        record("probe", mode=mode, request=request)
        finished = False
        try:
            if mode == "error":
                raise RuntimeError("probe: engine is broken")
            if mode == "empty":
                finished = True
                return
            if mode == "timeout":
                await asyncio.sleep(3600)
            if mode == "finish_error":
                yield {"token_ids": [], "index": 0, "finish_reason": "error: probe failed"}
            else:
                yield {"token_ids": [7], "index": 0, "finish_reason": "length"}
            finished = True
        finally:
            if not finished:
                record("probe_closed", mode=mode)

    async def cleanup(self) -> None:
        delay = float(os.environ.get("OBS_CLEANUP_DELAY", "0") or 0)
        if delay:
            await asyncio.sleep(delay)
        await super().cleanup()


if __name__ == "__main__":
    run(ObservabilityEngine)
