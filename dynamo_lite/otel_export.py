"""OTLP trace export configured from the environment, as stock's ``OTEL_EXPORT_ENABLED``.

With ``OTEL_EXPORT_ENABLED`` true, :func:`configure_from_env` (called by
:func:`dynamo_lite.run`) installs an OpenTelemetry SDK tracer provider whose
spans (``engine.generate`` and the engine's children) go to an OTLP exporter:

* protocol: ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else
  ``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``grpc`` (stock's default);
  ``http/protobuf`` uses ``opentelemetry-exporter-otlp-proto-http``, ``grpc``
  ``opentelemetry-exporter-otlp-proto-grpc``;
* endpoint, headers, timeout, compression: the exporter reads
  ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` / ``_HEADERS`` / … itself (defaults
  ``http://localhost:4318/v1/traces`` and ``http://localhost:4317``, as stock);
* resource: ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``.

Nothing is imported unless export is enabled; when the SDK or the exporter for
the chosen protocol is missing, a warning says which package to install and
traces stay local (stock logs "traces local only" in the same case). Stock
also exports its log records over OTLP; dynamo_lite exports traces only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from . import telemetry
from .telemetry import OtelSettings

__all__ = ["configure_from_env", "enabled", "shutdown", "start_metric_export"]

logger = logging.getLogger("dynamo_lite.telemetry")

_EXPORTERS = {
    "http/protobuf": (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry-exporter-otlp-proto-http",
    ),
    "grpc": (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry-exporter-otlp-proto-grpc",
    ),
}


def _settings(env: OtelSettings | Mapping[str, str]) -> OtelSettings:
    return env if isinstance(env, OtelSettings) else OtelSettings.from_env(env)


def enabled(env: OtelSettings | Mapping[str, str]) -> bool:
    return _settings(env).enabled


def protocol(env: OtelSettings | Mapping[str, str]) -> str:
    return _settings(env).traces_protocol


def configure_from_env(env: OtelSettings | Mapping[str, str]) -> Any:
    """Install an exporting tracer provider when asked to; returns it (or None).

    The caller shuts it down at exit, which flushes the spans still batched.
    """
    settings = _settings(env)
    if not settings.enabled:
        return None
    proto = settings.traces_protocol
    if proto not in _EXPORTERS:
        logger.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%r is not supported (grpc or http/protobuf); "
            "traces stay local",
            proto,
        )
        return None
    module, package = _EXPORTERS[proto]
    try:
        import importlib

        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter_cls = importlib.import_module(module).OTLPSpanExporter
    except ImportError as exc:
        logger.warning(
            "OTEL_EXPORT_ENABLED is set but %s is missing (pip install opentelemetry-sdk %s); "
            "traces stay local",
            exc.name,
            package,
        )
        return None
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(exporter_cls()))
    telemetry.use_tracer_provider(provider)
    logger.info("OpenTelemetry OTLP export enabled (traces) protocol=%s", proto)
    return provider


def shutdown(provider: Any) -> None:
    """Flush and stop an exporting provider (bounded by the exporter's own timeout)."""
    if provider is None:
        return
    telemetry.use_tracer_provider(None)
    try:
        provider.shutdown()
    except Exception as exc:  # export trouble at exit must not change the exit status
        logger.warning("OTLP exporter shutdown failed: %r", exc)


# --- metrics: the engines' typed callbacks -------------------------------------------------


def typed_to_otlp(families: list[Any], now_ns: int) -> list[Any]:
    """Stock's typed families → OTLP SDK metrics: gauges, cumulative sums, histograms.

    Counter samples are the ``_total`` ones (``_created`` is dropped);
    histogram buckets are rebuilt from the cumulative ``le`` samples; summaries
    and info/state-set families are not exported.
    """
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        HistogramDataPoint,
        Metric,
        NumberDataPoint,
        Sum,
    )

    out: list[Any] = []
    for name, help_, kind, unit, samples in families:
        data: Any
        if kind in ("gauge", "unknown", "untyped"):
            points = [NumberDataPoint(dict(labels), 0, now_ns, value)
                      for sample, labels, value, _ts in samples if sample == name]  # fmt: skip
            data = Gauge(points)
        elif kind == "counter":
            points = [NumberDataPoint(dict(labels), 0, now_ns, value)
                      for sample, labels, value, _ts in samples
                      if sample in (name, name + "_total")]  # fmt: skip
            data = Sum(points, AggregationTemporality.CUMULATIVE, True)
        elif kind == "histogram":
            series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
            for sample, labels, value, _ts in samples:
                le = dict(labels).get("le")
                key = tuple(sorted((k, v) for k, v in labels if k != "le"))
                entry = series.setdefault(key, {"buckets": [], "sum": 0.0, "count": 0})
                if sample == name + "_bucket" and le is not None:
                    entry["buckets"].append((float(le), value))
                elif sample == name + "_sum":
                    entry["sum"] = value
                elif sample == name + "_count":
                    entry["count"] = int(value)
            hist_points = []
            for key, entry in series.items():
                bounds = sorted(entry["buckets"])
                counts, previous = [], 0.0
                for _le, cumulative in bounds:
                    counts.append(int(cumulative - previous))
                    previous = cumulative
                finite = [le for le, _ in bounds if le != float("inf")]
                if len(counts) == len(finite):  # no +Inf bucket: the rest goes there
                    counts.append(max(0, entry["count"] - int(previous)))
                unknown: Any = None  # min/max were not kept by the source: left unset
                point = HistogramDataPoint(
                    dict(key), 0, now_ns, entry["count"], entry["sum"], counts, finite,
                    unknown, unknown,
                )  # fmt: skip
                hist_points.append(point)
            data = Histogram(hist_points, AggregationTemporality.CUMULATIVE)
        else:
            continue
        out.append(Metric(name, help_, unit or "", data))
    return out


class MetricExport:
    """Calls every engine's typed callbacks each ``OTEL_METRIC_EXPORT_INTERVAL``
    ms (default 60000, as the OTel SDK) and exports the result over OTLP."""

    def __init__(self, exporter: Any, interval: float) -> None:
        import threading

        self.exporter = exporter
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dynamo-otel-export", daemon=True)
        self._thread.start()

    def collect(self) -> list[Any]:
        from .metrics import EngineMetrics

        families: list[Any] = []
        for handle in list(EngineMetrics.live):
            for callback in list(handle.typed_callbacks):
                try:
                    families.extend(callback())
                except Exception as exc:  # one engine's broken callback must not stop the rest
                    logger.debug("typed metrics callback raised: %r", exc)
        return families

    def export_once(self) -> None:
        import time

        from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        metrics = typed_to_otlp(self.collect(), time.time_ns())
        if not metrics:
            return
        scope = ScopeMetrics(InstrumentationScope("dynamo_lite"), metrics, "")
        data = MetricsData([ResourceMetrics(Resource.create(), [scope], "")])
        self.exporter.export(data)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.export_once()
            except Exception as exc:
                logger.warning("OTLP metric export failed: %r", exc)

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.export_once()  # what changed since the last tick
        except Exception as exc:
            logger.warning("OTLP metric export failed: %r", exc)
        self.exporter.shutdown()


_METRIC_EXPORTERS = {
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "grpc": "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
}


def start_metric_export(env: OtelSettings | Mapping[str, str]) -> MetricExport | None:
    """With ``OTEL_EXPORT_ENABLED``, export the engines' typed metrics over OTLP."""
    settings = _settings(env)
    if not settings.enabled:
        return None
    module = _METRIC_EXPORTERS.get(settings.metrics_protocol)
    if module is None:
        return None
    try:
        import importlib

        exporter = importlib.import_module(module).OTLPMetricExporter()
    except ImportError:
        return None  # configure_from_env already said what to install
    return MetricExport(exporter, max(settings.metric_interval, 0.05))
