"""The stock sample engine plus the fault table, run with the *stock* SDK.

Runs under the stock venv's python (``python tests/engines/stock_fault_engine.py
<stock sample flags>``); it is the reference the dynamo_lite probe engine is
compared with. Magic ``max_tokens`` values select faults (see ``faults.py``).
``STOCK_ENGINE_RUNTIME_DATA`` (JSON) and ``STOCK_ENGINE_BOOTSTRAP``
(``host:port``) add registration metadata to ``start()``'s ``EngineConfig``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from dynamo.common.backend.run import run
from dynamo.common.backend.sample_engine import SampleLLMEngine
from dynamo.llm import exceptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults


class StockFaultEngine(SampleLLMEngine):  # type: ignore[misc]
    async def start(self, worker_id: int) -> Any:
        config = await super().start(worker_id)
        raw = os.environ.get("STOCK_ENGINE_RUNTIME_DATA")
        if raw:
            config.runtime_data = json.loads(raw)
        bootstrap = os.environ.get("STOCK_ENGINE_BOOTSTRAP")
        if bootstrap:
            host, port = bootstrap.rsplit(":", 1)
            config.llm.bootstrap_host = host
            config.llm.bootstrap_port = int(port)
        return config

    async def generate(self, request: Any, context: Any) -> AsyncGenerator[Any, None]:
        max_tokens = (request.get("stop_conditions") or {}).get("max_tokens")
        if faults.is_fault(max_tokens):
            async for chunk in faults.fault_stream(max_tokens, exceptions):
                yield chunk
            return
        async for chunk in super().generate(request, context):
            yield chunk


if __name__ == "__main__":
    run(StockFaultEngine)
