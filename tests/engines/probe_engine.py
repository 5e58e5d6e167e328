"""A test engine: the sample engine's behaviour plus observable side effects.

Runs as a worker script (``python tests/engines/probe_engine.py <sample flags>``).
Every lifecycle call and every ``abort()`` is appended as one JSON line to the
file named by ``PROBE_EVENTS``, so a test can count them from outside. Magic
``max_tokens`` values select misbehaviour:

* 777 → raise ``InvalidArgument`` before the first token;
* 778 → raise ``ValueError`` mid-stream (after 2 tokens);
* 779 → raise ``RuntimeError`` before the first token;
* 1998 → flood: one token per chunk padded to 16 KiB, as fast as possible,
  until stopped (fills socket buffers, e.g. behind a network partition);
* the fault table of ``faults.py`` (1000…1214), shared with the stock-SDK
  ``stock_fault_engine.py`` so both workers misbehave identically.

``--disaggregation-mode`` plays the role the way the stock sample engine
does: prefill clamps to one token and hands ``disaggregated_params`` to the
decode peer on its terminal chunk, decode requires a ``prefill_result``
(canary probes excepted), encode answers with one ``encoder_result`` chunk.

With ``PROBE_REPORT_MODULES=1`` ``cleanup()`` records every loaded extension
module (the pure-mode test checks none is third-party compiled code).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import dynamo_lite
from dynamo_lite import (
    Context,
    DisaggregationMode,
    GenerateChunk,
    GenerateRequest,
    InvalidArgument,
    WorkerConfig,
    run,
)
from dynamo_lite.disagg import (
    encoder_terminal_chunk,
    enforce_prefill_max_tokens,
    is_probe,
    require_prefill_result,
)
from tests.engines.examples_loader import load_example

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults

SampleEngine: Any = load_example("sample_engine.py").SampleEngine


def record(kind: str, **fields: Any) -> None:
    path = os.environ.get("PROBE_EVENTS")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"event": kind, "t": time.time(), **fields}) + "\n")


def loaded_extension_modules() -> list[str]:
    out = []
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if origin.endswith((".so", ".pyd")):
            out.append(f"{name}={origin}")
    return sorted(out)


class ProbeEngine(SampleEngine):  # type: ignore[misc]
    mode = DisaggregationMode.AGGREGATED

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[Any, WorkerConfig]:
        engine, config = await super().from_args(argv)
        engine.mode = config.disaggregation_mode
        return engine, config

    async def start(self, worker_id: int) -> Any:
        record("start", worker_id=worker_id)
        return await super().start(worker_id)

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        max_tokens = (request.get("stop_conditions") or {}).get("max_tokens")
        prefill_result = request.get("prefill_result")
        record(
            "generate",
            id=context.id(),
            max_tokens=max_tokens,
            mode=self.mode.value,
            prefill_result=prefill_result,
        )
        if faults.is_fault(max_tokens):
            async for fault_chunk in faults.fault_stream(max_tokens, dynamo_lite):
                yield fault_chunk
            return
        if self.mode is DisaggregationMode.ENCODE:
            prompt = len(request.get("token_ids") or [])
            usage = {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt}
            result = {"handle": f"probe-encoder:{context.id()}"}
            yield encoder_terminal_chunk(result, completion_usage=usage)
            return
        if self.mode is DisaggregationMode.DECODE and not is_probe(request):
            require_prefill_result(request, self.mode)
        if self.mode is DisaggregationMode.PREFILL:
            enforce_prefill_max_tokens(request)
        if max_tokens == 777:
            raise InvalidArgument("probe: 777 is not an acceptable max_tokens")
        if max_tokens == 779:
            raise RuntimeError("probe: internal failure")
        if max_tokens == 1998:
            flood: Any = {"token_ids": [33], "index": 0, "probe_padding": "x" * 16384}
            while not context.is_stopped():
                yield flood
                await asyncio.sleep(0)
            return
        n = 0
        async for chunk in super().generate(request, context):
            n += 1
            if max_tokens == 778 and n == 3:
                raise ValueError("probe: mid-stream value error")
            if self.mode is DisaggregationMode.PREFILL and chunk.get("finish_reason"):
                chunk["disaggregated_params"] = {
                    "probe_handle": context.id(),
                    "completed_tokens": list(chunk["token_ids"]),
                }
            yield chunk
            if chunk.get("finish_reason"):
                record("terminal", id=context.id(), finish_reason=chunk["finish_reason"])

    async def is_quiescent(self) -> bool | None:
        # A prefill worker is quiescent once no request (and so no KV handoff) is running.
        return self.active == 0

    async def abort(self, context: Context) -> None:
        record("abort", id=context.id(), stopped=context.is_stopped(), killed=context.is_killed())

    async def cleanup(self) -> None:
        record("cleanup")
        if os.environ.get("PROBE_REPORT_MODULES"):
            record("modules", modules=loaded_extension_modules())
        await asyncio.sleep(0)


if __name__ == "__main__":
    run(ProbeEngine)
