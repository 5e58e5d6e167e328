"""Metrics without processes: histograms, the scrape-time collector, engine registries,
the system-port setting and the readiness model behind /health."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from dynamo_lite import (
    ComponentSnapshot,
    Context,
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    LLMEngine,
    RuntimeSettings,
    Worker,
    WorkerConfig,
)
from dynamo_lite.client import Client
from dynamo_lite.discovery import MemoryStore
from dynamo_lite.metrics import (
    EngineMetrics,
    WorkerMetrics,
    gather_with_labels,
    register_engine_registry,
    register_global_registry,
)
from dynamo_lite.stats import REQUEST_DURATION_BUCKETS, Histogram, WorkerStats
from dynamo_lite.system_server import HealthStatus
from dynamo_lite.tiny_model import write_tiny_model


def samples(text: bytes | str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    raw = text.decode() if isinstance(text, bytes) else text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(raw)
        for s in fam.samples
    }


def by_name(text: bytes, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
        if s.name == name
    ]


# --- histogram --------------------------------------------------------------------------


def test_histogram_buckets_are_inclusive_and_cumulative() -> None:
    h = Histogram(REQUEST_DURATION_BUCKETS)
    for v in (0.005, 0.0051, 1.0, 700.0):
        h.observe(v)
    buckets = dict(h.cumulative())
    assert buckets["0.005"] == 1  # le is inclusive
    assert buckets["0.01"] == 2
    assert buckets["1"] == 3 and buckets["600"] == 3
    assert buckets["+Inf"] == 4 and h.count == 4
    assert h.sum == pytest.approx(701.0101)
    # Bucket bounds are spelled as stock spells them.
    assert list(buckets)[:8] == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1"]


# --- collector ------------------------------------------------------------------------


def worker_stats(**overrides: Any) -> WorkerStats:
    return WorkerStats(namespace="ns", component="comp", endpoint_name="generate", **overrides)


def test_only_process_families_before_the_instance_id_is_known() -> None:
    m = WorkerMetrics(worker_stats())
    names = {fam.name for fam in text_string_to_metric_families(m.render().decode())}
    assert names
    assert all(n.startswith(("dynamo_work_handler_", "dynamo_engine", "dynamo_re")) for n in names)


def test_lifecycle_and_rank_gauges_follow_the_worker_state() -> None:
    ranks: dict[int, Any] = {0: None, 1: None}
    stats = worker_stats(instance_id=0xABC, ranks=ranks)
    m = WorkerMetrics(stats)
    assert by_name(m.render(), "dynamo_component_model_load_time_seconds") == []
    stats.model = "served"
    stats.model_load_seconds = 1.5
    text = m.render()
    ((labels, load),) = by_name(text, "dynamo_component_model_load_time_seconds")
    assert load == 1.5
    assert labels == {
        "dynamo_namespace": "ns",
        "dynamo_component": "comp",
        "dynamo_endpoint": "generate",
        "worker_id": "abc",
        "model": "served",
        "model_name": "served",
    }
    assert by_name(text, "dynamo_component_cleanup_time_seconds")[0][1] == 0
    # Ranks are seeded at 0; the hit rate only appears once a snapshot carries one.
    assert sorted(lab["dp_rank"] for lab, _ in by_name(text, "dynamo_component_total_blocks")) == [
        "0",
        "1",
    ]
    assert by_name(text, "dynamo_component_kv_cache_hit_rate") == []
    ranks[0] = ComponentSnapshot(
        kv_used_blocks=1, kv_total_blocks=64, gpu_cache_usage=0.5, dp_rank=0, kv_cache_hit_rate=0.0
    )
    ranks[1] = {"kv_total_blocks": 32, "gpu_cache_usage": 0.1}
    stats.drain_seconds, stats.cleanup_seconds = 0.25, 0.75
    text = m.render()
    blocks = {lab["dp_rank"]: v for lab, v in by_name(text, "dynamo_component_total_blocks")}
    assert blocks == {"0": 64, "1": 32}
    ((hit_labels, hit),) = by_name(text, "dynamo_component_kv_cache_hit_rate")
    assert hit == 0.0 and hit_labels["dp_rank"] == "0"
    assert by_name(text, "dynamo_component_drain_time_seconds")[0][1] == 0.25
    assert by_name(text, "dynamo_component_cleanup_time_seconds")[0][1] == 0.75


def test_metrics_labels_go_on_every_series_without_replacing_ours(
    caplog: pytest.LogCaptureFixture,
) -> None:
    labels = [("zone", "eu"), ("model", "from-labels"), ("le", "x")]
    m = WorkerMetrics(worker_stats(metrics_labels=labels, instance_id=1, model="m"))
    assert "reserved" in caplog.text
    fams = list(text_string_to_metric_families(m.render().decode()))
    assert fams
    for fam in fams:
        for s in fam.samples:
            assert s.labels["zone"] == "eu", s
    ((req_labels, _),) = by_name(m.render(), "dynamo_component_requests_total")
    assert req_labels["model"] == "from-labels"
    ((load_labels, _),) = by_name(m.render(), "dynamo_component_model_load_time_seconds")
    assert load_labels["model"] == "m"
    # Engine registries get the same labels, with the worker's own winning.
    assert m.engine_metrics().auto_labels["model"] == "m"
    assert m.engine_metrics().auto_labels["zone"] == "eu"


def test_counters_come_from_endpoint_stats() -> None:
    stats = worker_stats(instance_id=1)
    st = stats.endpoint
    st.requests, st.request_bytes, st.response_bytes, st.cancelled = 4, 400, 900, 1
    st.rejected, st.overloaded, st.errors, st.aborts, st.cut, st.dropped_chunks = 3, 2, 1, 1, 1, 5
    st.inflight = 2
    st.duration.observe(0.2)
    m = WorkerMetrics(stats)
    got = {name: v for (name, _), v in samples(m.render()).items()}
    assert got["dynamo_component_requests_total"] == 4
    assert got["dynamo_component_request_bytes_total"] == 400
    assert got["dynamo_component_response_bytes_total"] == 900
    assert got["dynamo_component_cancellation_total"] == 1
    assert got["dynamo_component_inflight_requests"] == 2
    assert got["dynamo_engine_request"] == 2
    assert got["dynamo_rejection_request_total"] == 2
    assert got["dynamo_lite_requests_rejected_total"] == 3
    assert got["dynamo_lite_stream_dropped_chunks_total"] == 5
    assert got["dynamo_component_request_duration_seconds_count"] == 1
    assert got["dynamo_work_handler_pool_capacity"] == 10_000
    assert got["dynamo_work_handler_queue_capacity"] == 40_000


def test_views_onto_live_state_are_read_at_scrape_time() -> None:
    state = {"ready": False, "stalled": 0, "renewals": 0, "dropped": 0}
    probes = {"ok": 0, "error": 0, "empty": 0, "timeout": 0}
    stats = worker_stats(
        instance_id=1,
        ready=lambda: state["ready"],
        stalled=lambda: state["stalled"],
        lease_renewals=lambda: state["renewals"],
        kv_dropped_events=lambda: state["dropped"],
    )
    m = WorkerMetrics(stats)
    text = m.render()
    assert by_name(text, "dynamo_lite_ready")[0][1] == 0
    assert by_name(text, "dynamo_lite_health_check_probes_total") == []  # canary off
    state.update(ready=True, stalled=2, renewals=7, dropped=3)
    stats.probes = probes
    probes["timeout"] += 1
    stats.lease_losses, stats.lease_recoveries = 1, 2
    got = {name: v for (name, _), v in samples(m.render()).items()}
    assert got["dynamo_lite_ready"] == 1
    assert got["dynamo_lite_stalled_requests"] == 2
    assert got["dynamo_lite_lease_renewals_total"] == 7
    assert got["dynamo_lite_lease_losses_total"] == 1
    assert got["dynamo_lite_lease_recoveries_total"] == 2
    assert got["dynamo_component_kv_publisher_engines_dropped_events_total"] == 3
    verdicts = {
        labels["result"]: v
        for labels, v in by_name(m.render(), "dynamo_lite_health_check_probes_total")
    }
    assert verdicts == {"ok": 0, "error": 0, "empty": 0, "timeout": 1}


# --- engine registries ------------------------------------------------------------------


def test_engine_registry_is_appended_with_auto_labels() -> None:
    m = WorkerMetrics(worker_stats(instance_id=0x1F, model="m"))
    handle = m.engine_metrics()
    assert handle.auto_labels["worker_id"] == "1f"
    registry = CollectorRegistry()
    Counter("vllm:prompt_tokens", "prompt tokens", registry=registry).inc(5)
    g = Gauge("vllm:running", "running", ["model"], registry=registry)
    g.labels(model="engine-own").set(2)
    Gauge("python_noise", "not ours", registry=registry).set(1)
    register_engine_registry(handle, registry, prefix_filters=["vllm:"])
    handle.add_expfmt_callback(lambda: "# TYPE raw_metric gauge\nraw_metric 7")

    def broken() -> str:
        raise RuntimeError("engine bug")

    handle.register_prometheus_expfmt_callback(broken)
    text = m.render()
    ((labels, value),) = by_name(text, "vllm:prompt_tokens_total")
    assert value == 5 and labels["dynamo_endpoint"] == "generate" and labels["model"] == "m"
    ((labels, _),) = by_name(text, "vllm:running")
    assert labels["model"] == "engine-own"  # labels a metric has win
    assert by_name(text, "python_noise") == []
    assert by_name(text, "raw_metric")[0][1] == 7
    assert by_name(text, "dynamo_component_requests_total")


def test_gather_with_labels_and_global_registry() -> None:
    registry = CollectorRegistry()
    Gauge("sglang:a", "a", registry=registry).set(1)
    Gauge("sglang:b_skip", "b", registry=registry).set(2)
    text = gather_with_labels(
        registry, {"worker_id": "9"}, prefix_filters=["sglang:"], exclude_prefixes=["sglang:b"]
    )
    assert by_name(text.encode(), "sglang:a") == [({"worker_id": "9"}, 1.0)]
    assert by_name(text.encode(), "sglang:b_skip") == []
    handle = EngineMetrics({"worker_id": "9"})
    name = f"lite_test_{uuid.uuid4().hex[:8]}:x"
    gauge = Gauge(name, "global")
    try:
        gauge.set(3)
        register_global_registry(handle, engine_prefix=name.split(":")[0] + ":")
        (callback,) = handle.expfmt_callbacks
        assert by_name(callback().encode(), name) == [({"worker_id": "9"}, 3.0)]
    finally:
        from prometheus_client import REGISTRY

        REGISTRY.unregister(gauge)


# --- settings and health ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "port"),
    [(None, None), ("", None), ("0", 0), ("40000", 40000), ("65535", 65535), ("70000", None),
     ("-1", None), ("x", None)],
)  # fmt: skip
def test_system_port_accepts_every_valid_port(raw: str | None, port: int | None) -> None:
    env = {} if raw is None else {"DYN_SYSTEM_PORT": raw}
    assert RuntimeSettings.from_env(env).system_port == port


def test_health_readiness_model() -> None:
    h = HealthStatus({})
    assert not h.ready and h.body()["endpoints"] == {}
    h.set_endpoint("generate", True)
    h.serving = True
    assert h.ready
    h.set_endpoint("generate", False)  # a failed canary
    assert not h.ready
    h.set_endpoint("generate", True)
    h.veto("stall", "1 stalled request", "generate")
    assert not h.ready and h.body()["endpoints"] == {"generate": "notready"}
    h.lift("stall")
    assert h.ready
    h.veto("global", "down")
    assert not h.ready and h.body()["endpoints"] == {"generate": "ready"}
    h.lift("global")
    h.shutting_down = True
    assert not h.ready
    listed = HealthStatus({"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]'})
    assert listed.body()["endpoints"] == {"generate": "notready"}
    listed.set_endpoint("generate", True)
    assert listed.ready
    starting = HealthStatus({"DYN_SYSTEM_STARTING_HEALTH_STATUS": "ready"})
    assert starting.ready


# --- an in-process worker ---------------------------------------------------------------


class SlowCleanupEngine(LLMEngine):
    def __init__(self, model: str) -> None:
        self.model = model

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[Any, WorkerConfig]:
        raise NotImplementedError

    async def start(self, worker_id: int) -> EngineConfig:
        return EngineConfig(model=self.model)

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        yield {"token_ids": [1], "index": 0, "finish_reason": "stop"}

    async def cleanup(self) -> None:
        await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_worker_sets_the_shutdown_gauges(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny")
    space = uuid.uuid4().hex
    worker = Worker(
        SlowCleanupEngine(str(model)),
        WorkerConfig(namespace="dynamo", component="t", model_name=str(model)),
        settings=RuntimeSettings(tcp_host="127.0.0.1", grace_period=0.0),
        store=MemoryStore(space),
        handle_signals=False,
    )
    task = asyncio.create_task(worker.run())
    async with Client("dynamo", "t", "generate", store=MemoryStore(space)) as client:
        await client.wait_for_instances(10)
        stream = await client.generate({"token_ids": [1]})
        await stream.collect()
    text = worker.metrics.render()
    assert by_name(text, "dynamo_component_requests_total")[0][1] == 1
    ((labels, _),) = by_name(text, "dynamo_component_model_load_time_seconds")
    assert labels["model"] == str(model) and labels["worker_id"] == f"{worker.instance_id:x}"
    assert by_name(text, "dynamo_work_handler_pool_capacity")[0][1] == 10_000
    # Discovery's recovery hook is where the worker counts a recovery.
    assert worker.store.on_recovered is not None
    await worker.store.on_recovered("keepalive resumed")
    assert by_name(worker.metrics.render(), "dynamo_lite_lease_recoveries_total")[0][1] == 1
    assert by_name(text, "dynamo_component_cleanup_time_seconds")[0][1] == 0
    worker.request_shutdown()
    assert await asyncio.wait_for(task, 20) == 0
    text = worker.metrics.render()
    assert by_name(text, "dynamo_component_cleanup_time_seconds")[0][1] >= 0.05
    assert by_name(text, "dynamo_lite_ready")[0][1] == 0
