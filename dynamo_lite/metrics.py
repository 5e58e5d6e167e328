"""Prometheus metrics for ``/metrics``, named and labelled as the stock 1.6.1 worker exports them.

Theory of operation
-------------------
Nothing on the request path talks to prometheus_client (imported at the
first scrape). The endpoint keeps
plain counters (:class:`dynamo_lite.stats.EndpointStats`), updated once
per request (response bytes once per chunk, an integer add), plus three
:class:`Histogram` objects whose ``observe`` is one bisect and two adds.
At scrape time :class:`WorkerMetrics` — a custom collector registered in
its own :class:`~prometheus_client.CollectorRegistry`, never the global
one — reads the worker's :class:`~dynamo_lite.stats.WorkerStats` (those
counters, the lifecycle timings, the per-rank snapshots an engine
publishes, the canary's verdicts, readiness, the lease counters) and
builds the metric families from scratch; it never sees the worker. A
scrape costs a few hundred microseconds; a request costs nothing extra.

Families (labels ``dynamo_namespace``, ``dynamo_component``,
``dynamo_endpoint``, ``worker_id`` = the instance id in lowercase hex,
plus ``WorkerConfig.metrics_labels`` on every series):

* work handler, per endpoint — ``dynamo_component_requests_total``,
  ``…_request_bytes_total``, ``…_response_bytes_total``,
  ``…_request_duration_seconds`` (histogram), ``…_inflight_requests``,
  ``…_cancellation_total``; ``dynamo_component_uptime_seconds``
  (``worker_id`` only); ``…_kv_publisher_engines_dropped_events_total``
  (no endpoint label; KV events lost to a full queue or a slow event plane);
* lifecycle gauges once ``start()`` returned (plus ``model``,
  ``model_name``): ``…_model_load_time_seconds``, ``…_drain_time_seconds``
  and ``…_cleanup_time_seconds`` (0 until shutdown measured them);
* per-rank gauges when the engine declared dp ranks (plus ``dp_rank``):
  ``…_total_blocks``, ``…_gpu_cache_usage_percent`` (seeded at 0) and
  ``…_kv_cache_hit_rate`` (only once a snapshot carried one);
* process-wide, unlabelled: ``dynamo_engine_request``,
  ``dynamo_request_queue``, ``dynamo_rejection_request_total``,
  ``dynamo_work_handler_*`` (pool and queue gauges, three histograms);
* beyond stock, prefixed ``dynamo_lite_`` so they can never collide with a
  future stock name: validator drops, aborts, error items, cut streams,
  rejections, stalled requests, canary probe results, readiness and lease
  renewals / losses / recoveries.

Histogram buckets and their ``le`` strings are the stock ones. Engines bridge
their own registries through :class:`EngineMetrics` (the object
``register_prometheus`` receives); their exposition text is appended.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .admission import EngineGate
from .multiproc import bridge_global_registry, ensure_prometheus_multiproc_dir
from .stats import (
    PERMIT_WAIT_BUCKETS,
    Histogram,
    QueueGauges,
    WorkerStats,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

__all__ = [
    "CONTENT_TYPE",
    "EngineMetrics",
    "Histogram",
    "WorkerMetrics",
    "ensure_prometheus_multiproc_dir",
    "gather_with_labels",
    "register_engine_registry",
    "register_global_registry",
]

#: The 0.0.4 text format is what ``generate_latest`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: What the gauges read for an endpoint without an engine request limit.
_UNLIMITED = EngineGate()

NS, COMP, EP, WID = "dynamo_namespace", "dynamo_component", "dynamo_endpoint", "worker_id"
MODEL, MODEL_NAME, DP_RANK = "model", "model_name", "dp_rank"
#: Label names with a meaning to Prometheus itself; a metrics label may not use them.
_RESERVED = frozenset({"le", "quantile"})

#: name → (type, HELP). HELP texts are the stock ones where stock has the family.
FAMILIES: dict[str, tuple[str, str]] = {
    "dynamo_component_requests_total": (
        "counter", "Total number of requests processed by work handler"),
    "dynamo_component_request_bytes_total": (
        "counter", "Total number of bytes received in requests by work handler"),
    "dynamo_component_response_bytes_total": (
        "counter", "Total number of bytes sent in responses by work handler"),
    "dynamo_component_request_duration_seconds": (
        "histogram", "Time spent processing requests by work handler"),
    "dynamo_component_inflight_requests": (
        "gauge", "Number of requests currently being processed by work handler"),
    "dynamo_component_cancellation_total": (
        "counter", "Total number of requests cancelled by work handler"),
    "dynamo_component_uptime_seconds": (
        "gauge", "Total uptime of the DistributedRuntime in seconds"),
    "dynamo_component_kv_publisher_engines_dropped_events_total": (
        "counter",
        "Total number of raw events dropped by engines before reaching publisher "
        "(detected via event_id gaps)"),
    "dynamo_component_model_load_time_seconds": (
        "gauge", "Time engine.start() took to return. Set once at Worker setup."),
    "dynamo_component_drain_time_seconds": (
        "gauge",
        "Time spent draining in-flight work before cleanup. Stays at 0 for engines "
        "without a drain hook."),
    "dynamo_component_cleanup_time_seconds": (
        "gauge",
        "Time spent releasing engine resources during shutdown. Set by the framework "
        "once after engine.cleanup() returns."),
    "dynamo_component_total_blocks": (
        "gauge", "Total number of KV cache blocks available on the worker."),
    "dynamo_component_gpu_cache_usage_percent": (
        "gauge", "GPU cache usage as a percentage (0.0-1.0)."),
    "dynamo_component_kv_cache_hit_rate": (
        "gauge", "Prefix cache hit rate (0.0-1.0). Portable across engines."),
    "dynamo_engine_request": (
        "gauge",
        "Current number of requests being handled by the engine (--engine-request-limit)"),
    "dynamo_request_queue": (
        "gauge",
        "Current number of requests queued in Dynamo not yet in the engine "
        "(--dynamo-request-queue-limit)"),
    "dynamo_rejection_request_total": (
        "counter",
        "Requests rejected because the worker is at capacity (engine in-flight limit and "
        "Dynamo queue both full)"),
    "dynamo_work_handler_enqueue_rejected_total": (
        "counter", "Times enqueuing work failed because the dispatcher channel was closed"),
    "dynamo_work_handler_network_transit_seconds": (
        "histogram",
        "Frontend-to-backend network transit time (cross-process wall-clock, seconds)"),
    "dynamo_work_handler_permit_wait_seconds": (
        "histogram", "Time spent waiting for a worker-pool permit (seconds)"),
    "dynamo_work_handler_pool_active_tasks": (
        "gauge", "Current number of active worker-pool tasks (permits in use)"),
    "dynamo_work_handler_pool_capacity": (
        "gauge", "Configured worker-pool capacity (total permits)"),
    "dynamo_work_handler_queue_capacity": (
        "gauge", "Configured capacity of the bounded work queue"),
    "dynamo_work_handler_queue_depth": (
        "gauge", "Current items in the bounded work queue awaiting dispatcher pickup"),
    "dynamo_work_handler_time_to_first_response_seconds": (
        "histogram",
        "Backend processing time from handle_payload entry to prologue sent (seconds)"),
    # --- beyond stock ---
    "dynamo_lite_requests_rejected_total": (
        "counter", "Requests refused at admission (not serving, at capacity or malformed)"),
    "dynamo_lite_request_errors_total": (
        "counter", "Requests that ended with an error item"),
    "dynamo_lite_aborts_total": (
        "counter", "engine.abort() calls made for cancelled requests"),
    "dynamo_lite_stream_dropped_chunks_total": (
        "counter", "Chunks the stream validator dropped (yielded after the terminal chunk)"),
    "dynamo_lite_streams_cut_total": (
        "counter", "In-flight streams ended with an error item because the worker shut down"),
    "dynamo_lite_stalled_requests": (
        "gauge",
        "In-flight requests without a chunk for longer than DYN_LITE_STALL_TIMEOUT_SECS"),
    "dynamo_lite_health_check_probes_total": (
        "counter", "Canary health-check probes by verdict (ok, error, empty, timeout)"),
    "dynamo_lite_ready": (
        "gauge", "1 while /health answers 200, else 0"),
    "dynamo_lite_lease_renewals_total": (
        "counter", "Discovery lease keepalives that succeeded"),
    "dynamo_lite_lease_losses_total": (
        "counter", "Times discovery liveness was lost for good (the worker then shuts down)"),
    "dynamo_lite_lease_recoveries_total": (
        "counter", "Times discovery liveness was lost and restored under the same instance id"),
}  # fmt: skip


# --- scrape-time collection --------------------------------------------------------


class _Families:
    """Builds metric families in first-use order, series by series."""

    def __init__(self, extra: Mapping[str, str]) -> None:
        self.extra = extra
        self.metrics: dict[str, Metric] = {}

    def _metric(self, name: str) -> Metric:
        from prometheus_client.metrics_core import Metric

        metric = self.metrics.get(name)
        if metric is None:
            kind, help_ = FAMILIES[name]
            base = name.removesuffix("_total") if kind == "counter" else name
            metric = self.metrics[name] = Metric(base, help_, kind)
        return metric

    def _labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        # metrics_labels never replace a label the series already has.
        merged = {**self.extra, **labels}
        return {k: merged[k] for k in sorted(merged)}

    def value(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self._metric(name).add_sample(name, self._labels(labels), float(value))

    def histogram(self, name: str, labels: Mapping[str, str], hist: Histogram) -> None:
        metric = self._metric(name)
        base = self._labels(labels)
        for le, count in hist.cumulative():
            metric.add_sample(f"{name}_bucket", {**base, "le": le}, count)
        metric.add_sample(f"{name}_sum", base, hist.sum)
        metric.add_sample(f"{name}_count", base, float(hist.count))


def _field(snapshot: Any, name: str) -> Any:
    if isinstance(snapshot, Mapping):
        return snapshot.get(name)
    return getattr(snapshot, name, None)


def extra_labels(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``WorkerConfig.metrics_labels`` as a dict (``le`` and ``quantile`` refused).

    They go on every series that does not already have a label of that name:
    the worker's own labels win, as stock's auto-labels win over custom ones.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        try:
            key, value = pair
        except (TypeError, ValueError):
            logger.warning("ignoring metrics label %r: not a (name, value) pair", pair)
            continue
        key = str(key)
        if key in _RESERVED:
            logger.warning("ignoring metrics label %r: reserved by Prometheus", key)
            continue
        out[key] = str(value)
    return out


class WorkerMetrics:
    """The worker's registry; see the module docstring.

    prometheus_client is imported at the first scrape, not before: a worker
    without a system port never loads it.
    """

    def __init__(self, stats: WorkerStats) -> None:
        self.stats = stats
        self._registry: Any = None
        self.engine = EngineMetrics({})
        self.extra = extra_labels(stats.metrics_labels)
        self.unavailable_reported = False

    # --- engine bridge ---------------------------------------------------------
    def engine_metrics(self) -> EngineMetrics:
        """The handle ``register_prometheus`` receives (auto-labels filled in)."""
        self.engine.auto_labels = {**self.extra, **self._model_labels()}
        return self.engine

    def _endpoint_labels(self) -> dict[str, str]:
        s = self.stats
        assert s.instance_id is not None
        return {
            NS: s.namespace,
            COMP: s.component,
            EP: s.endpoint_name,
            WID: f"{s.instance_id:x}",
        }

    def _model_labels(self) -> dict[str, str]:
        labels = self._endpoint_labels() if self.stats.instance_id is not None else {}
        name = self.stats.model or ""
        return {**labels, MODEL: name, MODEL_NAME: name}

    # --- Collector -------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        s = self.stats
        f = _Families(self.extra)
        if s.instance_id is not None:
            self._work_handler(f)
            if s.model is not None:
                self._lifecycle(f)
                self._ranks(f)
            self._extras(f)
        self._process(f)
        # Sorted by name, as the stock exposition is.
        return iter(sorted(f.metrics.values(), key=lambda m: m.name))

    def _work_handler(self, f: _Families) -> None:
        s = self.stats
        st = s.endpoint
        ep = self._endpoint_labels()
        f.value("dynamo_component_cancellation_total", ep, st.cancelled)
        f.value("dynamo_component_inflight_requests", ep, st.inflight)
        f.value("dynamo_component_request_bytes_total", ep, st.request_bytes)
        f.histogram("dynamo_component_request_duration_seconds", ep, st.duration)
        f.value("dynamo_component_requests_total", ep, st.requests)
        f.value("dynamo_component_response_bytes_total", ep, st.response_bytes)
        wid = {WID: ep[WID]}
        f.value("dynamo_component_uptime_seconds", wid, time.monotonic() - s.started)
        no_ep = {k: v for k, v in ep.items() if k != EP}
        dropped = s.kv_dropped_events()
        f.value("dynamo_component_kv_publisher_engines_dropped_events_total", no_ep, dropped)

    def _lifecycle(self, f: _Families) -> None:
        s = self.stats
        labels = self._model_labels()
        f.value("dynamo_component_model_load_time_seconds", labels, s.model_load_seconds)
        f.value("dynamo_component_drain_time_seconds", labels, s.drain_seconds)
        f.value("dynamo_component_cleanup_time_seconds", labels, s.cleanup_seconds)

    def _ranks(self, f: _Families) -> None:
        latest = self.stats.ranks
        base = self._model_labels()
        for rank in sorted(latest):
            snap = latest[rank]
            labels = {**base, DP_RANK: str(rank)}
            total = _field(snap, "kv_total_blocks") if snap is not None else None
            usage = _field(snap, "gpu_cache_usage") if snap is not None else None
            f.value("dynamo_component_total_blocks", labels, total or 0)
            f.value("dynamo_component_gpu_cache_usage_percent", labels, usage or 0.0)
            hit = _field(snap, "kv_cache_hit_rate") if snap is not None else None
            if hit is not None:
                f.value("dynamo_component_kv_cache_hit_rate", labels, hit)

    def _process(self, f: _Families) -> None:
        s = self.stats
        st = s.endpoint
        f.value("dynamo_engine_request", {}, st.inflight)
        f.value("dynamo_rejection_request_total", {}, st.overloaded)
        gate: QueueGauges = s.queue or _UNLIMITED
        f.value("dynamo_request_queue", {}, gate.queue_depth)
        f.value("dynamo_work_handler_enqueue_rejected_total", {}, 0)
        f.histogram("dynamo_work_handler_network_transit_seconds", {}, st.transit)
        f.histogram("dynamo_work_handler_permit_wait_seconds", {}, _NO_PERMIT_WAIT)
        f.value("dynamo_work_handler_pool_active_tasks", {}, st.inflight)
        f.value("dynamo_work_handler_pool_capacity", {}, s.pool_capacity)
        f.value("dynamo_work_handler_queue_capacity", {}, gate.queue_capacity)
        f.value("dynamo_work_handler_queue_depth", {}, gate.queue_depth)
        f.histogram("dynamo_work_handler_time_to_first_response_seconds", {}, st.first_response)

    def _extras(self, f: _Families) -> None:
        s = self.stats
        st = s.endpoint
        ep = self._endpoint_labels()
        f.value("dynamo_lite_requests_rejected_total", ep, st.rejected)
        f.value("dynamo_lite_request_errors_total", ep, st.errors)
        f.value("dynamo_lite_aborts_total", ep, st.aborts)
        f.value("dynamo_lite_stream_dropped_chunks_total", ep, st.dropped_chunks)
        f.value("dynamo_lite_streams_cut_total", ep, st.cut)
        f.value("dynamo_lite_stalled_requests", ep, s.stalled())
        if s.probes is not None:
            for result, n in s.probes.items():
                f.value("dynamo_lite_health_check_probes_total", {**ep, "result": result}, n)
        wid = {WID: ep[WID]}
        f.value("dynamo_lite_ready", wid, 1 if s.ready() else 0)
        f.value("dynamo_lite_lease_renewals_total", wid, s.lease_renewals())
        f.value("dynamo_lite_lease_losses_total", wid, s.lease_losses)
        f.value("dynamo_lite_lease_recoveries_total", wid, s.lease_recoveries)

    # --- exposition --------------------------------------------------------------
    def render(self) -> bytes:
        """The whole ``/metrics`` body: our families, then every engine registry."""
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        parts = [generate_latest(self._registry)]
        for callback in list(self.engine.expfmt_callbacks):
            try:
                text = callback()
            except Exception as exc:
                logger.warning("engine metrics callback failed; skipping it: %r", exc)
                continue
            if text:
                parts.append(text.encode() if text.endswith("\n") else (text + "\n").encode())
        return b"".join(parts)


#: We have no permit pool, so nobody ever waits for a permit (stock's count stays 0 too).
_NO_PERMIT_WAIT = Histogram(PERMIT_WAIT_BUCKETS)


# --- engine registries ----------------------------------------------------------------

ExpfmtCallback = Callable[[], str]
TypedCallback = Callable[[], list[Any]]


class EngineMetrics:
    """The ``metrics`` handed to ``register_prometheus`` (stock: ``_core.backend.EngineMetrics``).

    ``register_prometheus_expfmt_callback(cb)``: ``cb()`` returns Prometheus
    text that is appended to ``/metrics`` on every scrape.
    ``register_prometheus_typed_callback(cb)``: ``cb()`` returns the families
    typed (:func:`get_prometheus_typed`'s shape); with ``OTEL_EXPORT_ENABLED``
    they are exported over OTLP (:mod:`dynamo_lite.otel_export`).
    ``auto_labels`` are the labels stock injects into engine metrics.
    """

    #: Every handle alive in the process, for the OTLP metric export.
    live: ClassVar[weakref.WeakSet[EngineMetrics]] = weakref.WeakSet()

    def __init__(self, auto_labels: Mapping[str, str]) -> None:
        self.auto_labels: dict[str, str] = dict(auto_labels)
        self.expfmt_callbacks: list[ExpfmtCallback] = []
        self.typed_callbacks: list[TypedCallback] = []
        EngineMetrics.live.add(self)

    def register_prometheus_expfmt_callback(self, callback: ExpfmtCallback) -> None:
        self.expfmt_callbacks.append(callback)

    # The spelling the stock engine docstring uses.
    add_expfmt_callback = register_prometheus_expfmt_callback

    def register_prometheus_typed_callback(self, callback: TypedCallback) -> None:
        self.typed_callbacks.append(callback)


class LabelInjectingCollector:
    """Re-yields a registry's families with extra labels; labels a sample has win."""

    def __init__(self, inner: Collector, labels: Mapping[str, str]) -> None:
        self.inner = inner
        self.labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import Metric

        for metric in self.inner.collect():
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            for sample in metric.samples:
                out.samples.append(sample._replace(labels={**self.labels, **sample.labels}))
            yield out


class _Filtered:
    def __init__(
        self, inner: Collector, include: Sequence[str] | None, exclude: Sequence[str] | None
    ) -> None:
        self.inner = inner
        self.include = tuple(include or ())
        self.exclude = tuple(exclude or ())

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            if self.include and not metric.name.startswith(self.include):
                continue
            if self.exclude and metric.name.startswith(self.exclude):
                continue
            yield metric


def gather_with_labels(
    registry: Collector,
    labels: Mapping[str, str] | None = None,
    *,
    prefix_filters: Sequence[str] | None = None,
    exclude_prefixes: Sequence[str] | None = None,
) -> str:
    """``registry`` as exposition text, filtered by name prefix, ``labels`` injected."""
    from prometheus_client import generate_latest

    source: Collector = _Filtered(registry, prefix_filters, exclude_prefixes)
    if labels:
        source = LabelInjectingCollector(source, labels)
    return generate_latest(source).decode()


def register_engine_registry(
    metrics: EngineMetrics,
    registry: Collector,
    *,
    prefix_filters: Sequence[str] | None = None,
    exclude_prefixes: Sequence[str] | None = None,
) -> None:
    """Append ``registry`` (with the auto-labels) to ``/metrics`` and hand it over
    typed for the OTLP export, as the stock helper of the same name does."""
    labels = dict(metrics.auto_labels)
    metrics.register_prometheus_expfmt_callback(
        lambda: gather_with_labels(
            registry, labels, prefix_filters=prefix_filters, exclude_prefixes=exclude_prefixes
        )
    )
    metrics.register_prometheus_typed_callback(
        lambda: get_prometheus_typed(
            registry,
            metric_prefix_filters=prefix_filters,
            exclude_prefixes=exclude_prefixes,
            inject_custom_labels=labels or None,
        )
    )


def get_prometheus_typed(
    registry: Collector,
    metric_prefix_filters: Sequence[str] | None = None,
    exclude_prefixes: Sequence[str] | None = None,
    inject_custom_labels: Mapping[str, str] | None = None,
) -> list[Any]:
    """The registry's families as stock's typed structure:
    ``[(name, help, type, unit, [(sample, [(label, value)], value, timestamp)])]``."""
    source: Collector = registry
    if inject_custom_labels:
        source = LabelInjectingCollector(registry, inject_custom_labels)
    out: list[Any] = []
    for metric in _Filtered(source, metric_prefix_filters, exclude_prefixes).collect():
        samples = [
            (s.name, list(s.labels.items()), float(s.value), s.timestamp) for s in metric.samples
        ]
        out.append((metric.name, metric.documentation, metric.type, metric.unit, samples))
    return out


def register_global_registry(
    metrics: EngineMetrics,
    *,
    engine_prefix: str,
    multiproc_only_prefixes: Sequence[str] | None = None,
    exclude_prefixes: Sequence[str] | None = None,
) -> None:
    """Bridge the global ``prometheus_client.REGISTRY``, keeping ``engine_prefix`` families.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, the engine's multi-process metrics
    are collected too (see :mod:`dynamo_lite.multiproc`); the families of
    ``multiproc_only_prefixes`` exist only there.
    """
    bridge_global_registry(
        metrics,
        register_engine_registry,
        engine_prefix=engine_prefix,
        multiproc_only_prefixes=multiproc_only_prefixes,
        exclude_prefixes=exclude_prefixes,
    )
