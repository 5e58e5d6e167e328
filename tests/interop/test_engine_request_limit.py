"""``DYN_ENGINE_REQUEST_LIMIT`` / ``DYN_DYNAMO_REQUEST_QUEUE_LIMIT`` and the
request-queue gauges, as the stock 1.6.1 worker has them: the same engine on
both runtimes, the same concurrent requests, the same answers and gauges."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo_lite.admission import EngineGate
from dynamo_lite.client import Client, Rejected
from dynamo_lite.discovery import FileStore
from tests.interop.test_engine_routes_interop import free_system_port
from tests.support.lite import REPO, worker_env
from tests.support.services import ManagedProcess

pytestmark = pytest.mark.anyio

ENGINE = REPO / "tests" / "engines" / "parity_engine.py"
GAUGES = (
    "dynamo_engine_request",
    "dynamo_request_queue",
    "dynamo_rejection_request_total",
    "dynamo_work_handler_queue_capacity",
    "dynamo_work_handler_queue_depth",
)


async def test_the_gate_queues_first_come_first_served_and_refuses_beyond_the_queue() -> None:
    gate = EngineGate(limit=1, queue_limit=2)
    order: list[int] = []

    async def request(i: int) -> None:
        await gate.enter()
        order.append(i)
        await asyncio.sleep(0)
        gate.leave()

    # One in the engine, one held for the next slot, two queued: the fifth is refused.
    assert all(gate.admit() for _ in range(4)) and not gate.admit()
    tasks = [asyncio.create_task(request(i)) for i in range(4)]
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3] and gate.in_engine == 0 and gate.waiting == 0


async def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    gate = EngineGate(limit=1)
    assert gate.admit() and gate.admit() and gate.admit()
    await gate.enter()
    second = asyncio.create_task(gate.enter())
    third = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    assert gate.waiting == 2 and gate.queue_depth == 1
    gate.leave()  # hands the slot to the second...
    second.cancel()  # ...which is cancelled before it runs
    await asyncio.wait_for(third, 5)
    assert gate.in_engine == 1 and gate.waiting == 0
    gate.leave()
    assert gate.in_engine == 0
    assert EngineGate().queue_capacity == 40_000 and EngineGate(limit=2).queue_capacity == 15


def _request(model: Path) -> dict[str, Any]:
    return {"model": str(model), "token_ids": [1], "stop_conditions": {"max_tokens": 2},
            "sampling_options": {}, "output_options": {}, "eos_token_ids": [0],
            "annotations": ["mode:hold_deaf"], "routing": {}}  # fmt: skip


def _gauges(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES:
            out[name] = float(value)
    return out


async def _run(head: list[str], tmp_path: Path, name: str, model: Path, **env: Any) -> Any:
    kv = tmp_path / f"kv-{name}"
    kv.mkdir()
    events = tmp_path / f"events-{name}.jsonl"
    port = free_system_port()
    argv = [*head, str(ENGINE), "--model-name", str(model), "--discovery-backend", "file"]
    proc = ManagedProcess(
        argv,
        env=worker_env(
            file_kv=kv, PARITY_EVENTS=events, PARITY_HOLD="0.5", DYN_SYSTEM_PORT=port, **env
        ),
        name=name,
        log_path=tmp_path / f"{name}.log",
    ).start()
    try:
        async with Client("dynamo", "sample", "generate", store=FileStore(kv)) as client:
            await client.wait_for_instances(60)

            async def ok(stream: Any) -> str:
                await stream.collect()
                return "ok"

            async def refused(reply: str) -> str:
                return reply

            # One after the other: each is acknowledged (or refused) before the next.
            tasks = []
            for _ in range(4):
                try:
                    stream = await client.generate(_request(model))
                    tasks.append(asyncio.create_task(ok(stream)))
                except Rejected as exc:
                    tasks.append(asyncio.create_task(refused(exc.reply)))
            # Wait (a generous bound only catches a hang) until all four are
            # placed: in the engine, queued or refused.
            deadline = time.monotonic() + 30
            while True:
                gauges = await asyncio.to_thread(_gauges, port)
                placed = gauges["dynamo_engine_request"] + gauges["dynamo_rejection_request_total"]
                if placed + gauges["dynamo_request_queue"] + 1 >= 4 or all(t.done() for t in tasks):
                    break
                assert time.monotonic() < deadline, gauges
                await asyncio.sleep(0.05)
            answers = sorted(await asyncio.gather(*tasks))
        lines = events.read_text().splitlines() if events.exists() else []
        steps = [(e["event"], e["id"], e.get("i")) for e in map(json.loads, lines)]
        return answers, gauges, steps
    finally:
        proc.close()


def _max_in_engine(steps: list[tuple[str, str, Any]]) -> int:
    """Most requests between ``generate()`` and their last token at any moment."""
    live: set[str] = set()
    most = 0
    for event, rid, i in steps:
        if event == "generate":
            live.add(rid)
        elif event == "yield" and i == 1:  # the terminal token (max_tokens 2)
            live.discard(rid)
        most = max(most, len(live))
    return most


@pytest.mark.interop
@pytest.mark.parametrize(
    ("env", "expected_answers", "expected_gauges"),
    [
        ({"DYN_ENGINE_REQUEST_LIMIT": "1"}, ["ok"] * 4,
         {"dynamo_engine_request": 1, "dynamo_request_queue": 2,
          "dynamo_rejection_request_total": 0, "dynamo_work_handler_queue_capacity": 15,
          "dynamo_work_handler_queue_depth": 2}),
        ({"DYN_ENGINE_REQUEST_LIMIT": "1", "DYN_DYNAMO_REQUEST_QUEUE_LIMIT": "1"},
         ["Server overloaded: worker at capacity"] + ["ok"] * 3,
         {"dynamo_engine_request": 1, "dynamo_request_queue": 1,
          "dynamo_rejection_request_total": 1, "dynamo_work_handler_queue_capacity": 1,
          "dynamo_work_handler_queue_depth": 1}),
    ],
)  # fmt: skip
async def test_the_engine_request_limit_as_stock(
    env: dict[str, str],
    expected_answers: list[str],
    expected_gauges: dict[str, float],
    tmp_path: Path,
    tiny_model: Path,
    stock_python_path: Path,
) -> None:
    stock, lite = await asyncio.gather(
        _run([str(stock_python_path)], tmp_path, "stock", tiny_model, **env),
        _run([sys.executable, "-m", "dynamo_lite.compat"], tmp_path, "lite", tiny_model, **env),
    )
    for answers, gauges, steps in (stock, lite):
        assert answers == expected_answers
        assert gauges == expected_gauges
        assert _max_in_engine(steps) == 1
