"""Request-plane limits and encodings as the stock frontend's clients see them."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo_lite.tiny_model import decode
from tests.support.lite import worker_argv, worker_env

pytestmark = pytest.mark.interop


def test_concurrency_limit_answers_529(
    tiny_model: Path, file_kv: Path, spawn: Any, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv)
    proc = spawn(
        worker_argv(tiny_model, delay=0.01),
        env=worker_env(file_kv=file_kv, DYN_LITE_MAX_INFLIGHT="1"),
    )
    model = str(tiny_model)
    fe.wait_model(model, timeout=30)
    url = fe.url("/v1/completions")

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            in_flight = asyncio.Event()

            async def long_request() -> int:
                body = {"model": model, "prompt": "hi", "max_tokens": 100, "stream": True}
                async with client.stream("POST", url, json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            in_flight.set()  # its first token arrived: the slot is taken
                    return r.status_code

            long = asyncio.create_task(long_request())
            await asyncio.wait_for(in_flight.wait(), 30)
            second = await client.post(url, json={"model": model, "prompt": "hi", "max_tokens": 2})
            return [await long, second.status_code, second.json()["code"]]

    assert asyncio.run(scenario()) == [200, 529, 529]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_token_ids_as_bytes_from_the_frontend(
    tiny_model: Path, file_kv: Path, spawn: Any, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv, env={"DYN_TOKEN_IDS_AS_BYTES": "1"})
    proc = spawn(worker_argv(tiny_model), env=worker_env(file_kv=file_kv))
    model = str(tiny_model)
    fe.wait_model(model, timeout=30)
    r = httpx.post(
        fe.url("/v1/completions"),
        timeout=30,
        json={"model": model, "prompt": "hello world", "max_tokens": 6},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["text"] == decode(tiny_model, list(range(1, 7)))
    assert body["usage"]["prompt_tokens"] > 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
