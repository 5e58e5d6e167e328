"""The sample engine: rotating token ids, no model, no dependencies.

Behaves like Dynamo's stock sample engine so the two can be compared side by
side: ``max_tokens`` (request, else ``--max-tokens``) tokens ``1, 2, 3, …``,
one every ``--delay`` seconds, the last with ``finish_reason: "length"`` and
usage. It checks ``context.is_stopped()`` before every token and, when
stopped, ends with a ``cancelled`` terminal.

Run it beside the stock frontend (same flags as the stock sample worker)::

    python examples/sample_engine.py --model-name ./tiny-model --namespace dynamo \\
        --discovery-backend file
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import queue
import threading
from collections.abc import AsyncGenerator
from typing import Any

from dynamo_lite import (
    ComponentSnapshot,
    Context,
    DisaggregationMode,
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    KvEventSource,
    LLMEngine,
    LlmRegistration,
    PushSource,
    WorkerConfig,
    run,
)

logger = logging.getLogger(__name__)

VOCAB_WRAP = 32000
BLOCK_SIZE = 16
TOTAL_BLOCKS = 1000


class SampleEngine(LLMEngine):
    def __init__(
        self, model_name: str = "sample-model", max_tokens: int = 16, delay: float = 0.01
    ) -> None:
        self.model_name = model_name
        self.max_tokens = max_tokens
        self.delay = delay
        self.active = 0
        self._started = False
        self.disaggregation_mode = DisaggregationMode.AGGREGATED
        # KV routing, as the stock sample: synthetic blocks (hashes from a
        # counter, token ids 0..n) announced from a publisher thread, load
        # snapshots on its idle ticks.
        self._kv_used_blocks = 0
        self._publish_queue: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._publish_stop = threading.Event()
        self._publish_thread: threading.Thread | None = None
        self._snapshot_publisher: Any = None
        self._block_hash_counter = itertools.count(1)

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[SampleEngine, WorkerConfig]:
        p = argparse.ArgumentParser(description="dynamo_lite sample engine")
        p.add_argument("--model-name", default="sample-model")
        p.add_argument("--namespace", default="dynamo")
        p.add_argument("--component", default="sample")
        p.add_argument("--endpoint", default="generate")
        p.add_argument("--max-tokens", type=int, default=16)
        p.add_argument("--delay", type=float, default=0.01)
        p.add_argument("--endpoint-types", default="chat,completions")
        p.add_argument("--discovery-backend", default="etcd")
        p.add_argument("--request-plane", default="tcp")
        p.add_argument(
            "--response-plane", choices=["tcp"], default=os.environ.get("DYN_RESPONSE_PLANE", "tcp")
        )
        p.add_argument("--event-plane", default=None)
        p.add_argument(
            "--disaggregation-mode",
            choices=[m.value for m in DisaggregationMode],
            default=DisaggregationMode.AGGREGATED.value,
        )
        p.add_argument("--route-to-encoder", action="store_true")
        p.add_argument("--disable-kv-routing", action="store_true")
        args = p.parse_args(argv)
        mode = DisaggregationMode(args.disaggregation_mode)
        engine = cls(args.model_name, args.max_tokens, args.delay)
        engine.disaggregation_mode = mode
        config = WorkerConfig(
            namespace=args.namespace,
            component=args.component,
            endpoint=args.endpoint,
            model_name=args.model_name,
            served_model_name=args.model_name,
            endpoint_types=args.endpoint_types,
            discovery_backend=args.discovery_backend,
            request_plane=args.request_plane,
            response_plane=args.response_plane,
            event_plane=args.event_plane,
            disaggregation_mode=mode,
            route_to_encoder=args.route_to_encoder,
            enable_kv_routing=not args.disable_kv_routing,
        )
        return engine, config

    async def start(self, worker_id: int) -> EngineConfig:
        if self._started:
            raise RuntimeError("SampleEngine.start() called twice")
        self._started = True
        logger.info("sample engine ready (worker_id=%x)", worker_id)
        return EngineConfig(
            model=self.model_name,
            served_model_name=self.model_name,
            llm=LlmRegistration(
                context_length=2048,
                kv_cache_block_size=16,
                total_kv_blocks=1000,
                max_num_seqs=64,
                max_num_batched_tokens=2048,
            ),
        )

    # --- KV routing (synthetic, like the stock sample) ------------------------------
    async def kv_event_sources(self) -> list[KvEventSource]:
        if self.disaggregation_mode is DisaggregationMode.ENCODE:
            return []
        return [PushSource(on_ready=self._start_publisher_thread, dp_rank=0)]

    def component_metrics_dp_ranks(self) -> list[int]:
        return [] if self.disaggregation_mode is DisaggregationMode.ENCODE else [0]

    def attach_snapshot_publisher(self, publisher: Any) -> None:
        self._snapshot_publisher = publisher

    def _start_publisher_thread(self, publisher: Any) -> None:
        self._publish_thread = threading.Thread(
            target=self._publish_loop, args=(publisher,), daemon=True, name="sample-kv-publisher"
        )
        self._publish_thread.start()

    def _publish_loop(self, publisher: Any) -> None:
        while not self._publish_stop.is_set():
            try:
                kind, payload = self._publish_queue.get(timeout=0.1)
            except queue.Empty:
                if self._snapshot_publisher is not None:
                    self._snapshot_publisher.publish(
                        0,
                        ComponentSnapshot(
                            kv_used_blocks=self._kv_used_blocks,
                            kv_total_blocks=TOTAL_BLOCKS,
                            gpu_cache_usage=self._kv_used_blocks / TOTAL_BLOCKS,
                            dp_rank=0,
                            kv_cache_hit_rate=None,
                        ),
                    )
                continue
            try:
                if kind == "stored":
                    publisher.publish_stored(**payload)
                else:
                    publisher.publish_removed(**payload)
            except Exception:
                logger.exception("sample publisher dropped a %s event", kind)

    def _emit_synthetic_events(self, prompt_len: int) -> list[int]:
        count = max(1, prompt_len // BLOCK_SIZE)
        hashes = [next(self._block_hash_counter) for _ in range(count)]
        self._publish_queue.put(
            (
                "stored",
                {
                    "token_ids": list(range(count * BLOCK_SIZE)),
                    "num_block_tokens": [BLOCK_SIZE] * count,
                    "block_hashes": hashes,
                },
            )
        )
        self._kv_used_blocks += count
        return hashes

    def _release_synthetic_blocks(self, hashes: list[int]) -> None:
        self._publish_queue.put(("removed", {"block_hashes": hashes}))
        self._kv_used_blocks = max(0, self._kv_used_blocks - len(hashes))

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        prompt_len = len(request.get("token_ids") or [])
        stop: dict[str, Any] = request.get("stop_conditions") or {}
        max_new = stop.get("max_tokens") or self.max_tokens

        def usage(n: int) -> dict[str, int]:
            return {
                "prompt_tokens": prompt_len,
                "completion_tokens": n,
                "total_tokens": prompt_len + n,
            }

        self.active += 1
        kv = self._publish_thread is not None
        block_hashes = self._emit_synthetic_events(prompt_len) if kv else []
        try:
            for i in range(max_new):
                if context.is_stopped():
                    yield {
                        "token_ids": [],
                        "index": 0,
                        "finish_reason": "cancelled",
                        "completion_usage": usage(i),
                    }
                    return
                # Like the stock engine, yield to the loop before every token,
                # even with no delay: generation is never one blocking step.
                await asyncio.sleep(self.delay)
                chunk: GenerateChunk = {"token_ids": [(i + 1) % VOCAB_WRAP], "index": 0}
                if i == max_new - 1:
                    chunk["finish_reason"] = "length"
                    chunk["completion_usage"] = usage(max_new)
                yield chunk
        finally:
            self.active -= 1
            if kv:
                self._release_synthetic_blocks(block_hashes)

    async def abort(self, context: Context) -> None:
        logger.debug("request %s aborted", context.id())

    async def cleanup(self) -> None:
        # The publisher thread must be gone before cleanup returns (PushSource contract).
        self._publish_stop.set()
        if self._publish_thread is not None:
            await asyncio.to_thread(self._publish_thread.join, 1.0)
        logger.info("sample engine stopped")


def main() -> None:
    run(SampleEngine)


if __name__ == "__main__":
    main()
