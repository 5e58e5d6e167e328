"""A *stock-SDK* engine that feeds the stock KV publisher known inputs (stock venv).

Default: it declares a ``ZmqSource``, binds a PUB socket (dynamo_lite's
pure-Python one, loaded without the rest of dynamo_lite) and, on its first
request, sends the vLLM-style event batches of ``relay_inputs.json`` (this
folder), one message per batch: ``topic "" | seq u64 BE | msgpack batch``.
With ``--push`` it declares a ``PushSource`` instead and makes the calls of
``push_inputs.json`` on the publisher it receives (errors are logged).
``capture_relay.py`` records what the stock worker publishes.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
# Only the PUB socket and the ZMTP codec are needed: stub the package roots so
# dynamo_lite/__init__.py (and its dependencies) is not imported.
for name, sub in (("dynamo_lite", ""), ("dynamo_lite.transport", "transport")):
    mod = types.ModuleType(name)
    mod.__path__ = [str(ROOT / "dynamo_lite" / sub)]
    sys.modules[name] = mod

import msgspec  # noqa: E402
from dynamo.common.backend import EngineConfig, LLMEngine, LlmRegistration, WorkerConfig  # noqa: E402
import logging  # noqa: E402

from dynamo.common.backend.publisher import PushSource, ZmqSource  # noqa: E402
from dynamo.common.backend.run import run  # noqa: E402

from dynamo_lite.transport.zmq_plane import ZmqPubServer  # noqa: E402


class RelayEngine(LLMEngine):
    def __init__(self, model: str, push: bool = False) -> None:
        self.model = model
        self.push = push
        self.publisher: Any = None
        self.pub: Any = None
        self.sent = False

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[Any, Any]:
        p = argparse.ArgumentParser()
        p.add_argument("--model-name", required=True)
        p.add_argument("--push", action="store_true")
        args = p.parse_args(argv)
        cfg = WorkerConfig(
            namespace="dynamo",
            component="relay",
            endpoint="generate",
            model_name=args.model_name,
            served_model_name=args.model_name,
            discovery_backend="file",
        )
        return cls(args.model_name, args.push), cfg

    async def start(self, worker_id: int) -> Any:
        self.pub = ZmqPubServer("127.0.0.1")
        await self.pub.start()
        return EngineConfig(
            model=self.model,
            served_model_name=self.model,
            llm=LlmRegistration(context_length=2048, kv_cache_block_size=16, total_kv_blocks=100),
        )

    async def kv_event_sources(self) -> list[Any]:
        if self.push:
            return [PushSource(on_ready=self._ready, dp_rank=0)]
        return [ZmqSource(endpoint=f"tcp://127.0.0.1:{self.pub.port}", topic="", dp_rank=0)]

    def _ready(self, publisher: Any) -> None:
        self.publisher = publisher

    async def generate(self, request: dict[str, Any], context: Any) -> Any:
        if not self.sent and self.push:
            self.sent = True
            for i, call in enumerate(json.loads((HERE / "push_inputs.json").read_text())):
                try:
                    getattr(self.publisher, call["call"])(**call["kwargs"])
                except Exception as exc:
                    logging.getLogger("relay_engine").warning("call %d refused: %r", i, exc)
        if not self.sent:
            self.sent = True
            batches = json.loads((HERE / "relay_inputs.json").read_text())
            for seq, batch in enumerate(batches):
                self.pub.send([b"", seq.to_bytes(8, "big"), msgspec.msgpack.encode(batch)])
        yield {"token_ids": [1], "index": 0, "finish_reason": "length"}

    async def cleanup(self) -> None:
        await self.pub.close()


if __name__ == "__main__":
    run(RelayEngine)
