"""Observability of real worker processes: /metrics against the stock capture, probes,
the canary, the stall detector and structured logs.

Each test spawns ``tests/engines/observability_engine.py`` with a system port and
watches it from outside, as an orchestrator or Prometheus would.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dynamo_lite import (
    Context,
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    LLMEngine,
    RuntimeSettings,
    Worker,
    WorkerConfig,
    telemetry,
)
from dynamo_lite.client import Client
from dynamo_lite.discovery import FileStore, MemoryStore
from dynamo_lite.protocol import request_plane as rp
from dynamo_lite.tiny_model import write_tiny_model
from tests.support.extras import require_module
from tests.support.lite import REPO, read_events, wait_until, worker_argv, worker_env
from tests.support.ports import free_port
from tests.support.services import ManagedProcess

ENGINE = REPO / "tests" / "engines" / "observability_engine.py"
STOCK_METRICS = REPO / "tests" / "vectors" / "discovery" / "worker_metrics_after_3_requests.txt"


class Running:
    """A started worker process and how to reach it."""

    def __init__(self, proc: ManagedProcess, port: int, kv: Path, events: Path) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.kv = kv
        self.events = events

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(self.base + path, timeout=2)
        except httpx.HTTPError:
            return None

    def status(self) -> int:
        r = self.get("/health")
        return 0 if r is None else r.status_code

    def wait_status(self, code: int, timeout: float = 5.0) -> None:
        wait_until(lambda: self.status() == code, timeout=timeout, what=f"/health {code}")

    def metrics(self) -> dict[str, Any]:
        r = self.get("/metrics")
        assert r is not None and r.status_code == 200
        return {f.name: f for f in text_string_to_metric_families(r.text)}

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.events) if e["event"] == kind]

    def generate(self, *requests: dict[str, Any]) -> list[list[dict[str, Any]]]:
        async def go() -> list[list[dict[str, Any]]]:
            async with Client("dynamo", "sample", "generate", store=FileStore(self.kv)) as c:
                out = []
                for request in requests:
                    stream = await c.generate({"token_ids": [1, 2, 3], **request})
                    out.append(await stream.collect())
                return out

        return asyncio.run(go())


@pytest.fixture
def start(spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path) -> Iterator[Any]:
    def _start(wait_registered: bool = True, **env: Any) -> Running:
        port = free_port()
        events = tmp_path / "events.jsonl"
        proc = spawn(
            worker_argv(tiny_model, script=ENGINE, extra=("--component", "sample")),
            env=worker_env(file_kv=file_kv, DYN_SYSTEM_PORT=port, OBS_EVENTS=events, **env),
            name="observability",
        )
        running = Running(proc, port, file_kv, events)
        if wait_registered:
            wait_until(
                lambda: any((file_kv / "v1" / "instances").glob("**/*")) or not proc.running,
                timeout=20,
                what="instance registration",
            )
            assert proc.running, proc.log_tail()
        return running

    yield _start


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def label_sets(family: Any, *, skip_endpoint_prefix: str = "worker_kv_query_source") -> set[Any]:
    out = set()
    for s in family.samples:
        if s.labels.get("dynamo_endpoint", "").startswith(skip_endpoint_prefix):
            continue
        out.add((s.name, frozenset(k for k in s.labels if k != "le")))
    return out


def le_values(family: Any) -> list[str]:
    seen: list[str] = []
    for s in family.samples:
        le = s.labels.get("le")
        if le is not None and le not in seen:
            seen.append(le)
    return seen


def test_metrics_match_the_stock_capture(start: Any, tiny_model: Path) -> None:
    w = start(OBS_DP_RANKS="1", OBS_ENGINE_METRICS="1", OBS_CLEANUP_DELAY="1.5")
    before = w.metrics()
    # Lifecycle gauges exist from startup: load time set, drain and cleanup still 0.
    load = before["dynamo_component_model_load_time_seconds"].samples[0]
    assert load.value > 0
    assert before["dynamo_component_drain_time_seconds"].samples[0].value == 0
    assert before["dynamo_component_cleanup_time_seconds"].samples[0].value == 0
    assert load.labels["model"] == load.labels["model_name"] == str(tiny_model)

    outs = w.generate(*({"stop_conditions": {"max_tokens": 4}} for _ in range(3)))
    assert all(o[-1]["finish_reason"] == "length" for o in outs)
    ours = w.metrics()
    stock = families(STOCK_METRICS.read_text())
    for name, fam in stock.items():
        assert name in ours, f"missing family {name}"
        mine = ours[name]
        assert mine.type == fam.type, name
        assert mine.documentation == fam.documentation, name
        assert label_sets(mine) == label_sets(fam), name
        if fam.type == "histogram":
            assert le_values(mine) == le_values(fam), name
    # Everything we add beyond stock is namespaced as ours.
    extra = set(ours) - set(stock) - {"dynamo_component_kv_cache_hit_rate"}
    assert all(n.startswith(("dynamo_lite_", "obs_engine_")) for n in extra), extra

    def value(name: str, **labels: str) -> float:
        return sum(
            s.value
            for fam in ours.values()
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    wid = load.labels["worker_id"]
    assert int(wid, 16) > 0 and wid == wid.lower()
    assert value("dynamo_component_requests_total", dynamo_endpoint="generate") == 3
    assert value("dynamo_component_request_duration_seconds_count") == 3
    assert value("dynamo_component_request_bytes_total") > 0
    assert value("dynamo_component_response_bytes_total") > 0
    assert value("dynamo_work_handler_network_transit_seconds_count") == 3
    assert value("dynamo_work_handler_time_to_first_response_seconds_count") == 3
    assert value("dynamo_component_total_blocks", dp_rank="0") == 1000
    assert value("dynamo_component_gpu_cache_usage_percent", dp_rank="0") == 0.25
    assert value("dynamo_component_uptime_seconds") > 0
    # The engine's own registry is appended, with the auto-labels injected.
    (served,) = [s for s in ours["obs_engine_requests"].samples if s.name.endswith("_total")]
    assert served.value == 3
    assert served.labels["worker_id"] == wid and served.labels["dynamo_endpoint"] == "generate"

    # A request still running at SIGTERM makes the drain measurable; cleanup is slow.
    async def long_request() -> None:
        async with Client("dynamo", "sample", "generate", store=FileStore(w.kv)) as c:
            stream = await c.generate({"token_ids": [1], "stop_conditions": {"max_tokens": 40}})
            w.proc.send_signal(signal.SIGTERM)
            await stream.collect()

    asyncio.run(long_request())
    drained = wait_until(
        lambda: (
            (r := w.get("/metrics")) is not None
            and (d := families(r.text)["dynamo_component_drain_time_seconds"].samples[0].value) > 0
            and d
        ),
        timeout=10,
        what="drain time",
    )
    assert drained > 0.05
    assert w.proc.wait(20) == 0


def test_stalled_request_turns_unhealthy_until_it_resumes(start: Any) -> None:
    w = start(DYN_LITE_STALL_TIMEOUT_SECS="0.4")
    w.wait_status(200)

    async def stalled() -> list[dict[str, Any]]:
        async with Client("dynamo", "sample", "generate", store=FileStore(w.kv)) as c:
            stream = await c.generate({"token_ids": [1], "stall_secs": 2.0})
            return await stream.collect()

    async def scenario() -> tuple[list[dict[str, Any]], list[tuple[float, int, Any]]]:
        task = asyncio.create_task(stalled())
        seen: list[tuple[float, int, Any]] = []
        t0 = time.monotonic()
        while not task.done():
            r = await asyncio.to_thread(w.get, "/health")
            seen.append((time.monotonic() - t0, r.status_code if r else 0, r and r.json()))
            await asyncio.sleep(0.05)
        return await task, seen

    outs, seen = asyncio.run(scenario())
    assert outs[-1]["finish_reason"] == "length"
    unhealthy = [(t, body) for t, code, body in seen if code == 503]
    assert unhealthy, seen
    assert unhealthy[0][1]["endpoints"] == {"generate": "notready"}
    # Not before the bound, and healthy again once the stream moved on.
    assert unhealthy[0][0] >= 0.3
    w.wait_status(200, timeout=3)
    ours = w.metrics()
    assert ours["dynamo_lite_stalled_requests"].samples[0].value == 0


def test_canary_verdicts_and_real_traffic(start: Any, tmp_path: Path) -> None:
    mode = tmp_path / "probe-mode"
    mode.write_text("ok")
    w = start(
        DYN_HEALTH_CHECK_ENABLED="true",
        DYN_CANARY_WAIT_TIME="0.5",
        DYN_HEALTH_CHECK_REQUEST_TIMEOUT="0.3",
        OBS_PROBE_MODE=mode,
    )
    # With the canary on, the endpoint waits for a first success.
    r = w.get("/health")
    assert r is not None and r.status_code == 503, r and r.text
    assert r.json()["endpoints"] == {"generate": "notready"}
    w.wait_status(200)
    (probe, *_) = w.events_of("probe")
    request = probe["request"]
    assert request["_HEALTH_CHECK"] is True and request["who"] == "engine"
    assert request["token_ids"] == [7]
    assert request["stop_conditions"]["max_tokens"] == 1
    # Fields stock's deserialisation fills in are there.
    for key in ("model", "eos_token_ids", "mdc_sum", "annotations", "output_options"):
        assert key in request
    assert len(w.events_of("health_check_payload")) == 1

    for bad in ("error", "finish_error", "empty", "timeout"):
        mode.write_text(bad)
        w.wait_status(503)
        mode.write_text("ok")
        w.wait_status(200)
    # The timed-out probe was closed, not left hanging.
    assert [e["mode"] for e in w.events_of("probe_closed")].count("timeout") >= 1
    probes = {
        s.labels["result"]: s.value
        for s in w.metrics()["dynamo_lite_health_check_probes"].samples
        if s.name.endswith("_total")
    }
    assert probes["error"] >= 2 and probes["empty"] >= 1 and probes["timeout"] >= 1

    # Failing probes flip /health; a successful real request flips it back.
    mode.write_text("error")
    w.wait_status(503)
    w.generate({"stop_conditions": {"max_tokens": 2}})
    w.wait_status(200, timeout=2)
    # Steady real traffic keeps the canary quiet (the idle timer never runs out).
    probes_before = len(w.events_of("probe"))

    async def traffic() -> list[int]:
        codes = []
        async with Client("dynamo", "sample", "generate", store=FileStore(w.kv)) as c:
            for _ in range(12):
                stream = await c.generate({"token_ids": [1], "stop_conditions": {"max_tokens": 2}})
                await stream.collect()
                codes.append(w.status())
                await asyncio.sleep(0.1)
        return codes

    codes = asyncio.run(traffic())
    assert codes == [200] * len(codes)
    assert len(w.events_of("probe")) == probes_before
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(20) == 0


def test_canary_uses_the_env_payload_and_skips_the_engine(start: Any) -> None:
    w = start(
        DYN_HEALTH_CHECK_ENABLED="1",
        DYN_CANARY_WAIT_TIME="0.3",
        DYN_HEALTH_CHECK_PAYLOAD=json.dumps({"token_ids": [5], "_HEALTH_CHECK": False}),
    )
    w.wait_status(200)
    (probe, *_) = w.events_of("probe")
    assert probe["request"]["token_ids"] == [5]
    assert probe["request"]["_HEALTH_CHECK"] is True
    assert "who" not in probe["request"]
    assert w.events_of("health_check_payload") == []


def test_canary_off_without_payload_or_switch(start: Any) -> None:
    # Enabled, but the engine has no payload: ready at registration, no probes.
    w = start(DYN_HEALTH_CHECK_ENABLED="1", DYN_CANARY_WAIT_TIME="0.2", OBS_ENGINE_PAYLOAD="null")
    w.wait_status(200, timeout=2)
    time.sleep(0.6)
    assert w.events_of("probe") == []
    assert w.status() == 200


def test_jsonl_logs_with_dyn_log_filters(start: Any) -> None:
    w = start(DYN_LOGGING_JSONL="1", DYN_LOG="warn,dynamo_lite.lifecycle=info")
    w.wait_status(200)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(20) == 0
    lines = [json.loads(line) for line in w.proc.log_text().splitlines() if line.startswith("{")]
    assert lines
    for rec in lines:
        assert list(rec)[:6] == ["time", "level", "file", "line", "target", "message"], rec
        assert rec["time"].endswith("Z") and rec["level"] in ("WARN", "ERROR", "INFO")
    transitions = [r for r in lines if r.get("event") == "lifecycle"]
    assert [(t["from_state"], t["to_state"]) for t in transitions][:2] == [
        ("created", "connecting"),
        ("connecting", "starting"),
    ]
    assert all({"reason", "elapsed"} <= set(t) for t in transitions)
    assert transitions[-1]["to_state"] == "stopped"
    # The filter: INFO only from the lifecycle target, nothing below WARN elsewhere.
    assert {r["target"] for r in lines if r["level"] == "INFO"} == {"dynamo_lite.lifecycle"}
    assert not any(r["message"].startswith("Serving ") for r in lines)


# --- tracing (in-process: the spans are read back from an in-memory exporter) ------------
# The SDK is a dev extra: the `exporter` fixture skips these tests without it (and
# fails them under CI); the rest of the module never depends on it.


class TracedEngine(LLMEngine):
    """Streams three tokens, or raises / hangs as the request's ``mode`` asks."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.seen: dict[str, Any] = {}

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[Any, WorkerConfig]:
        raise NotImplementedError

    async def start(self, worker_id: int) -> EngineConfig:
        return EngineConfig(model=self.model)

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        mode = request.get("mode")  # type: ignore[typeddict-item]
        self.seen["inbound"] = context.trace_headers()
        self.seen["forward"] = telemetry.trace_headers(context)
        telemetry.current_span(context).set_attribute("engine.note", "hello")
        with telemetry.start_span(context, "tokenize", batch=2):
            pass
        if mode == "raise":
            raise RuntimeError("engine failed")
        if mode == "finish-after-stop":
            # A terminal chunk once the frontend has gone (engines often do this).
            yield {"token_ids": [1], "index": 0}
            await context.stopped()
            yield {"token_ids": [], "index": 0, "finish_reason": "cancelled"}
            return
        for i in range(3):
            if mode == "hang" and i == 1:
                await asyncio.sleep(3600)
            await asyncio.sleep(0.002)
            chunk: GenerateChunk = {"token_ids": [i + 1], "index": 0}
            if i == 2:
                chunk["finish_reason"] = "length"
            yield chunk

    async def cleanup(self) -> None:
        pass


async def _span_ended(exporter: Any, n: int) -> None:
    """Wait until ``n`` requests' ``engine.generate`` spans have ended."""
    async with asyncio.timeout(10):
        while sum(s.name == "engine.generate" for s in exporter.get_finished_spans()) < n:
            await asyncio.sleep(0.01)


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[Any]:
    require_module("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    telemetry.use_tracer_provider(provider)
    try:
        yield memory
    finally:
        telemetry.use_tracer_provider(None)


def traced_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exporter: Any,
    *requests: dict[str, Any],
    engine_cls: type[TracedEngine] = TracedEngine,
) -> Any:
    """Serve ``requests`` (with a W3C traceparent header) through an in-process worker."""
    real_encode = rp.encode_frame

    def with_trace(path: str, headers: dict[str, str], payload: bytes) -> bytes:
        headers = {**headers, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "k=v"}
        return real_encode(path, headers, payload)

    monkeypatch.setattr("dynamo_lite.client.rp.encode_frame", with_trace)
    model = write_tiny_model(tmp_path / "tiny")
    engine = engine_cls(str(model))
    space = uuid.uuid4().hex

    async def go() -> list[Any]:
        worker = Worker(
            engine,
            WorkerConfig(namespace="dynamo", component="t", model_name=str(model)),
            settings=RuntimeSettings(tcp_host="127.0.0.1", grace_period=0.0),
            store=MemoryStore(space),
            handle_signals=False,
        )
        task = asyncio.create_task(worker.run())
        results: list[Any] = []
        async with Client("dynamo", "t", "generate", store=MemoryStore(space)) as client:
            await client.wait_for_instances(10)
            for request in requests:
                stream = await client.generate({"token_ids": [5, 6], **request})
                try:
                    if request.get("mode") in ("hang", "finish-after-stop"):
                        async for _ in stream:
                            await stream.cancel()
                            break
                        await _span_ended(exporter, len(results) + 1)
                    else:
                        results.append(await stream.collect())
                except Exception as exc:
                    results.append(exc)
        worker.request_shutdown()
        assert await asyncio.wait_for(task, 20) == 0
        return results

    asyncio.run(go())
    return engine


def test_one_engine_generate_span_per_request(
    exporter: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.trace import SpanKind, StatusCode

    engine = traced_run(tmp_path, monkeypatch, exporter, {"model": "tiny"})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    span = spans["engine.generate"]
    assert span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_ID
    attrs = dict(span.attributes)
    assert attrs["model"] == "tiny" and attrs["input_tokens"] == 2
    assert attrs["disagg_role"] == "agg" and attrs["request_id"]
    assert attrs["output_tokens"] == 3 and attrs["finish_reason"] == "Length"
    assert attrs["cancelled"] is False and attrs["engine.note"] == "hello"
    for key in ("ttft_ms", "avg_itl_ms", "itl_p50_ms", "itl_p99_ms", "itl_max_ms"):
        assert float(attrs[key]) >= 0
    assert span.status.status_code is not StatusCode.ERROR
    child = spans["tokenize"]
    assert child.parent is not None and child.parent.span_id == span.context.span_id
    # The engine sees the frontend's headers, and forwards ones pointing at its span.
    assert engine.seen["inbound"]["traceparent"] == f"00-{TRACE_ID}-{PARENT_ID}-01"
    assert engine.seen["inbound"]["tracestate"] == "k=v"
    forward = engine.seen["forward"]["traceparent"]
    assert forward == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"


def test_spans_of_failed_and_cancelled_requests(
    exporter: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.trace import StatusCode

    traced_run(tmp_path, monkeypatch, exporter, {"mode": "raise"}, {"mode": "hang"})
    failed, cancelled = [s for s in exporter.get_finished_spans() if s.name == "engine.generate"]
    assert failed.attributes["error_kind"] == "Backend(Unknown)"
    assert failed.status.status_code is StatusCode.ERROR
    assert cancelled.attributes["finish_reason"] == "Dropped"
    assert cancelled.attributes["cancelled"] is True
    assert cancelled.status.status_code is StatusCode.ERROR


def test_a_terminal_chunk_after_a_cancellation_still_ends_a_dropped_span(
    exporter: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint ends the stream at the cancellation, so an engine's own
    terminal chunk after it is never delivered: the span says Dropped, as the
    span-event records (and stock's span) do."""
    traced_run(tmp_path, monkeypatch, exporter, {"mode": "finish-after-stop"})
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "engine.generate"]
    assert span.attributes["finish_reason"] == "Dropped"
    assert span.attributes["cancelled"] is True


class RefusingEngine(TracedEngine):
    """``generate()`` raises before it returns a stream (a plain function)."""

    def generate(  # type: ignore[override]
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        raise ValueError("refused before streaming")


def test_a_span_when_generate_raises_before_returning_its_stream(
    exporter: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.trace import StatusCode

    traced_run(tmp_path, monkeypatch, exporter, {"model": "tiny"}, engine_cls=RefusingEngine)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "engine.generate"]
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.attributes["error_kind"] == "Backend(InvalidArgument)"
    assert span.attributes["model"] == "tiny" and span.attributes["request_id"]
    assert span.status.status_code is StatusCode.ERROR


def test_tracing_is_off_without_a_provider_or_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = Context("r", trace_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert not telemetry.active()  # the API's default proxy provider: nothing to export to
    # As if opentelemetry-api were not installed.
    monkeypatch.setattr(telemetry, "_trace", None)
    monkeypatch.setattr(telemetry, "_loaded", False)
    assert not telemetry.active()
    proxy = telemetry.current_span(ctx)
    proxy.set_attribute("k", 1)
    proxy.add_event("e")
    proxy.set_status("error", "x")
    with telemetry.start_span(ctx, "child") as child:
        child.set_attribute("k", 2)
    assert telemetry.trace_headers(ctx) == {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    assert telemetry.engine_trace_kwargs(ctx) == {
        "trace_headers": {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    }
    assert telemetry.engine_trace_kwargs(Context("x")) == {}


def test_opentelemetry_is_not_imported_until_used() -> None:
    import subprocess
    import sys

    code = "import sys, dynamo_lite.run; assert 'opentelemetry' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
