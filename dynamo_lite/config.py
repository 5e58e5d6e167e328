"""Worker configuration: the engine author's :class:`WorkerConfig` and the
operator's environment (:class:`RuntimeSettings`).

``WorkerConfig`` mirrors ``dynamo.common.backend.WorkerConfig`` 1.6.1 field
for field, so ``from_args`` implementations port unchanged. Everything an
operator tunes without touching engine code (addresses, timeouts, discovery
endpoints) is read from the same environment variables the stock runtime
reads, with the stock parsing rules, in :meth:`RuntimeSettings.from_env`.
"""

from __future__ import annotations

import enum
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .health_check import HEALTH_CHECK_KEY, parse_health_check_payload_cli

logger = logging.getLogger(__name__)

__all__ = [
    "HEALTH_CHECK_KEY",
    "DisaggregationMode",
    "ModelInput",
    "RuntimeSettings",
    "WorkerConfig",
    "parse_grace_period",
    "parse_health_check_payload_cli",
    "parse_shutdown_timeout",
]


class DisaggregationMode(enum.Enum):
    AGGREGATED = "agg"
    PREFILL = "prefill"
    DECODE = "decode"
    ENCODE = "encode"


class ModelInput(enum.Enum):
    Tokens = "Tokens"
    Text = "Text"
    Tensor = "Tensor"


def _coerce_disagg_mode(value: Any) -> DisaggregationMode:
    """None → AGGREGATED; an enum with a matching member name coerces; strings do not.

    Same rule as stock: a typo string must not silently become aggregated.
    """
    if value is None:
        return DisaggregationMode.AGGREGATED
    if isinstance(value, DisaggregationMode):
        return value
    if isinstance(value, enum.Enum) and value.name in DisaggregationMode.__members__:
        return DisaggregationMode[value.name]
    raise TypeError(
        f"disaggregation_mode is {type(value).__name__}({value!r}); "
        "expected dynamo_lite.DisaggregationMode"
    )


@dataclass
class WorkerConfig:
    namespace: str
    component: str = "backend"
    endpoint: str = "generate"
    model_name: str = ""
    served_model_name: str | None = None
    model_input: ModelInput = ModelInput.Tokens
    endpoint_types: str = "chat,completions"
    discovery_backend: str = "etcd"
    request_plane: str = "tcp"
    event_plane: str | None = None
    use_kv_events: bool = False
    custom_jinja_template: str | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    exclude_tools_when_tool_choice_none: bool = True
    enable_local_indexer: bool = True
    enable_kv_routing: bool = True
    metrics_labels: list[tuple[str, str]] = field(default_factory=list)
    disaggregation_mode: DisaggregationMode = DisaggregationMode.AGGREGATED
    health_check_payload: dict[str, Any] | None = None
    structural_tag: dict[str, object] | None = None
    route_to_encoder: bool = False
    media_decoder: Any = None
    media_fetcher: Any = None
    kv_state_endpoint: str | None = None
    default_thinking_mode: str | None = None
    response_plane: str = "tcp"

    @classmethod
    def from_runtime_config(
        cls,
        runtime_cfg: Any,
        model_name: str,
        served_model_name: str | None = None,
        model_input: ModelInput | None = None,
        **overrides: Any,
    ) -> WorkerConfig:
        """Build from any object carrying ``DynamoRuntimeConfig`` fields."""
        g = getattr
        kwargs: dict[str, Any] = {
            "namespace": runtime_cfg.namespace,
            "component": g(runtime_cfg, "component", None) or "backend",
            "endpoint": g(runtime_cfg, "endpoint", None) or "generate",
            "kv_state_endpoint": g(runtime_cfg, "kv_state_endpoint", None),
            "model_name": model_name,
            "served_model_name": served_model_name,
            "endpoint_types": g(runtime_cfg, "endpoint_types", "chat,completions"),
            "discovery_backend": runtime_cfg.discovery_backend,
            "request_plane": runtime_cfg.request_plane,
            "response_plane": g(runtime_cfg, "response_plane", "tcp"),
            "event_plane": runtime_cfg.event_plane,
            "use_kv_events": g(runtime_cfg, "use_kv_events", False),
            "custom_jinja_template": g(runtime_cfg, "custom_jinja_template", None),
            "tool_call_parser": g(runtime_cfg, "dyn_tool_call_parser", None),
            "reasoning_parser": g(runtime_cfg, "dyn_reasoning_parser", None),
            "default_thinking_mode": g(runtime_cfg, "dyn_default_thinking_mode", None),
            "exclude_tools_when_tool_choice_none": g(
                runtime_cfg, "exclude_tools_when_tool_choice_none", True
            ),
            "enable_local_indexer": g(runtime_cfg, "enable_local_indexer", True),
            "enable_kv_routing": g(runtime_cfg, "enable_kv_routing", True),
            "structural_tag": g(runtime_cfg, "structural_tag", None),
            "route_to_encoder": g(runtime_cfg, "route_to_encoder", False),
        }
        if "disaggregation_mode" not in overrides:
            kwargs["disaggregation_mode"] = _coerce_disagg_mode(
                g(runtime_cfg, "disaggregation_mode", g(runtime_cfg, "serving_mode", None))
            )
        if model_input is not None:
            kwargs["model_input"] = model_input
        kwargs["health_check_payload"] = parse_health_check_payload_cli(
            g(runtime_cfg, "health_check_payload", None)
        )
        kwargs.update(overrides)
        return cls(**kwargs)


# --- environment -------------------------------------------------------------

DEFAULT_GRACE_PERIOD = 5.0
DEFAULT_SHUTDOWN_TIMEOUT = 30


def parse_grace_period(raw: str | None) -> float:
    """``DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS``: unset/empty → 5, negative → 0,
    unparsable or non-finite → 5 with a warning (stock rules)."""
    if raw is None or not raw.strip():
        return DEFAULT_GRACE_PERIOD
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        logger.warning("Invalid DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS=%r; using default 5", raw)
        return DEFAULT_GRACE_PERIOD
    return max(value, 0.0)


def parse_shutdown_timeout(raw: str | None) -> int:
    """``DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT``: integer seconds, else default 30."""
    if raw is None:
        return DEFAULT_SHUTDOWN_TIMEOUT
    try:
        value = int(raw.strip())
    except ValueError:
        return DEFAULT_SHUTDOWN_TIMEOUT
    return value if value >= 0 else DEFAULT_SHUTDOWN_TIMEOUT


def _float_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        logger.warning("Invalid %s=%r; using default %s", name, raw, default)
        return default
    return value if math.isfinite(value) and value >= 0 else default


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        logger.warning("Invalid %s=%r; using default %s", name, raw, default)
        return default


def _bool_env(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def detect_host() -> str:
    """The address peers should dial when no host is configured (stock rule,
    see :mod:`dynamo_lite.netaddr`)."""
    from .netaddr import detect

    return detect()


#: Every environment variable the worker runtime reads (stock names first).
ENV_VARS = frozenset(
    {
        "DYN_DISCOVERY_BACKEND",
        "ETCD_ENDPOINTS",
        "ETCD_LEASE_TTL",
        "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS",
        "ETCD_AUTH_USERNAME",
        "ETCD_AUTH_PASSWORD",
        "ETCD_AUTH_CA",
        "ETCD_AUTH_CLIENT_CERT",
        "ETCD_AUTH_CLIENT_KEY",
        "DYN_LITE_ETCD_CLIENT",
        "DYN_FILE_KV",
        "DYN_TCP_RPC_HOST",
        "DYN_TCP_RPC_PORT",
        "DYN_TCP_RESPONSE_STREAM_HOST",
        "DYN_TCP_MAX_MESSAGE_SIZE",
        "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS",
        "DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT",
        "DYN_PREFILL_DRAIN_TIMEOUT_S",
        "DYN_LITE_DRAIN_TIMEOUT_SECS",
        "DYN_SYSTEM_HEALTH_PATH",
        "DYN_SYSTEM_LIVE_PATH",
        "DYN_SYSTEM_STARTING_HEALTH_STATUS",
        "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS",
        "DYN_SYSTEM_HOST",
        "DYN_SYSTEM_PORT",
        "DYN_REQUEST_PLANE_CODEC",
        "DYN_RESPONSE_PLANE",
        "DYN_ENGINE_REQUEST_LIMIT",
        "DYN_DYNAMO_REQUEST_QUEUE_LIMIT",
        "DYN_HEALTH_CHECK_PAYLOAD",
        "DYN_HEALTH_CHECK_ENABLED",
        "DYN_CANARY_WAIT_TIME",
        "DYN_HEALTH_CHECK_REQUEST_TIMEOUT",
        "DYN_LITE_STALL_TIMEOUT_SECS",
        "DYN_LOG_USE_LOCAL_TZ",
        "DYN_LOG",
        "DYN_LOGGING_JSONL",
        "DYN_LOGGING_CONFIG_PATH",
        "OTEL_EXPORT_ENABLED",
        "DYN_LOGGING_CONSOLE_FORMAT",
        "NATS_SERVER",
        "NATS_AUTH_USERNAME",
        "NATS_AUTH_PASSWORD",
        "NATS_AUTH_TOKEN",
        "NATS_AUTH_NKEY",
        "NATS_AUTH_CREDENTIALS_FILE",
        "NATS_TLS_CA_CERT_PATH",
        "NATS_TLS_INSECURE",
        "NATS_TLS_CLIENT_CERT_PATH",
        "NATS_TLS_CLIENT_KEY_PATH",
        "NATS_STARTUP_CONNECT_TIMEOUT_SECONDS",
        "DYN_SELF_HOST_METADATA",
        "DYN_TCP_TLS_CERT_PATH",
        "DYN_TCP_TLS_KEY_PATH",
        "DYN_TCP_TLS_CA_CERT_PATH",
        "DYN_TCP_TLS_CLIENT_CERT_PATH",
        "DYN_TCP_TLS_CLIENT_KEY_PATH",
        "DYN_TCP_TLS_CLIENT_CA_CERT_PATH",
        "DYN_TCP_TLS_INSECURE",
        "DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS",
        "DYN_LITE_EXIT_ON_LEASE_LOSS",
        "DYN_LITE_TCP_FRAME_TIMEOUT_SECS",
        "DYN_LITE_TCP_IDLE_TIMEOUT_SECS",
        "DYN_LITE_TCP_MAX_CONNECTIONS",
        "DYN_LITE_MAX_INFLIGHT",
        "DYN_LITE_WRITE_STALL_SECS",
        "DYN_LITE_STREAM_DEBUG",
        "DYN_LITE_UVLOOP",
        "DYN_LITE_PURE_BLAKE3",
        "DYN_LITE_CHECKSUM_CACHE",
        "MSGPACK_PUREPYTHON",
    }
)


def _default_file_kv() -> Path:
    # tempfile only here: at import it would load shutil, random, bz2 and lzma.
    import tempfile

    return Path(tempfile.gettempdir()) / "dynamo_store_kv"


@dataclass(frozen=True)
class RuntimeSettings:
    """Operator settings read from the environment (stock variable names)."""

    discovery_backend: str | None = None
    etcd_endpoints: tuple[str, ...] = ("http://localhost:2379",)
    etcd_lease_ttl: int = 30
    etcd_startup_timeout: float = 120.0
    file_kv: Path = field(default_factory=_default_file_kv)
    tcp_host: str | None = None
    tcp_port: int = 0
    max_message_size: int = 33_554_432
    grace_period: float = DEFAULT_GRACE_PERIOD
    shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT
    drain_timeout: float | None = None
    prefill_drain_timeout: float = 30.0
    system_host: str = "0.0.0.0"
    system_port: int | None = None
    request_codec: str = "msgpack"
    exit_on_lease_loss: bool = False
    frame_timeout: float = 30.0
    idle_timeout: float = 900.0
    max_connections: int = 4096
    max_inflight: int = 10_000
    write_stall_timeout: float = 60.0

    def drain_budget(self) -> float:
        """How long in-flight requests may run on after the grace period.

        ``DYN_LITE_DRAIN_TIMEOUT_SECS`` when set, else the watchdog timeout
        less 5 s kept for ``cleanup()`` (25 s by default); never more than the
        watchdog timeout itself.
        """
        budget = self.shutdown_timeout - 5 if self.drain_timeout is None else self.drain_timeout
        return max(0.0, min(float(budget), float(self.shutdown_timeout)))

    def prefill_drain_budget(self) -> float:
        """Stock rule: ``min(DYN_PREFILL_DRAIN_TIMEOUT_S, T - 5)``."""
        return max(0.0, min(self.prefill_drain_timeout, self.shutdown_timeout - 5))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RuntimeSettings:
        env = os.environ if env is None else env
        endpoints = tuple(
            e.strip() for e in env.get("ETCD_ENDPOINTS", "").split(",") if e.strip()
        ) or ("http://localhost:2379",)
        system_port_raw = env.get("DYN_SYSTEM_PORT", "").strip()
        system_port: int | None = None
        if system_port_raw:
            try:
                system_port = int(system_port_raw)
            except ValueError:
                logger.warning(
                    "Invalid DYN_SYSTEM_PORT=%r; system server disabled", system_port_raw
                )
            if system_port is not None and system_port < 0:
                system_port = None  # stock's -1: off
            elif system_port is not None and system_port > 65535:
                # Stock reads an i16 and refuses anything above 32767; every real port works here.
                logger.warning(
                    "Invalid DYN_SYSTEM_PORT=%r; system server disabled", system_port_raw
                )
                system_port = None
        codec = env.get("DYN_REQUEST_PLANE_CODEC", "msgpack").strip().lower() or "msgpack"
        if codec not in ("msgpack", "json"):
            logger.warning("Invalid DYN_REQUEST_PLANE_CODEC=%r; using msgpack", codec)
            codec = "msgpack"
        return cls(
            discovery_backend=env.get("DYN_DISCOVERY_BACKEND") or None,
            etcd_endpoints=endpoints,
            etcd_lease_ttl=max(_int_env(env, "ETCD_LEASE_TTL", 30), 2),
            etcd_startup_timeout=_float_env(env, "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS", 120.0),
            file_kv=Path(env.get("DYN_FILE_KV") or _default_file_kv()),
            tcp_host=env.get("DYN_TCP_RPC_HOST") or None,
            tcp_port=_int_env(env, "DYN_TCP_RPC_PORT", 0),
            max_message_size=_int_env(env, "DYN_TCP_MAX_MESSAGE_SIZE", 33_554_432),
            grace_period=parse_grace_period(env.get("DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS")),
            shutdown_timeout=parse_shutdown_timeout(
                env.get("DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT")
            ),
            drain_timeout=(
                _float_env(env, "DYN_LITE_DRAIN_TIMEOUT_SECS", 0.0)
                if (env.get("DYN_LITE_DRAIN_TIMEOUT_SECS") or "").strip()
                else None
            ),
            prefill_drain_timeout=_float_env(env, "DYN_PREFILL_DRAIN_TIMEOUT_S", 30.0),
            system_host=env.get("DYN_SYSTEM_HOST") or "0.0.0.0",
            system_port=system_port,
            request_codec=codec,
            exit_on_lease_loss=_bool_env(env, "DYN_LITE_EXIT_ON_LEASE_LOSS", False),
            frame_timeout=_float_env(env, "DYN_LITE_TCP_FRAME_TIMEOUT_SECS", 30.0) or 30.0,
            idle_timeout=_float_env(env, "DYN_LITE_TCP_IDLE_TIMEOUT_SECS", 900.0) or 900.0,
            max_connections=max(1, _int_env(env, "DYN_LITE_TCP_MAX_CONNECTIONS", 4096)),
            max_inflight=max(1, _int_env(env, "DYN_LITE_MAX_INFLIGHT", 10_000)),
            write_stall_timeout=_float_env(env, "DYN_LITE_WRITE_STALL_SECS", 60.0) or 60.0,
        )
