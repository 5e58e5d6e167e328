"""Shutdown and cancellation as the stock frontend's clients see them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.lite import REPO, events_of, read_events, wait_until, worker_argv, worker_env
from tests.support.services import EtcdServer

pytestmark = pytest.mark.interop

LIFECYCLE = REPO / "tests" / "engines" / "lifecycle_engine.py"


def chat(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "stream": True,
    }


async def stream_to_end(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    streaming: Streaming | None = None,
) -> list[Any]:
    events: list[Any] = []
    async with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                payload = line[6:]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
                if streaming is not None and len(events) == 1:
                    streaming.one_started()
    return events


class Streaming:
    """Counts streams that received their first event (the request is in flight)."""

    def __init__(self, expected: int) -> None:
        self.started = 0
        self.expected = expected
        self.all_started = asyncio.Event()

    def one_started(self) -> None:
        self.started += 1
        if self.started >= self.expected:
            self.all_started.set()

    async def wait(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.all_started.wait(), timeout)


def finish_reason(events: list[Any]) -> str | None:
    reasons = [
        c["choices"][0].get("finish_reason")
        for c in events
        if isinstance(c, dict) and c.get("choices")
    ]
    return next((r for r in reversed(reasons) if r), None)


def test_100_streams_longer_than_grace_survive_sigterm(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv)
    events = tmp_path / "events.jsonl"
    env = worker_env(file_kv=file_kv, events=events, DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0.5")
    proc = spawn(worker_argv(tiny_model, script=LIFECYCLE, delay=0.01), env=env)
    model = str(tiny_model)
    fe.wait_model(model, timeout=30)
    url = fe.url("/v1/chat/completions")

    async def scenario() -> list[list[Any]]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            streaming = Streaming(100)
            tasks = [
                asyncio.create_task(stream_to_end(client, url, chat(model, 150), streaming))
                for _ in range(100)
            ]
            await streaming.wait()  # every stream in flight (150 tokens take 1.5 s)
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert [finish_reason(r) for r in results] == ["length"] * 100
    assert all(r[-1] == "[DONE]" for r in results)
    assert proc.wait(30) == 0
    assert len(events_of(events, "terminal", finish_reason="length")) == 100
    fe.wait_model(model, present=False, timeout=10)


def test_cut_stream_ends_with_an_explicit_error_event(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv)
    env = worker_env(
        file_kv=file_kv,
        DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0.2",
        DYN_LITE_DRAIN_TIMEOUT_SECS="0.5",
    )
    proc = spawn(worker_argv(tiny_model, script=LIFECYCLE, delay=0.01), env=env)
    model = str(tiny_model)
    fe.wait_model(model, timeout=30)

    async def scenario() -> list[Any]:
        async with httpx.AsyncClient(timeout=60) as client:
            streaming = Streaming(1)
            task = asyncio.create_task(
                stream_to_end(
                    client, fe.url("/v1/chat/completions"), chat(model, 100_000), streaming
                )
            )
            await streaming.wait()
            proc.send_signal(signal.SIGTERM)
            return await task

    events = asyncio.run(scenario())
    errors = [e["error"] for e in events if isinstance(e, dict) and "error" in e]
    assert errors, f"stream ended without an error event: {events[-3:]}"
    assert errors[0]["code"] == 503
    assert finish_reason(events) is None
    assert proc.wait(20) == 0


def test_500_disconnects_500_aborts_and_nothing_leaks(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv)
    events = tmp_path / "events.jsonl"
    env = worker_env(file_kv=file_kv, events=events)
    proc = spawn(worker_argv(tiny_model, script=LIFECYCLE, delay=0.01), env=env)
    model = str(tiny_model)
    fe.wait_model(model, timeout=30)
    url = fe.url("/v1/chat/completions")

    def stats() -> dict[str, Any]:
        before = len(events_of(events, "stats"))
        r = httpx.post(url, json={**chat(model, 780), "stream": False}, timeout=30)
        assert r.status_code == 200
        return wait_until(lambda: events_of(events, "stats")[before:], timeout=5)[0]

    baseline = stats()

    async def disconnect_once(client: httpx.AsyncClient, sem: asyncio.Semaphore) -> None:
        async with sem, client.stream("POST", url, json=chat(model, 10_000)) as r:
            seen = 0
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    seen += 1
                    if seen == 2:
                        break

    async def scenario() -> None:
        sem = asyncio.Semaphore(50)
        limits = httpx.Limits(max_connections=60, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(disconnect_once(client, sem) for _ in range(500)))

    asyncio.run(scenario())
    wait_until(lambda: len(events_of(events, "abort")) >= 500, timeout=30, what="500 aborts")

    def settled() -> dict[str, Any] | None:
        now = stats()
        ok = now["tasks"] <= baseline["tasks"] and now["fds"] <= baseline["fds"] + 2
        return now if ok else None

    final = wait_until(settled, timeout=15, interval=0.5, what="tasks/sockets back to baseline")
    assert final["tasks"] <= baseline["tasks"]
    # Every request task has ended: no further abort can come.
    aborts = events_of(events, "abort")
    assert len(aborts) == 500
    assert len({a["id"] for a in aborts}) == 500
    assert all(a["stopped"] and a["killed"] for a in aborts)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_frontend_killed_mid_stream_aborts_everything(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv)
    events = tmp_path / "events.jsonl"
    env = worker_env(file_kv=file_kv, events=events)
    proc = spawn(worker_argv(tiny_model, script=LIFECYCLE, delay=0.01), env=env)
    model = str(tiny_model)
    fe.wait_model(model, timeout=30)
    url = fe.url("/v1/chat/completions")

    async def scenario() -> float:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    await stream_to_end(client, url, chat(model, 10_000), streaming)

            streaming = Streaming(20)

            tasks = [asyncio.create_task(one()) for _ in range(20)]
            await streaming.wait()
            killed_at = time.time()
            fe.kill()
            await asyncio.gather(*tasks)
            return killed_at

    killed_at = asyncio.run(scenario())
    # A generous bound only catches a hang; the latency is measured in bench/.
    wait_until(lambda: len(events_of(events, "abort")) >= 20, timeout=30, what="20 aborts")
    aborts = events_of(events, "abort")
    assert len(aborts) == 20
    assert min(a["t"] for a in aborts) >= killed_at  # caused by the kill, not before it
    assert proc.running


@pytest.mark.slow
def test_etcd_down_for_60s_then_back(
    spawn: Any, tiny_model: Path, etcd: EtcdServer, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    env = worker_env(etcd_endpoint=etcd.endpoint, events=events)
    proc = spawn(worker_argv(tiny_model, script=LIFECYCLE, discovery="etcd"), env=env)

    def instance_keys() -> list[str]:
        try:
            r = httpx.post(
                etcd.endpoint + "/v3/kv/range",
                timeout=2,
                json={
                    "key": base64.b64encode(b"v1/instances/").decode(),
                    "range_end": base64.b64encode(b"v1/instances0").decode(),
                },
            )
        except httpx.HTTPError:
            return []
        return [base64.b64decode(kv["key"]).decode() for kv in r.json().get("kvs", [])]

    # Stop etcd only once every record is written (the worker logs that it serves).
    wait_until(lambda: "registering → serving" in proc.log_text(), timeout=20, what="serving")
    before = wait_until(instance_keys, timeout=20, what="registration")
    pid = proc.pid
    etcd.stop()
    time.sleep(60)
    assert proc.running
    etcd.start()
    wait_until(lambda: instance_keys() == before, timeout=30, what="registered again")
    assert proc.running and proc.pid == pid
    assert [e["event"] for e in read_events(events)].count("start") == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
