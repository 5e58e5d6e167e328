"""dynamo_lite.system_server: routes and the per-connection HTTP/1.1 handler.

Each test hands :meth:`SystemServer._serve` (what the listener runs per
connection) one end of an in-memory byte stream and speaks HTTP on the other
with h11's client side. Expected statuses and bodies are the stock worker's
(tests/vectors/discovery/system_status_responses.txt).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import anyio.abc
import h11
import pytest

from dynamo_lite.system_server import HealthStatus, Response, SystemServer
from tests.support.memory_transport import MemoryByteStream, byte_stream_pair

pytestmark = pytest.mark.anyio

HANG = 5.0


class Client:
    """The client side of one HTTP/1.1 connection."""

    def __init__(self, stream: MemoryByteStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, body: bytes = b""
    ) -> tuple[h11.Response, bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = [("host", "worker"), ("content-length", str(len(body)))]
        out = self.conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send(out)
        response: h11.Response | None = None
        data = b""
        with anyio.fail_after(HANG):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        self.conn.receive_data(await self.stream.receive())
                    except anyio.EndOfStream:
                        self.conn.receive_data(b"")
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    return response, data
                else:
                    raise AssertionError(f"unexpected {event!r}")


def header(response: h11.Response, name: str) -> str:
    return dict(response.headers)[name.encode()].decode()


@asynccontextmanager
async def connection(
    srv: SystemServer,
) -> AsyncIterator[tuple[Client, anyio.Event]]:
    """Run the server's handler on a fresh in-memory connection."""
    server_end, client_end = byte_stream_pair()
    ended = anyio.Event()

    async def serve() -> None:
        try:
            await srv._serve(cast(anyio.abc.SocketStream, server_end))
        finally:
            ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        yield Client(client_end), ended
        with anyio.fail_after(HANG):
            await client_end.aclose()
            await ended.wait()


def make(env: dict[str, str] | None = None) -> SystemServer:
    env = env or {}
    return SystemServer("127.0.0.1", 0, HealthStatus(env), env)


async def test_health_before_and_after_registration() -> None:
    srv = make()
    async with connection(srv) as (client, _):
        r, body = await client.request("GET", "/health")
        assert r.status_code == 503
        assert header(r, "content-type") == "text/plain; charset=utf-8"
        assert json.loads(body)["status"] == "notready"
        srv.health.serving = True
        srv.health.set_endpoint("generate", True)
        r, body = await client.request("GET", "/live")
        assert r.status_code == 200
        parsed = json.loads(body)
        assert parsed["status"] == "ready" and parsed["endpoints"] == {"generate": "ready"}
        assert set(parsed["uptime"]) == {"secs", "nanos"}
        srv.health.set_endpoint("generate", False)
        r, _ = await client.request("GET", "/health?verbose=1")
        assert r.status_code == 503


@pytest.mark.parametrize(
    ("target", "status", "body"),
    [
        ("/metadata", 404, b"Discovery metadata not available"),
        (
            "/engine/foo",
            404,
            b'{"error": "Route not found", "message": "Route /engine/foo not found"}',
        ),
        ("/metrics_endpoints", 404, b"Route not found"),
        ("/v1/loras", 404, b"Route not found"),
        ("/anything-else", 404, b"Route not found"),
    ],
)
async def test_other_routes_answer_as_stock(target: str, status: int, body: bytes) -> None:
    async with connection(make()) as (client, _):
        r, got = await client.request("GET", target)
        assert (r.status_code, json.loads(got) if got.startswith(b"{") else got) == (
            status,
            json.loads(body) if body.startswith(b"{") else body,
        )


async def test_method_not_allowed_and_head() -> None:
    srv = make({"DYN_SYSTEM_STARTING_HEALTH_STATUS": "ready"})
    async with connection(srv) as (client, _):
        r, body = await client.request("POST", "/health", b"{}")
        assert r.status_code == 405 and header(r, "allow") == "GET,HEAD" and body == b""
        r, body = await client.request("HEAD", "/health")
        assert r.status_code == 200 and body == b""
        assert int(header(r, "content-length")) > 0
        # Unknown paths are 404 whatever the method.
        r, _ = await client.request("POST", "/nope")
        assert r.status_code == 404


async def test_custom_health_paths() -> None:
    srv = make({"DYN_SYSTEM_HEALTH_PATH": "/hz", "DYN_SYSTEM_LIVE_PATH": "/lz"})
    async with connection(srv) as (client, _):
        assert (await client.request("GET", "/hz"))[0].status_code == 503
        assert (await client.request("GET", "/lz"))[0].status_code == 503
        assert (await client.request("GET", "/health"))[0].status_code == 404


async def test_metrics_rendered_per_scrape_and_failures_are_500() -> None:
    srv = make()
    scrapes: list[int] = []

    def render() -> bytes:
        scrapes.append(1)
        if len(scrapes) == 3:
            raise RuntimeError("collector broke")
        return f"scrapes {len(scrapes)}\n".encode()

    srv.serve_metrics(render, "text/plain; version=0.0.4")
    async with connection(srv) as (client, _):
        for n in (1, 2):
            r, body = await client.request("GET", "/metrics")
            assert r.status_code == 200 and body == f"scrapes {n}\n".encode()
            assert header(r, "content-type") == "text/plain; version=0.0.4"
        r, body = await client.request("GET", "/metrics")
        assert r.status_code == 500 and body == b"metrics collection failed"


async def test_async_and_prefix_routes() -> None:
    srv = make()

    async def files(method: str, path: str) -> Response:
        await anyio.lowlevel.checkpoint()
        return Response(200, path.encode(), "application/octet-stream")

    srv.route("/v1/metadata/", files, prefix=True)
    async with connection(srv) as (client, _):
        r, body = await client.request("GET", "/v1/metadata/a/b")
        assert r.status_code == 200 and body == b"/v1/metadata/a/b"


async def test_keep_alive_serves_many_cycles_on_one_connection() -> None:
    srv = make()
    async with connection(srv) as (client, ended):
        for _ in range(20):
            r, _body = await client.request("GET", "/health")
            assert r.status_code == 503
        assert not ended.is_set()


async def test_client_close_ends_the_handler() -> None:
    srv = make()
    async with connection(srv) as (client, ended):
        await client.request("GET", "/health")
        await client.stream.send_eof()
        with anyio.fail_after(HANG):
            await ended.wait()


async def test_connection_close_request_ends_the_handler() -> None:
    srv = make()
    async with connection(srv) as (client, ended):
        out = client.conn.send(
            h11.Request(
                method="GET", target="/health", headers=[("host", "w"), ("connection", "close")]
            )
        )
        out = (out or b"") + (client.conn.send(h11.EndOfMessage()) or b"")
        await client.stream.send(out)
        with anyio.fail_after(HANG):
            await ended.wait()
        data = await client.stream.read_until_closed()
        assert data.startswith(b"HTTP/1.1 503 ")


async def test_idle_connection_is_closed_after_the_bound() -> None:
    srv = make()
    srv.idle_timeout = 0.05
    async with connection(srv) as (client, ended):
        await client.request("GET", "/health")
        # Nothing more is sent: the handler gives up on the idle connection.
        with anyio.fail_after(HANG):
            await ended.wait()
        assert await client.stream.read_until_closed() == b""


async def test_garbage_request_ends_the_handler() -> None:
    srv = make()
    async with connection(srv) as (client, ended):
        await client.stream.send(b"NOT HTTP AT ALL\r\n\r\n")
        with anyio.fail_after(HANG):
            await ended.wait()


def test_health_vetoes() -> None:
    health = HealthStatus({})
    health.serving = True
    health.set_endpoint("generate", True)
    assert health.ready
    health.veto("stall", "no progress", endpoint="generate")
    assert not health.ready and health.body()["endpoints"] == {"generate": "notready"}
    health.lift("stall")
    assert health.ready
    health.veto("worker", "stuck")
    assert not health.ready
    health.lift("worker")
    health.shutting_down = True
    assert not health.ready


def test_use_endpoint_health_status() -> None:
    env: dict[str, Any] = {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]'}
    health = HealthStatus(env)
    assert health.body()["endpoints"] == {"generate": "notready"} and not health.ready
    health.set_endpoint("generate", True)
    assert health.ready
