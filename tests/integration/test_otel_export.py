"""``OTEL_EXPORT_ENABLED``: a worker started with ``run()`` exports its
``engine.generate`` spans over OTLP to the endpoint the environment names."""

from __future__ import annotations

import http.server
import logging
import sys
import threading
import time
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


def test_typed_families_become_otlp_metrics() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.common")
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from dynamo_lite.metrics import get_prometheus_typed

    registry = CollectorRegistry()
    Counter("eng_requests", "served", registry=registry).inc(3)
    Gauge("eng_queue", "queued", ["rank"], registry=registry).labels("0").set(2)
    hist = Histogram("eng_latency_seconds", "latency", buckets=(0.1, 1.0), registry=registry)
    for value in (0.05, 0.5, 5.0):
        hist.observe(value)
    typed = get_prometheus_typed(registry, inject_custom_labels={"worker_id": "7"})
    metrics = {m.name: m for m in otel_export.typed_to_otlp(typed, 1)}
    [requests] = metrics["eng_requests"].data.data_points
    assert requests.value == 3 and requests.attributes == {"worker_id": "7"}
    assert metrics["eng_requests"].data.is_monotonic
    [queue] = metrics["eng_queue"].data.data_points
    assert queue.value == 2 and queue.attributes == {"worker_id": "7", "rank": "0"}
    [latency] = metrics["eng_latency_seconds"].data.data_points
    assert latency.count == 3 and list(latency.bucket_counts) == [1, 1, 1]
    assert list(latency.explicit_bounds) == [0.1, 1.0] and latency.sum == pytest.approx(5.55)
    scope = ScopeMetrics(InstrumentationScope("t"), list(metrics.values()), "")
    encoded = encode_metrics(MetricsData([ResourceMetrics(Resource.create(), [scope], "")]))
    assert len(encoded.SerializeToString()) > 0


def test_engine_metrics_reach_the_otlp_endpoint(
    sink: tuple[int, type[_Sink]], tiny_model: Path, tmp_path: Path, spawn: Any
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.metric_exporter")
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    port, handler = sink
    engine = Path(__file__).parents[1] / "engines" / "observability_engine.py"
    env = worker_env(
        file_kv=tmp_path / "kv",
        OBS_ENGINE_METRICS="1",
        OTEL_EXPORT_ENABLED="1",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_METRIC_EXPORT_INTERVAL="100",
    )
    argv = worker_argv(tiny_model, script=engine, extra=("--component", "sample"))
    proc = spawn(argv, env=env, name="otlp-metrics")
    found: dict[str, Any] = {}
    deadline = time.monotonic() + 30  # a generous bound only catches a hang
    while not found:
        assert proc.running and time.monotonic() < deadline, proc.describe_log()
        for path, body in list(handler.posts):
            if path != "/v1/metrics":
                continue
            req = ExportMetricsServiceRequest.FromString(body)
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name == "obs_engine_requests":
                            found["metric"] = metric
        time.sleep(0.05)
    metric = found["metric"]
    [point] = metric.sum.data_points
    labels = {a.key: a.value.string_value for a in point.attributes}
    assert labels["dynamo_component"] == "sample" and labels["dynamo_namespace"] == "dynamo"
    assert metric.sum.is_monotonic
