"""A prefix-caching test engine for KV-aware routing, runnable on either SDK.

``python tests/engines/prefix_cache_engine.py --model-name DIR …`` runs it on
dynamo_lite; with ``PREFIX_ENGINE_STOCK=1`` (in the stock venv) on the stock
``dynamo.common.backend``. It announces every full 16-token block of each
prompt with ``publish_stored`` (the prompt's real token ids, chained block
hashes, ``parent_hash`` = the last block it already held) from its own
publisher thread, never evicts, and pushes a load snapshot after each request.
With ``--zmq-source`` (dynamo_lite only) the engine instead binds its own ZMQ
PUB socket, sends vLLM-format event batches on it and declares a
``ZmqSource``, so the worker relays them.
A test tells the workers apart by their ``PREFIX_ENGINE_LOG`` files: one JSON
line per request (prompt length, blocks already held).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

if os.environ.get("PREFIX_ENGINE_STOCK") == "1":
    from dynamo.common.backend import EngineConfig, LLMEngine, LlmRegistration, WorkerConfig
    from dynamo.common.backend.publisher import ComponentSnapshot, PushSource
    from dynamo.common.backend.run import run
else:
    from dynamo_lite import (
        ComponentSnapshot,
        EngineConfig,
        LLMEngine,
        LlmRegistration,
        PushSource,
        WorkerConfig,
        run,
    )

BLOCK = 16


def _chain(parent: int, tokens: list[int]) -> int:
    digest = hashlib.blake2b(
        parent.to_bytes(8, "little", signed=True)
        + b"".join(t.to_bytes(4, "little") for t in tokens),
        digest_size=8,
    ).digest()
    # Signed 64-bit, as engines hand them over.
    return int.from_bytes(digest, "little", signed=True)


class PrefixCacheEngine(LLMEngine):  # type: ignore[misc]
    def __init__(self, model: str, log_path: str | None, zmq_source: bool = False) -> None:
        self.model = model
        self.zmq_source = zmq_source
        self._pub: Any = None
        self._seq = 0
        self.log_path = log_path
        self.held: set[int] = set()
        self.worker_id = 0
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._snapshots: Any = None
        self._lock = threading.Lock()

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[Any, Any]:
        p = argparse.ArgumentParser()
        p.add_argument("--model-name", required=True)
        p.add_argument("--namespace", default="dynamo")
        p.add_argument("--component", default="prefix")
        p.add_argument("--discovery-backend", default="file")
        p.add_argument("--event-plane", default=None)
        p.add_argument("--request-plane", default="tcp")
        p.add_argument("--disable-kv-routing", action="store_true")
        p.add_argument("--zmq-source", action="store_true")
        args = p.parse_args(argv)
        cfg = WorkerConfig(
            namespace=args.namespace,
            component=args.component,
            endpoint="generate",
            model_name=args.model_name,
            served_model_name=args.model_name,
            discovery_backend=args.discovery_backend,
            event_plane=args.event_plane,
            request_plane=args.request_plane,
            enable_kv_routing=not args.disable_kv_routing,
        )
        engine = cls(args.model_name, os.environ.get("PREFIX_ENGINE_LOG"), args.zmq_source)
        return engine, cfg

    async def start(self, worker_id: int) -> Any:
        self.worker_id = worker_id
        if self.zmq_source:
            from dynamo_lite.transport.zmq_plane import ZmqPubServer

            self._pub = ZmqPubServer("127.0.0.1")
            await self._pub.start()
        return EngineConfig(
            model=self.model,
            served_model_name=self.model,
            llm=LlmRegistration(
                context_length=2048,
                kv_cache_block_size=BLOCK,
                total_kv_blocks=1000,
                max_num_seqs=64,
                max_num_batched_tokens=2048,
            ),
        )

    async def kv_event_sources(self) -> list[Any]:
        if self._pub is not None:
            from dynamo_lite import ZmqSource

            return [ZmqSource(endpoint=f"tcp://127.0.0.1:{self._pub.port}", topic="", dp_rank=0)]
        return [PushSource(on_ready=self._on_ready, dp_rank=0)]

    def component_metrics_dp_ranks(self) -> list[int]:
        return [0]

    def attach_snapshot_publisher(self, publisher: Any) -> None:
        self._snapshots = publisher

    def _on_ready(self, publisher: Any) -> None:
        self._thread = threading.Thread(
            target=self._publish_loop, args=(publisher,), daemon=True, name="prefix-publisher"
        )
        self._thread.start()

    def _publish_loop(self, publisher: Any) -> None:
        while True:
            kind, payload = self._queue.get()
            if kind == "stop":
                return
            if kind == "stored":
                publisher.publish_stored(**payload)
            elif kind == "snapshot" and self._snapshots is not None:
                self._snapshots.publish(
                    0,
                    ComponentSnapshot(
                        kv_used_blocks=payload,
                        kv_total_blocks=1000,
                        gpu_cache_usage=payload / 1000.0,
                        dp_rank=0,
                    ),
                )

    def _announce(self, tokens: list[int]) -> int:
        """Queue a stored event for the prompt's new full blocks; returns how
        many blocks were already held (the prefix hit)."""
        hashes: list[int] = []
        parent = 0
        for i in range(len(tokens) // BLOCK):
            parent = _chain(parent, tokens[i * BLOCK : (i + 1) * BLOCK])
            hashes.append(parent)
        with self._lock:
            first_new = 0
            while first_new < len(hashes) and hashes[first_new] in self.held:
                first_new += 1
            new = hashes[first_new:]
            self.held.update(new)
            used = len(self.held)
        if new and self._pub is not None:
            import msgpack

            event = [
                "BlockStored",
                new,
                hashes[first_new - 1] if first_new else None,
                tokens[first_new * BLOCK : len(hashes) * BLOCK],
                BLOCK,
                None,
                "GPU",
            ]
            self._pub.send(
                [b"", self._seq.to_bytes(8, "big"), msgpack.packb([time.time(), [event], 0])]
            )
            self._seq += 1
        elif new:
            self._queue.put(
                (
                    "stored",
                    {
                        "token_ids": tokens[first_new * BLOCK : len(hashes) * BLOCK],
                        "num_block_tokens": [BLOCK] * len(new),
                        "block_hashes": new,
                        "parent_hash": hashes[first_new - 1] if first_new else None,
                    },
                )
            )
        if self._thread is not None:
            self._queue.put(("snapshot", used))
        return first_new

    async def generate(
        self, request: dict[str, Any], context: Any
    ) -> AsyncGenerator[dict[str, Any], None]:
        tokens = [int(t) for t in request.get("token_ids") or []]
        hit = self._announce(tokens)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"prompt_len": len(tokens), "hit_blocks": hit}) + "\n")
        n = int((request.get("stop_conditions") or {}).get("max_tokens") or 2)
        for i in range(n):
            await asyncio.sleep(0.001)
            out: dict[str, Any] = {"token_ids": [100 + i], "index": 0}
            if i == n - 1:
                out["finish_reason"] = "length"
            yield out

    async def cleanup(self) -> None:
        if self._pub is not None:
            await self._pub.close()
        self._queue.put(("stop", None))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)


if __name__ == "__main__":
    run(PrefixCacheEngine)
