"""examples/sample_engine.py with the stock sample engine's per-token yield.

The stock engine awaits ``asyncio.sleep(delay)`` before every token, even
with ``--delay 0``, so each token is a separate trip through the event loop.
The example skips the sleep when the delay is 0 and would then write a whole
stream in one loop step, which is a different engine, not a faster runtime.
This wrapper restores the yield (same flags, same output); ``run.py
--lite-engine example`` runs the example unchanged instead.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncGenerator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from sample_engine import SampleEngine

from dynamo_lite import Context, GenerateChunk, GenerateRequest, run


class StockAlikeSampleEngine(SampleEngine):  # type: ignore[misc]
    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        async for chunk in super().generate(request, context):
            if not self.delay:
                await asyncio.sleep(0)
            yield chunk


if __name__ == "__main__":
    run(StockAlikeSampleEngine)
