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
import os
from collections.abc import Mapping
from typing import Any

from . import telemetry

__all__ = ["configure_from_env", "enabled"]

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


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return (env.get("OTEL_EXPORT_ENABLED") or "").strip().lower() in ("1", "true", "yes", "on")


def protocol(env: Mapping[str, str]) -> str:
    raw = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    return (raw or "grpc").strip().lower()


def configure_from_env(env: Mapping[str, str] | None = None) -> Any:
    """Install an exporting tracer provider when asked to; returns it (or None).

    The caller shuts it down at exit, which flushes the spans still batched.
    """
    env = os.environ if env is None else env
    if not enabled(env):
        return None
    proto = protocol(env)
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
