"""Optional OpenTelemetry tracing: one ``engine.generate`` span per request, as stock records it.

Theory of operation
-------------------
Tracing costs nothing unless it is wanted: without ``opentelemetry-api``
(``pip install 'dynamo-lite[otel]'``) :func:`active` is a constant False,
and with the API but no SDK tracer provider installed (the API's default
proxy) it is one ``isinstance`` check per request. Only when a real
provider is configured (for example by ``opentelemetry-instrument`` or the
engine's own setup) does the endpoint wrap the engine's generator in
:func:`traced`, which

* opens a ``SERVER`` span named ``engine.generate`` whose parent is the
  W3C ``traceparent``/``tracestate`` the frontend put in the request-plane
  headers (what ``Context.trace_headers()`` returns);
* sets the stock attributes: ``model``, ``input_tokens``, ``disagg_role`` on
  entry; ``ttft_ms`` at the first chunk with tokens; ``output_tokens``,
  ``finish_reason`` (stock's spelling: ``Length``, ``Stop``, ``Cancelled``…),
  ``cancelled`` and ``avg_itl_ms`` / ``itl_p50_ms`` / ``itl_p99_ms`` /
  ``itl_max_ms`` at the terminal chunk; ``error_kind`` (``Backend(<kind>)``)
  and an error status when the engine raises; ``finish_reason="Dropped"``
  and an error status when the stream is closed before its terminal chunk
  (a cancellation, a contract violation, a shutdown). dynamo_lite adds
  ``request_id``, which stock carries on its enclosing ``handle_payload``
  span. Raw engines get only ``request_id`` and ``error_kind``, as in stock;
* closes the engine's generator and ends the span whatever happens.

Engines use the stock facade: :func:`current_span` / :func:`start_span` return
a :class:`SpanProxy` (silent no-op without tracing), :func:`trace_headers`
and :func:`engine_trace_kwargs` give the headers to forward to an inference
engine, pointing at the ``engine.generate`` span when there is one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .context import Context
from .envparse import parse_bool, parse_float, parse_str
from .errors import classify

# opentelemetry is imported only once someone uses it: configuring a tracer
# provider means importing ``opentelemetry.trace``, so a process that never did
# cannot have one, and pays neither the import time nor the memory.
_trace: Any = None
_PROPAGATOR: Any = None
_NOOP_PROVIDERS: tuple[type, ...] = ()
_loaded: bool | None = None

#: JSONL span-event records on (``DYN_LOGGING_SPAN_EVENTS`` with JSONL logging),
#: set by :func:`dynamo_lite.logsetup.configure_logging`. The records are
#: written by :mod:`dynamo_lite.spanlog`, which is imported only when this is on.
span_events = False


def _load() -> bool:
    global _trace, _PROPAGATOR, _NOOP_PROVIDERS, _loaded
    if _loaded is None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:  # the optional dependency is absent: tracing is off
            _loaded = False
        else:
            _trace = trace
            _PROPAGATOR = TraceContextTextMapPropagator()
            _NOOP_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
            _loaded = True
    return _loaded


__all__ = [
    "SPAN_NAME",
    "OtelSettings",
    "SpanProxy",
    "active",
    "current_span",
    "engine_trace_kwargs",
    "generate_failed",
    "start_span",
    "trace_headers",
    "traced",
    "use_tracer_provider",
]


@dataclass(frozen=True)
class OtelSettings:
    """What dynamo_lite itself reads of the ``OTEL_*`` variables (the exporter
    reads its endpoint, headers, resource … itself). The exporters in
    :mod:`dynamo_lite.otel_export` are imported only when ``enabled``."""

    enabled: bool = False
    traces_protocol: str = "grpc"
    metrics_protocol: str = "grpc"
    #: ``OTEL_METRIC_EXPORT_INTERVAL``, in seconds (the variable is in ms).
    metric_interval: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OtelSettings:
        common = parse_str(env, "OTEL_EXPORTER_OTLP_PROTOCOL")
        traces = parse_str(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or common
        metrics = parse_str(env, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or common
        return cls(
            enabled=parse_bool(env, "OTEL_EXPORT_ENABLED", False),
            traces_protocol=(traces or "grpc").strip().lower(),
            metrics_protocol=(metrics or "grpc").strip().lower(),
            metric_interval=parse_float(env, "OTEL_METRIC_EXPORT_INTERVAL", 60000.0) / 1000,
        )


SPAN_NAME = "engine.generate"
TRACER_NAME = "dynamo_lite"

#: Stock renders finish reasons with Rust's Debug formatting of its enum.
_FINISH_REASON = {
    "stop": "Stop",
    "eos": "EoS",
    "length": "Length",
    "cancelled": "Cancelled",
    "abort": "Cancelled",
    "content_filter": "ContentFilter",
}

#: Live ``engine.generate`` spans by request id, for the engine-facing facade.
_live: dict[str, Any] = {}
#: A provider set with :func:`use_tracer_provider`; None means the global one.
_provider: Any = None


def use_tracer_provider(provider: Any) -> None:
    """Trace with ``provider`` instead of the global provider (None: back to the global)."""
    global _provider
    _provider = provider


def _tracer() -> Any:
    assert _load()
    if _provider is not None:
        return _provider.get_tracer(TRACER_NAME)
    return _trace.get_tracer(TRACER_NAME)


def available() -> bool:
    """True when ``opentelemetry-api`` is importable."""
    return importlib.util.find_spec("opentelemetry.trace") is not None


def active() -> bool:
    """True when spans would go somewhere: the API is installed and a real provider set."""
    if _provider is None and "opentelemetry.trace" not in sys.modules:
        return False
    if not _load():
        return False
    return _provider is not None or not isinstance(_trace.get_tracer_provider(), _NOOP_PROVIDERS)


def _finish_reason(reason: Any) -> str:
    if isinstance(reason, str):
        if reason in _FINISH_REASON:
            return _FINISH_REASON[reason]
        if reason == "error" or reason.startswith("error"):
            detail = reason[len("error: ") :] if reason.startswith("error: ") else ""
            return f"Error({detail!r})" if detail else "Error"
        return reason
    return str(reason)


def _itl(span: Any, samples: list[float]) -> None:
    """Inter-token latency attributes, nearest-rank percentiles like stock."""
    if not samples:
        return
    samples.sort()
    n = len(samples)
    span.set_attribute("avg_itl_ms", f"{sum(samples) / n:.2f}")
    # Rust rounds halves away from zero; Python's round() would round them to even.
    span.set_attribute("itl_p50_ms", f"{samples[int((n - 1) * 0.50 + 0.5)]:.2f}")
    span.set_attribute("itl_p99_ms", f"{samples[int((n - 1) * 0.99 + 0.5)]:.2f}")
    span.set_attribute("itl_max_ms", f"{samples[-1]:.2f}")


def _error(span: Any, description: str) -> None:
    assert _trace is not None
    span.set_status(_trace.Status(_trace.StatusCode.ERROR, description))


def entry_attributes(
    request: Mapping[str, Any], ctx: Context, raw: bool, role: str
) -> dict[str, Any]:
    """What stock records on ``engine.generate`` when it opens: the request id
    and, for token requests, the model, the prompt length and the disagg role
    (the OTel span here, the span-event records in :mod:`dynamo_lite.spanlog`)."""
    attributes: dict[str, Any] = {"request_id": ctx.id()}
    if not raw:
        token_ids = request.get("token_ids")
        attributes["model"] = str(request.get("model") or "")
        attributes["input_tokens"] = len(token_ids) if isinstance(token_ids, list) else 0
        attributes["disagg_role"] = role
    return attributes


def _start_span(request: Mapping[str, Any], ctx: Context, raw: bool, role: str) -> Any:
    """An ``engine.generate`` span under the caller's trace, with the entry attributes."""
    assert _trace is not None
    parent = _PROPAGATOR.extract(carrier=ctx.trace_headers() or {})
    attributes = entry_attributes(request, ctx, raw, role)
    return _tracer().start_span(
        SPAN_NAME, context=parent, kind=_trace.SpanKind.SERVER, attributes=attributes
    )


def generate_failed(
    request: Mapping[str, Any],
    ctx: Context,
    exc: BaseException,
    *,
    raw: bool = False,
    role: str = "agg",
) -> None:
    """``generate()`` raised before returning its stream: an ``engine.generate``
    span all the same, ended at once with the error (as stock records it)."""
    span = _start_span(request, ctx, raw, role)
    kind = f"Backend({classify(exc).kind})"
    span.set_attribute("error_kind", kind)
    if not raw:
        span.set_attribute("output_tokens", 0)
        span.set_attribute("cancelled", ctx.is_stopped())
    _error(span, kind)
    span.end()


async def traced(
    agen: AsyncGenerator[Any, None],
    request: Mapping[str, Any],
    ctx: Context,
    *,
    raw: bool = False,
    role: str = "agg",
) -> AsyncGenerator[Any, None]:
    """``agen``'s chunks, unchanged, inside an ``engine.generate`` span."""
    span = _start_span(request, ctx, raw, role)
    _live[ctx.id()] = span
    started = time.perf_counter()
    last: float | None = None
    itl: list[float] = []
    output_tokens = 0
    completed = False
    try:
        async for chunk in agen:
            if not raw and not completed and isinstance(chunk, dict):
                ids = chunk.get("token_ids")
                if ids:
                    now = time.perf_counter()
                    if last is None:
                        span.set_attribute("ttft_ms", f"{(now - started) * 1000:.2f}")
                    else:
                        itl.append((now - last) * 1000)
                    last = now
                    output_tokens += len(ids)
                reason = chunk.get("finish_reason")
                # A terminal chunk after a cancellation is not delivered (the endpoint
                # has ended the stream): the stream still counts as dropped, as on stock.
                if reason is not None and not ctx.is_stopped():
                    completed = True
                    span.set_attribute("output_tokens", output_tokens)
                    span.set_attribute("finish_reason", _finish_reason(reason))
                    span.set_attribute("cancelled", ctx.is_stopped())
                    _itl(span, itl)
                    if isinstance(reason, str) and reason.startswith("error"):
                        _error(span, "finish_reason error")
            yield chunk
        if raw:
            completed = True
    except (GeneratorExit, asyncio.CancelledError):
        raise
    except Exception as exc:
        completed = True
        kind = f"Backend({classify(exc).kind})"
        span.set_attribute("error_kind", kind)
        if not raw:
            span.set_attribute("output_tokens", output_tokens)
            span.set_attribute("cancelled", ctx.is_stopped())
            _itl(span, itl)
        _error(span, kind)
        raise
    finally:
        if not completed:
            span.set_attribute("cancelled", True)
            span.set_attribute("finish_reason", "Dropped")
            _error(span, "stream dropped before terminal")
        _live.pop(ctx.id(), None)
        try:
            await agen.aclose()
        finally:
            span.end()


# --- engine-facing facade (``dynamo.common.backend.telemetry``) ---------------------------


class SpanProxy:
    """An OTel-shaped span handle; every method is a no-op when there is no span."""

    __slots__ = ("_owned", "_span")

    def __init__(self, span: Any = None, *, owned: bool = False) -> None:
        self._span = span
        self._owned = owned

    def set_attribute(self, key: str, value: Any) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def add_event(self, name: str, attrs: Mapping[str, Any] | None = None) -> None:
        if self._span is not None:
            self._span.add_event(name, dict(attrs or {}))

    def set_status(self, status: str, description: str | None = None) -> None:
        if self._span is None or _trace is None:
            return
        code = _trace.StatusCode.ERROR if status == "error" else _trace.StatusCode.OK
        self._span.set_status(
            _trace.Status(code, description if code is _trace.StatusCode.ERROR else None)
        )

    def close(self) -> None:
        """Ends a child span (the ``engine.generate`` span is ended by the worker)."""
        if self._owned and self._span is not None:
            self._span.end()
            self._span = None

    def __enter__(self) -> SpanProxy:
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> Literal[False]:
        if exc_value is not None:
            self.set_status("error", type(exc_value).__name__)
        self.close()
        return False


# A context that is not dynamo_lite's (an engine's own test double, say) is
# asked directly, through the methods stock's Context has.


def current_span(context: Context) -> SpanProxy:
    """The request's ``engine.generate`` span."""
    if not isinstance(context, Context):
        proxy: SpanProxy = context.current_span()
        return proxy
    return SpanProxy(_live.get(context.id()))


def start_span(context: Context, name: str, **attrs: Any) -> SpanProxy:
    """A child span under ``engine.generate``; use it as a context manager."""
    if not isinstance(context, Context):
        child: SpanProxy = context.start_span(name, dict(attrs) if attrs else None)
        return child
    parent = _live.get(context.id())
    if parent is None or _trace is None:
        return SpanProxy()
    span = _tracer().start_span(name, context=_trace.set_span_in_context(parent), attributes=attrs)
    return SpanProxy(span, owned=True)


def trace_headers(context: Context) -> dict[str, str] | None:
    """W3C headers for an inference engine: the ``engine.generate`` span when
    there is one, else what the frontend sent (``Context.trace_headers()``)."""
    if not isinstance(context, Context):
        return context.trace_headers()
    span = _live.get(context.id())
    if span is not None and _trace is not None and span.get_span_context().is_valid:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=_trace.set_span_in_context(span))
        inbound = context.trace_headers() or {}
        for key in ("x-request-id", "request-id"):
            if key in inbound:
                carrier[key] = inbound[key]
        return carrier
    return context.trace_headers()


def engine_trace_kwargs(
    context: Context, *, kwarg_name: str = "trace_headers", enabled: bool = True
) -> dict[str, dict[str, str]]:
    """``{kwarg_name: headers}`` to splat into an engine call; empty when there are none."""
    if not enabled:
        return {}
    headers = trace_headers(context)
    return {kwarg_name: headers} if headers else {}
