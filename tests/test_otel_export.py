"""``OTEL_EXPORT_ENABLED``: a worker started with ``run()`` exports its
``engine.generate`` spans over OTLP to the endpoint the environment names."""

from __future__ import annotations

import http.server
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamo_lite import otel_export
from tests.support.lite import SAMPLE_ENGINE, worker_argv, worker_env
from tests.support.ports import free_port

pytest.importorskip("opentelemetry.sdk.trace")


def test_off_unless_enabled_and_local_when_the_protocol_is_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert otel_export.configure_from_env({}) is None
    assert otel_export.configure_from_env({"OTEL_EXPORT_ENABLED": "0"}) is None
    with caplog.at_level(logging.WARNING):
        env = {"OTEL_EXPORT_ENABLED": "1", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}
        assert otel_export.configure_from_env(env) is None
    assert "traces stay local" in caplog.text


class _Sink(http.server.BaseHTTPRequestHandler):
    posts: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).posts.append((self.path, body))
        type(self).arrived.set()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[tuple[int, type[_Sink]]]:
    port = free_port()
    handler = type("Sink", (_Sink,), {"posts": [], "arrived": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port, handler
    finally:
        server.shutdown()
        server.server_close()


def test_spans_reach_the_otlp_endpoint(
    sink: tuple[int, type[_Sink]], tiny_model: Path, tmp_path: Path, spawn: Any
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    port, handler = sink
    kv = tmp_path / "kv"
    env = worker_env(
        file_kv=kv,
        OTEL_EXPORT_ENABLED="1",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_SERVICE_NAME="lite-worker",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    proc = spawn(worker_argv(tiny_model, script=SAMPLE_ENGINE), env=env, name="otlp-worker")
    proc.wait_for_log(r"OpenTelemetry OTLP export enabled", timeout=60)
    proc.wait_for_log(r"Serving ", timeout=60)
    code = """
import asyncio, sys
from dynamo_lite.client import Client
from dynamo_lite.discovery import FileStore
async def main():
    async with Client("dynamo", "sample", "generate", store=FileStore(sys.argv[1])) as c:
        await c.wait_for_instances(30)
        s = await c.generate({"token_ids": [1, 2], "stop_conditions": {"max_tokens": 2}})
        await s.collect()
asyncio.run(main())
"""
    import subprocess

    subprocess.run([sys.executable, "-c", code, str(kv)], env=env, check=True, timeout=60)
    assert handler.arrived.wait(30), proc.describe_log()  # a generous bound only catches a hang
    names, services = set(), set()
    for path, body in handler.posts:
        assert path == "/v1/traces"
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes
                         if a.key == "service.name"}  # fmt: skip
            names |= {s.name for ss in rs.scope_spans for s in ss.spans}
    assert "engine.generate" in names and services == {"lite-worker"}
