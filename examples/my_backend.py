"""The seed guide's ``MyBackend`` ("Writing a Python Unified Backend", steps 2–5),
running on dynamo_lite.

Everything between the two rulers is the guide's code, unchanged except for
its import lines (``dynamo._core`` / ``dynamo.common.backend`` →
``dynamo_lite``). The guide leaves two engine-specific helpers to the
author, ``heavy_init()`` and ``MyBackend._next_token()``; minimal stand-ins
follow the second ruler. Run it like the guide does::

    python examples/my_backend.py --model-name ./tiny-model --namespace dynamo \\
        --discovery-backend file
"""

# ---------------------------------------------------------------------------
from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncGenerator

from dynamo_lite import Context
from dynamo_lite import (
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    LLMEngine,
    WorkerConfig,
)


class MyBackend(LLMEngine):
    def __init__(self, model_name: str, max_tokens: int = 16):
        self.model_name = model_name
        self.max_tokens = max_tokens
        # Heavy state (engine handles, schedulers, KV allocators) is
        # left None here and initialized in start().
        self._engine = None

    @classmethod
    async def from_args(
        cls, argv: list[str] | None = None
    ) -> tuple[MyBackend, WorkerConfig]:
        parser = argparse.ArgumentParser(prog="my-backend")
        parser.add_argument("--model-name", default="my-model")
        parser.add_argument("--max-tokens", type=int, default=16)
        # Runtime / discovery flags — every unified backend needs these.
        parser.add_argument("--namespace", default="dynamo")
        parser.add_argument("--component", default="backend")
        parser.add_argument("--endpoint", default="generate")
        parser.add_argument("--endpoint-types", default="chat,completions")
        parser.add_argument("--discovery-backend", default="etcd")
        parser.add_argument("--request-plane", default="tcp")
        parser.add_argument("--event-plane", default=None)
        args = parser.parse_args(argv)

        engine = cls(model_name=args.model_name, max_tokens=args.max_tokens)
        worker_config = WorkerConfig(
            namespace=args.namespace,
            component=args.component,
            endpoint=args.endpoint,
            model_name=args.model_name,
            served_model_name=args.model_name,
            endpoint_types=args.endpoint_types,
            discovery_backend=args.discovery_backend,
            request_plane=args.request_plane,
            event_plane=args.event_plane,
        )
        return engine, worker_config

    async def start(self, worker_id: int) -> EngineConfig:
        # ... load weights, build scheduler, warm up CUDA, etc.
        # Heavy: may take minutes. Emit logger.info checkpoints so
        # operators see progress (Worker logs around start() but not
        # inside it).
        self._engine = await heavy_init(self.model_name)

        return EngineConfig(
            model=self.model_name,
            served_model_name=self.model_name,
            context_length=8192,
            kv_cache_block_size=16,    # None if no block-structured KV
            total_kv_blocks=1024,
            max_num_seqs=64,
            max_num_batched_tokens=8192,
        )

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        prompt_tokens = list(request.get("token_ids", []))
        prompt_len = len(prompt_tokens)

        stop_conditions = request.get("stop_conditions") or {}
        max_new = stop_conditions.get("max_tokens") or self.max_tokens

        def _usage(completion_tokens: int) -> dict[str, int]:
            return {
                "prompt_tokens": prompt_len,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_len + completion_tokens,
            }

        for i in range(max_new):
            if context.is_stopped():
                yield {
                    "token_ids": [],
                    "index": 0,
                    "finish_reason": "cancelled",
                    "completion_usage": _usage(i),
                }
                return

            token_id = await self._next_token(prompt_tokens)

            chunk: GenerateChunk = {"token_ids": [token_id], "index": 0}
            if i == max_new - 1:
                chunk["finish_reason"] = "length"
                chunk["completion_usage"] = _usage(max_new)
            yield chunk

    async def cleanup(self) -> None:
        if self._engine is not None:
            await self._engine.shutdown()
            self._engine = None


# src/my_backend/main.py
from dynamo_lite import run


def main() -> None:
    run(MyBackend)


# ---------------------------------------------------------------------------
# The helpers the guide leaves to the engine author.


class _ToyEngine:
    """Stands in for a real inference engine: echoes the prompt back, one token at a time."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.steps = 0

    async def next_token(self, prompt_tokens: list[int]) -> int:
        await asyncio.sleep(0)
        token = prompt_tokens[self.steps % len(prompt_tokens)] if prompt_tokens else 0
        self.steps += 1
        return token

    async def shutdown(self) -> None:
        await asyncio.sleep(0)


async def heavy_init(model_name: str) -> _ToyEngine:
    return _ToyEngine(model_name)


async def _next_token(self: MyBackend, prompt_tokens: list[int]) -> int:
    engine = self._engine
    if engine is None:
        raise RuntimeError("generate() called before start()")
    return await engine.next_token(prompt_tokens)


MyBackend._next_token = _next_token  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
