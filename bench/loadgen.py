"""HTTP load generator for the frontend: streaming chat completions over raw asyncio.

Runs as its own process (so its CPU is not the worker's and can be reported)
and speaks JSON lines: one command per stdin line, one result per stdout line.
Standard library only; uses uvloop when the interpreter has it. The same
process, with the same settings, drives the stock and the dynamo_lite worker.

HTTP handling is deliberately minimal: one keep-alive connection per simulated
user, a request is sent only after the previous response ended, the end of a
chunked response is its ``0\\r\\n\\r\\n`` terminator. A response counts as OK
when it is a 200 whose stream carried ``"finish_reason":"length"`` and
``data: [DONE]`` and no ``event: error``.

Tokens are counted from bytes: every response for the same request is the same
size (same token ids, same text), so bytes received in the window times
``tokens / bytes-per-response`` is the number of tokens streamed in the
window, including those of requests still in flight at its edges.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
from typing import Any

from procs import cpu_snapshot

_LENGTH = b'"finish_reason":"length"'
_DONE = b"data: [DONE]"
_TERMINATOR = b"\r\n0\r\n\r\n"


def _snapshot(pids: dict[str, int]) -> dict[str, float]:
    snapshot: dict[str, float] = cpu_snapshot(pids, "loadgen")
    return snapshot


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Counters:
    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[bool, str, int]] | None = None
        self.closed = False
        self.sock: socket.socket | None = None
        self._reset()

    def _reset(self) -> None:
        self.head = b""
        self.in_body = False
        self.status = 0
        self.chunked = True
        self.remaining = 0
        self.tail = b""
        self.saw_length = False
        self.saw_done = False
        self.saw_error = False
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport: no isinstance check.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(False, f"connection lost: {exc}")

    def _finish(self, ok: bool, why: str) -> None:
        waiter, self.waiter = self.waiter, None
        size = self.size
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result((ok, why, size))

    def request(self, payload: bytes) -> asyncio.Future[tuple[bool, str, int]]:
        fut: asyncio.Future[tuple[bool, str, int]] = asyncio.get_running_loop().create_future()
        if self.closed or self.transport is None:
            fut.set_result((False, "connection closed", 0))
            return fut
        self.waiter = fut
        self.transport.write(payload)
        return fut

    def data_received(self, data: bytes) -> None:
        if self.sock is not None:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        self.counters.bytes += len(data)
        if self.waiter is None:
            return
        self.size += len(data)
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.in_body = True
            lines = head.split(b"\r\n")
            try:
                self.status = int(lines[0].split()[1])
            except (IndexError, ValueError):
                self._finish(False, "bad status line")
                return
            self.chunked = False
            self.remaining = -1
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
                elif name == b"content-length":
                    self.remaining = int(value.strip())
        window = self.tail + data
        if not self.saw_length and _LENGTH in window:
            self.saw_length = True
        if not self.saw_done and _DONE in window:
            self.saw_done = True
        if not self.saw_error and (b"event: error" in window or b"event:error" in window):
            self.saw_error = True
        self.tail = window[-64:]
        if self.chunked:
            if window.endswith(_TERMINATOR) or (window == b"0\r\n\r\n"):
                self._complete()
        elif self.remaining >= 0:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self._complete()

    def _complete(self) -> None:
        if self.status != 200:
            self._finish(False, f"HTTP {self.status}: {self.tail[-60:]!r}")
        elif self.saw_error:
            self._finish(False, "error event in stream")
        elif not (self.saw_length and self.saw_done):
            self._finish(False, "stream ended without finish_reason length / [DONE]")
        else:
            self._finish(
                True,
                "",
            )


def _payload(host: str, port: int, model: str, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": tokens,
            "stream": True,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


class Run:
    """Bookkeeping of one command: completions with their end times."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.done: list[tuple[float, float, bool, str, int]] = []  # end, latency, ok, why, size
        self.stop = False

    async def connect(self, host: str, port: int) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self.counters), host, port)
        return conn

    async def one(
        self, conn: _Conn | None, host: str, port: int, payload: bytes, timeout: float
    ) -> _Conn | None:
        start = time.perf_counter()
        try:
            if conn is None or conn.closed:
                conn = await asyncio.wait_for(self.connect(host, port), timeout)
            ok, why, size = await asyncio.wait_for(conn.request(payload), timeout)
        except (OSError, TimeoutError) as exc:
            ok, why, size = False, repr(exc), 0
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            conn = None
        end = time.perf_counter()
        self.done.append((end, end - start, ok, why, size))
        if not ok and conn is not None and conn.transport is not None:
            conn.transport.close()
            conn = None
        return conn


async def closed_loop(cmd: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` users, each sending one request after the other."""
    host, port = cmd["host"], int(cmd["port"])
    tokens = int(cmd["tokens"])
    payload = _payload(host, port, cmd["model"], tokens)
    pids: dict[str, int] = cmd.get("pids", {})
    run = Run()

    async def user() -> None:
        conn: _Conn | None = None
        while not run.stop:
            conn = await run.one(conn, host, port, payload, float(cmd.get("request_timeout", 60)))
            if run.done[-1][2] is False:
                await asyncio.sleep(0.01)
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    users = [asyncio.create_task(user()) for _ in range(int(cmd["concurrency"]))]
    await asyncio.sleep(float(cmd["warmup"]))
    b0, s0, t0 = run.counters.bytes, _snapshot(pids), time.perf_counter()
    await asyncio.sleep(float(cmd["duration"]))
    b1, s1, t1 = run.counters.bytes, _snapshot(pids), time.perf_counter()
    run.stop = True
    await asyncio.wait(users, timeout=float(cmd.get("request_timeout", 60)))
    for task in users:
        task.cancel()
    window = [d for d in run.done if t0 <= d[0] <= t1]
    sizes = [d[4] for d in run.done if d[2]]
    per_resp = statistics.median(sizes) if sizes else float("nan")
    elapsed = t1 - t0
    tok = (b1 - b0) * tokens / per_resp if sizes else 0.0
    lat = [d[1] for d in window if d[2]]
    errors = [d[3] for d in run.done if not d[2]]
    return {
        "elapsed": elapsed,
        "tokens_per_s": tok / elapsed,
        "requests_per_s": tok / elapsed / tokens,
        "completed_in_window": len(window),
        "tokens_in_window": tok,
        "bytes_per_response": per_resp,
        "latency_p50": percentile(lat, 0.5),
        "latency_p99": percentile(lat, 0.99),
        "latencies": len(lat),
        "errors": len(errors),
        "error_samples": errors[:3],
        "total_requests": len(run.done),
        "cpu": {k: s1[k] - s0[k] for k in s0},
    }


async def burst(cmd: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` streams started evenly over ``ramp`` seconds, one request each."""
    host, port = cmd["host"], int(cmd["port"])
    payload = _payload(host, port, cmd["model"], int(cmd["tokens"]))
    count = int(cmd["concurrency"])
    ramp = float(cmd.get("ramp", 1.0))
    timeout = float(cmd.get("stream_timeout", 30))
    pids: dict[str, int] = cmd.get("pids", {})
    run = Run()
    s0, t0 = _snapshot(pids), time.perf_counter()

    async def stream(i: int) -> None:
        await asyncio.sleep(ramp * i / count)
        conn = await run.one(None, host, port, payload, timeout)
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(stream(i) for i in range(count)))
    s1, t1 = _snapshot(pids), time.perf_counter()
    durations = [d[1] for d in run.done if d[2]]
    errors = [d[3] for d in run.done if not d[2]]
    return {
        "streams": count,
        "ok": len(durations),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "median": statistics.median(durations) if durations else float("nan"),
        "p99": percentile(durations, 0.99),
        "max": max(durations, default=float("nan")),
        "elapsed": t1 - t0,
        "cpu": {k: s1[k] - s0[k] for k in s0},
    }


async def main() -> None:
    loop = asyncio.get_running_loop()
    print(
        json.dumps(
            {"ready": True, "python": sys.version.split()[0], "loop": type(loop).__module__}
        ),
        flush=True,
    )
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        try:
            if cmd["op"] == "closed":
                result = await closed_loop(cmd)
            elif cmd["op"] == "burst":
                result = await burst(cmd)
            elif cmd["op"] == "exit":
                return
            else:
                result = {"error": f"unknown op {cmd['op']!r}"}
        except Exception as exc:
            result = {"error": repr(exc)}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
