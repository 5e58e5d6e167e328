"""A test engine: the sample engine's behaviour plus observable side effects.

Runs as a worker script (``python tests/engines/probe_engine.py <sample flags>``).
Every lifecycle call and every ``abort()`` is appended as one JSON line to the
file named by ``PROBE_EVENTS``, so a test can count them from outside. Magic
``max_tokens`` values select misbehaviour:

* 777 → raise ``InvalidArgument`` before the first token;
* 778 → raise ``ValueError`` mid-stream (after 2 tokens);
* 779 → raise ``RuntimeError`` before the first token.

With ``PROBE_REPORT_MODULES=1`` ``cleanup()`` records every loaded extension
module (the pure-mode test checks none is third-party compiled code).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from dynamo_lite import Context, GenerateChunk, GenerateRequest, InvalidArgument, run

_SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_engine.py"
_spec = importlib.util.spec_from_file_location("probe_sample_engine", _SAMPLE)
assert _spec is not None and _spec.loader is not None
_sample = importlib.util.module_from_spec(_spec)
sys.modules["probe_sample_engine"] = _sample
_spec.loader.exec_module(_sample)


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


class ProbeEngine(_sample.SampleEngine):  # type: ignore[misc,name-defined]
    async def start(self, worker_id: int) -> Any:
        record("start", worker_id=worker_id)
        return await super().start(worker_id)

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        max_tokens = (request.get("stop_conditions") or {}).get("max_tokens")
        record("generate", id=context.id(), max_tokens=max_tokens)
        if max_tokens == 777:
            raise InvalidArgument("probe: 777 is not an acceptable max_tokens")
        if max_tokens == 779:
            raise RuntimeError("probe: internal failure")
        n = 0
        async for chunk in super().generate(request, context):
            n += 1
            if max_tokens == 778 and n == 3:
                raise ValueError("probe: mid-stream value error")
            yield chunk
            if chunk.get("finish_reason"):
                record("terminal", id=context.id(), finish_reason=chunk["finish_reason"])

    async def abort(self, context: Context) -> None:
        record("abort", id=context.id(), stopped=context.is_stopped(), killed=context.is_killed())

    async def cleanup(self) -> None:
        record("cleanup")
        if os.environ.get("PROBE_REPORT_MODULES"):
            record("modules", modules=loaded_extension_modules())
        await asyncio.sleep(0)


if __name__ == "__main__":
    run(ProbeEngine)
