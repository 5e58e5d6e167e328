"""Re-capture ``tests/vectors/tcp/stock_error_items.json`` from the stock SDK.

Runs ``stock_fault_engine.py`` as a stock 1.6.1 worker (file discovery, the
stock venv of ``DYN_LITE_STOCK_VENV``), sends it every row of ``faults.py``
with the pure-Python client and records the items it answers with, in wire
key order::

    DYN_LITE_STOCK_VENV=/tmp/stockvenv python -m tests.engines.capture_stock_errors
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from dynamo_lite.client import Client, RemoteError
from dynamo_lite.discovery import FileStore
from dynamo_lite.tiny_model import write_tiny_model
from tests.engines import faults
from tests.support.services import ManagedProcess
from tests.support.stock import loopback_env, stock_venv_dir

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "vectors" / "tcp" / "stock_error_items.json"
ABOUT = (
    "Wire items the stock 1.6.1 SDK (dynamo.common.backend) emits for each row of "
    "tests/engines/faults.py, read straight from a stock worker running "
    "tests/engines/stock_fault_engine.py (tests/engines/capture_stock_errors.py). "
    "'raises': the error map for an exception raised before the first chunk (the same "
    "map follows three token items when raised mid-stream). 'finish_reasons': the last "
    "item of the stream for each engine finish_reason string: the error map, or the "
    "LLMEngineOutput as sent (null fields dropped) and the number of items."
)
_NULL_FIELDS = {"tokens", "text", "cum_log_probs", "log_probs", "top_logprobs"}


async def _collect(client: Client, model: str, max_tokens: int) -> list[dict[str, Any]]:
    stream = await client.generate(
        {
            "model": model,
            "token_ids": [5, 6],
            "stop_conditions": {"max_tokens": max_tokens},
            "sampling_options": {},
            "output_options": {},
        }
    )
    items: list[dict[str, Any]] = []
    try:
        async for output in stream:
            items.append({"output": output})
    except RemoteError as exc:
        items.append({"error": exc.error})
    return items


def _slim(output: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in output.items()
        if not (k in _NULL_FIELDS and v is None) and not (k == "output_type" and v == "text")
    }


async def _capture(kv: Path, model: str) -> dict[str, Any]:
    raises: dict[str, Any] = {}
    finishes: dict[str, Any] = {}
    async with Client("dynamo", "sample", "generate", store=FileStore(kv)) as client:
        await client.wait_for_instances(60)
        for name in faults.RAISES:
            before = await _collect(client, model, faults.raise_code(name))
            mid = await _collect(client, model, faults.raise_code(name, mid=True))
            assert before[-1] == mid[-1] and len(mid) == 4, name
            raises[name] = before[-1]["error"]
        for reason in faults.FINISH_REASONS:
            items = await _collect(client, model, faults.finish_code(reason))
            last = items[-1]
            if "error" in last:
                finishes[reason] = {"error": last["error"]}
            else:
                finishes[reason] = {"output": _slim(last["output"]), "items": len(items)}
    return {"_about": ABOUT, "raises": raises, "finish_reasons": finishes}


def main() -> None:
    python = stock_venv_dir() / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = write_tiny_model(root / "tiny-model")
        kv = root / "kv"
        kv.mkdir()
        argv = [
            python, REPO / "tests" / "engines" / "stock_fault_engine.py",
            "--model-name", model, "--namespace", "dynamo",
            "--discovery-backend", "file", "--disable-kv-routing",
        ]  # fmt: skip
        worker = ManagedProcess(
            argv,
            env=loopback_env(DYN_FILE_KV=kv, DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0"),
            log_path=root / "worker.log",
        ).start()
        try:
            data = asyncio.run(_capture(kv, str(model)))
        finally:
            worker.stop()
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(data['raises'])} raises, {len(data['finish_reasons'])} finishes)")


if __name__ == "__main__":
    main()
