"""Drive a worker directly, without the frontend: P2 (CPU per token) and P6 (open streams).

Two clients, chosen with ``--client``:

* ``stock`` — the stock runtime's own Python client (``dynamo.runtime``
  DistributedRuntime → endpoint → client → ``round_robin``); run it with the
  stock venv's interpreter;
* ``lite`` — the pure-Python ``dynamo_lite.client.Client``; run it with an
  interpreter that has dynamo_lite installed.

JSON lines on stdin/stdout like ``loadgen.py``. Every item a worker streams
carries one token, so tokens are counted exactly, as items received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from procs import cpu_snapshot

Open = Callable[[str, dict[str, Any]], Awaitable[AsyncIterator[Any]]]


def _snapshot(pids: dict[str, int]) -> dict[str, float]:
    snapshot: dict[str, float] = cpu_snapshot(pids, "client")
    return snapshot


def request(tokens: int) -> dict[str, Any]:
    return {
        "model": "bench",
        "token_ids": [1, 2, 3, 4, 5, 6, 7, 8],
        "stop_conditions": {"max_tokens": tokens},
        "sampling_options": {},
        "output_options": {},
        "eos_token_ids": [0],
        "annotations": [],
        "routing": {},
    }


class Driver:
    def __init__(self, kind: str, kv: str) -> None:
        self.kind = kind
        self.kv = kv
        self.clients: dict[str, Any] = {}
        self.instances: dict[str, Any] = {}
        self.runtime: Any = None
        self.held: list[asyncio.Task[None]] = []

    async def _client(self, component: str) -> Any:
        if component in self.clients:
            return self.clients[component]
        if self.kind == "stock":
            from dynamo.runtime import DistributedRuntime

            if self.runtime is None:
                self.runtime = DistributedRuntime(asyncio.get_running_loop(), "file", "tcp")
            client = await self.runtime.endpoint(f"dynamo.{component}.generate").client()
            await asyncio.wait_for(client.wait_for_instances(), 60)
        else:
            from dynamo_lite.client import Client
            from dynamo_lite.discovery import FileStore

            client = Client(
                "dynamo", component, "generate", store=FileStore(self.kv), item_timeout=120.0
            )
            await client.start()
            # Resolve the instance once: a lookup per request would be client cost.
            (self.instances[component],) = await client.wait_for_instances(60)
        self.clients[component] = client
        return client

    async def open(self, component: str, req: dict[str, Any]) -> AsyncIterator[Any]:
        client = await self._client(component)
        if self.kind == "stock":
            return await client.round_robin(req)  # type: ignore[no-any-return]
        return await client.generate(req, instance=self.instances[component])  # type: ignore[no-any-return]

    async def closed(self, cmd: dict[str, Any]) -> dict[str, Any]:
        component = cmd["component"]
        tokens = int(cmd["tokens"])
        pids: dict[str, int] = cmd.get("pids", {})
        await self._client(component)
        req = request(tokens)
        count = 0
        errors: list[str] = []
        stop = False

        async def user() -> None:
            nonlocal count
            while not stop:
                try:
                    stream = await self.open(component, dict(req))
                    async for _ in stream:
                        count += 1
                except Exception as exc:
                    errors.append(repr(exc))
                    await asyncio.sleep(0.01)

        users = [asyncio.create_task(user()) for _ in range(int(cmd["concurrency"]))]
        await asyncio.sleep(float(cmd["warmup"]))
        c0, s0, t0 = count, _snapshot(pids), time.perf_counter()
        await asyncio.sleep(float(cmd["duration"]))
        c1, s1, t1 = count, _snapshot(pids), time.perf_counter()
        stop = True
        await asyncio.wait(users, timeout=60)
        for task in users:
            task.cancel()
        return {
            "tokens_in_window": c1 - c0,
            "tokens_per_s": (c1 - c0) / (t1 - t0),
            "elapsed": t1 - t0,
            "errors": len(errors),
            "error_samples": errors[:3],
            "cpu": {k: s1[k] - s0[k] for k in s0},
        }

    async def hold(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open ``streams`` long streams, ``batch`` at a time; reply once each has
        delivered its first token. They keep streaming until this process exits."""
        component = cmd["component"]
        total = int(cmd["streams"])
        batch = int(cmd.get("batch", 100))
        req = request(int(cmd["tokens"]))
        await self._client(component)
        errors: list[str] = []
        t0 = time.perf_counter()

        async def consume(first: asyncio.Future[None]) -> None:
            try:
                stream = await self.open(component, dict(req))
                async for _ in stream:
                    if not first.done():
                        first.set_result(None)
            except Exception as exc:
                errors.append(repr(exc))
            finally:
                if not first.done():
                    first.set_result(None)

        loop = asyncio.get_running_loop()
        for start in range(0, total, batch):
            firsts = [loop.create_future() for _ in range(min(batch, total - start))]
            self.held += [asyncio.create_task(consume(f)) for f in firsts]
            await asyncio.wait_for(asyncio.gather(*firsts), float(cmd.get("batch_timeout", 60)))
        return {
            "open": sum(1 for t in self.held if not t.done()),
            "errors": len(errors),
            "error_samples": errors[:3],
            "elapsed": time.perf_counter() - t0,
        }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=["stock", "lite"], required=True)
    parser.add_argument("--kv", required=True, help="the file discovery root (DYN_FILE_KV)")
    args = parser.parse_args()
    driver = Driver(args.client, args.kv)
    loop = asyncio.get_running_loop()
    print(
        json.dumps({"ready": True, "client": args.client, "loop": type(loop).__module__}),
        flush=True,
    )
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        try:
            if cmd["op"] == "closed":
                result = await driver.closed(cmd)
            elif cmd["op"] == "hold":
                result = await driver.hold(cmd)
            elif cmd["op"] == "connect":
                await driver._client(cmd["component"])
                result = {"connected": cmd["component"]}
            elif cmd["op"] == "exit":
                break
            else:
                result = {"error": f"unknown op {cmd['op']!r}"}
        except Exception as exc:
            result = {"error": repr(exc)}
        print(json.dumps(result), flush=True)
    if driver.runtime is not None:
        with contextlib.suppress(Exception):
            driver.runtime.shutdown()
    # Held streams and client sockets die with the process.
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
