"""Worker configuration: the engine author's :class:`WorkerConfig` and the
operator's environment (:class:`Settings`).

``WorkerConfig`` mirrors ``dynamo.common.backend.WorkerConfig`` 1.6.1 field
for field, so ``from_args`` implementations port unchanged. Everything an
operator tunes without touching engine code (addresses, timeouts, discovery
endpoints, TLS, logging …) is read from the same environment variables the
stock runtime reads, with the stock parsing rules.

Theory of operation. This module is the configuration layer: the only place
below the CLI that reads ``os.environ``. :meth:`Settings.from_env` reads
every variable in :data:`ENV_VARS` once, through the parsers in
:mod:`dynamo_lite.envparse`, into frozen settings objects; the worker (and
:func:`dynamo_lite.run`) hands each part to the component it configures.
Each part's ``from_env(env)`` lives beside the code that uses it and needs
the mapping given; only this module defaults it to the process environment.
Process-wide switches used outside any worker (the pure hash
implementations, the checksum cache, the stream validator's debug mode) are
read through :func:`process_switches` when used.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .envparse import (
    parse_bool,
    parse_choice,
    parse_float,
    parse_int,
    parse_list,
    parse_port,
    parse_str,
)
from .health_check import HEALTH_CHECK_KEY, parse_health_check_payload_cli

if TYPE_CHECKING:
    from .admission import GateLimits
    from .canary import HealthSettings
    from .logsetup import LoggingSettings
    from .system_server import SystemSettings
    from .telemetry import OtelSettings
    from .transport.nats_plane import NatsSettings
    from .transport.tls import TcpTls

logger = logging.getLogger(__name__)

__all__ = [
    "ENV_VARS",
    "HEALTH_CHECK_KEY",
    "DisaggregationMode",
    "DiscoverySettings",
    "ModelInput",
    "ProcessSwitches",
    "RuntimeSettings",
    "Settings",
    "WorkerConfig",
    "as_settings",
    "parse_grace_period",
    "parse_health_check_payload_cli",
    "parse_shutdown_timeout",
    "pin_process_switches",
    "process_environ",
    "process_switches",
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
    """What the engine author configures (stock's ``WorkerConfig``, field for field)."""

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
    name = "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS"
    env = {} if raw is None else {name: raw}
    return parse_float(env, name, DEFAULT_GRACE_PERIOD, clamp_negative=True)


def parse_shutdown_timeout(raw: str | None) -> int:
    """``DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT``: whole seconds >= 0, else default 30."""
    name = "DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT"
    env = {} if raw is None else {name: raw}
    return parse_int(env, name, DEFAULT_SHUTDOWN_TIMEOUT, minimum=0)


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
        "DYN_LOGGING_SPAN_EVENTS",
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
        "DYN_LITE_PURE_XXH3",
        "DYN_LITE_CHECKSUM_CACHE",
        "XDG_CACHE_HOME",
        "DYN_EVENT_PLANE",
        "DYN_EVENT_PLANE_HOST",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_METRIC_EXPORT_INTERVAL",
        # Stock behaviour: set for the engine when unset (dynamo_lite.multiproc).
        "PROMETHEUS_MULTIPROC_DIR",
        # Read by msgpack itself at import (its pure-Python fallback).
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
    def from_env(cls, env: Mapping[str, str]) -> RuntimeSettings:
        return cls(
            discovery_backend=parse_str(env, "DYN_DISCOVERY_BACKEND"),
            etcd_endpoints=parse_list(env, "ETCD_ENDPOINTS", ("http://localhost:2379",)),
            etcd_lease_ttl=max(parse_int(env, "ETCD_LEASE_TTL", 30), 2),
            etcd_startup_timeout=parse_float(env, "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS", 120.0),
            file_kv=Path(parse_str(env, "DYN_FILE_KV") or _default_file_kv()),
            tcp_host=parse_str(env, "DYN_TCP_RPC_HOST"),
            tcp_port=parse_port(env, "DYN_TCP_RPC_PORT", 0),
            max_message_size=parse_int(env, "DYN_TCP_MAX_MESSAGE_SIZE", 33_554_432, minimum=1),
            grace_period=parse_grace_period(env.get("DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS")),
            shutdown_timeout=parse_shutdown_timeout(
                env.get("DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT")
            ),
            drain_timeout=parse_float(env, "DYN_LITE_DRAIN_TIMEOUT_SECS", None),
            prefill_drain_timeout=parse_float(env, "DYN_PREFILL_DRAIN_TIMEOUT_S", 30.0),
            system_host=parse_str(env, "DYN_SYSTEM_HOST") or "0.0.0.0",
            # Stock's -1 (any negative) is "off", as unset.
            system_port=parse_port(env, "DYN_SYSTEM_PORT", None),
            request_codec=parse_choice(
                env, "DYN_REQUEST_PLANE_CODEC", "msgpack", ("msgpack", "json")
            ),
            exit_on_lease_loss=parse_bool(env, "DYN_LITE_EXIT_ON_LEASE_LOSS", False),
            frame_timeout=parse_float(
                env, "DYN_LITE_TCP_FRAME_TIMEOUT_SECS", 30.0, allow_zero=False
            ),
            idle_timeout=parse_float(
                env, "DYN_LITE_TCP_IDLE_TIMEOUT_SECS", 900.0, allow_zero=False
            ),
            max_connections=max(1, parse_int(env, "DYN_LITE_TCP_MAX_CONNECTIONS", 4096)),
            max_inflight=max(1, parse_int(env, "DYN_LITE_MAX_INFLIGHT", 10_000)),
            write_stall_timeout=parse_float(
                env, "DYN_LITE_WRITE_STALL_SECS", 60.0, allow_zero=False
            ),
        )


# --- the configuration layer ------------------------------------------------------


def process_environ() -> Mapping[str, str]:
    """The process environment.

    The one door to ``os.environ`` below the CLI: :meth:`Settings.from_env`
    and the stock-facing helpers whose stock signatures read the environment
    themselves (``load_health_check_from_env``) come through here.
    """
    return os.environ


@dataclass(frozen=True)
class ProcessSwitches:
    """Process-wide switches that modules need outside any worker (hashing a
    model file, validating a stream in a test); read through
    :func:`process_switches` when they are used."""

    #: ``DYN_LITE_PURE_BLAKE3``: anything set but ``0`` forces the pure BLAKE3.
    pure_blake3: bool = False
    #: ``DYN_LITE_PURE_XXH3``: the same for the XXH3 block hash.
    pure_xxh3: bool = False
    #: ``DYN_LITE_CHECKSUM_CACHE`` (on) under ``XDG_CACHE_HOME`` (``~/.cache``); None: off.
    checksum_cache: Path | None = None
    #: ``DYN_LITE_STREAM_DEBUG``: validators raise instead of repairing.
    stream_debug: bool = False
    #: ``DYN_LITE_UVLOOP``: uvloop when installed (``0`` keeps asyncio's loop).
    uvloop: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProcessSwitches:
        cache: Path | None = None
        if parse_bool(env, "DYN_LITE_CHECKSUM_CACHE", True):
            base = parse_str(env, "XDG_CACHE_HOME") or os.path.join(
                os.path.expanduser("~"), ".cache"
            )
            cache = Path(base) / "dynamo_lite" / "checksums.json"
        # Historical spellings kept: the pure switches are on for anything but
        # "0"; the stream debug switch knows no "on"; uvloop no "off".
        return cls(
            pure_blake3=parse_bool(env, "DYN_LITE_PURE_BLAKE3", False, truthy=None, falsy=("0",)),
            pure_xxh3=parse_bool(env, "DYN_LITE_PURE_XXH3", False, truthy=None, falsy=("0",)),
            checksum_cache=cache,
            stream_debug=parse_bool(
                env, "DYN_LITE_STREAM_DEBUG", False, truthy=("1", "true", "yes")
            ),
            uvloop=parse_bool(env, "DYN_LITE_UVLOOP", True, falsy=("0", "false", "no")),
        )


_pinned_switches: ProcessSwitches | None = None


def pin_process_switches(switches: ProcessSwitches | None) -> None:
    """Make :func:`process_switches` answer ``switches`` from now on (None: read
    the environment again). :func:`dynamo_lite.run` pins the ones it read."""
    global _pinned_switches
    _pinned_switches = switches


def process_switches() -> ProcessSwitches:
    """The pinned switches, else the process's, read now (tests change the
    environment between calls)."""
    if _pinned_switches is not None:
        return _pinned_switches
    return ProcessSwitches.from_env(process_environ())


@dataclass(frozen=True)
class DiscoverySettings:
    """What etcd discovery needs besides :class:`RuntimeSettings`: the client
    (``DYN_LITE_ETCD_CLIENT``) and the ``ETCD_AUTH_*`` credentials, raw (the
    TLS material is loaded when an etcd store is built)."""

    etcd_client: str = "gateway"
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DiscoverySettings:
        def stripped(name: str) -> str | None:
            return (env.get(name) or "").strip() or None

        return cls(
            # Validated by open_store, which names the bad value.
            etcd_client=(env.get("DYN_LITE_ETCD_CLIENT") or "gateway").strip().lower(),
            username=parse_str(env, "ETCD_AUTH_USERNAME"),
            password=parse_str(env, "ETCD_AUTH_PASSWORD"),
            tls_ca=stripped("ETCD_AUTH_CA"),
            tls_cert=stripped("ETCD_AUTH_CLIENT_CERT"),
            tls_key=stripped("ETCD_AUTH_CLIENT_KEY"),
        )


@dataclass(frozen=True)
class Settings:
    """Everything the worker runtime reads from the environment, read once.

    Built by :meth:`from_env` (the only place that defaults to
    ``os.environ``) and passed down: the worker hands each part to the
    component it configures. The parts keep their own ``from_env(env)``
    next to the code that uses them; each needs the mapping given.
    """

    runtime: RuntimeSettings
    tcp_tls: TcpTls
    nats: NatsSettings
    system: SystemSettings
    health: HealthSettings
    engine_limits: GateLimits
    logging: LoggingSettings
    otel: OtelSettings
    discovery: DiscoverySettings
    switches: ProcessSwitches
    #: ``DYN_HEALTH_CHECK_PAYLOAD``: JSON object or ``@file`` (parsed when the canary starts).
    health_check_payload: str | None = None
    #: ``DYN_SELF_HOST_METADATA``: serve model files from the system port (``0``/``false``: off).
    self_host_metadata: bool = True
    #: ``DYN_EVENT_PLANE``: used when the engine passes no ``event_plane``.
    event_plane: str | None = None
    #: ``DYN_EVENT_PLANE_HOST``: the KV event publisher's bind/advertise address.
    event_plane_host: str | None = None
    #: ``DYN_TCP_RESPONSE_STREAM_HOST``: :class:`dynamo_lite.Client`'s call-home address.
    response_stream_host: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable in :data:`ENV_VARS` from ``env`` (default: the process's)."""
        env = process_environ() if env is None else env
        # Imported here: building settings must not pull in the modules'
        # heavier dependencies before they are needed.
        from .admission import GateLimits
        from .canary import HealthSettings
        from .logsetup import LoggingSettings
        from .system_server import SystemSettings
        from .telemetry import OtelSettings
        from .transport.nats_plane import NatsSettings
        from .transport.tls import TcpTls

        return cls(
            runtime=RuntimeSettings.from_env(env),
            tcp_tls=TcpTls.from_env(env),
            nats=NatsSettings.from_env(env),
            system=SystemSettings.from_env(env),
            health=HealthSettings.from_env(env),
            engine_limits=GateLimits.from_env(env),
            logging=LoggingSettings.from_env(env),
            otel=OtelSettings.from_env(env),
            discovery=DiscoverySettings.from_env(env),
            switches=ProcessSwitches.from_env(env),
            health_check_payload=parse_str(env, "DYN_HEALTH_CHECK_PAYLOAD"),
            self_host_metadata=parse_bool(
                env, "DYN_SELF_HOST_METADATA", True, falsy=("0", "false")
            ),
            event_plane=parse_str(env, "DYN_EVENT_PLANE"),
            event_plane_host=parse_str(env, "DYN_EVENT_PLANE_HOST"),
            response_stream_host=parse_str(env, "DYN_TCP_RESPONSE_STREAM_HOST"),
        )


def as_settings(given: Settings | RuntimeSettings | Mapping[str, str] | None) -> Settings:
    """What ``Worker(settings=…)`` / ``serve(settings=…)`` accept, as :class:`Settings`.

    A :class:`RuntimeSettings` (the older API) replaces that part of the
    process environment's settings; a mapping is read as the environment.
    """
    if isinstance(given, Settings):
        return given
    if isinstance(given, RuntimeSettings):
        return dataclasses.replace(Settings.from_env(), runtime=given)
    return Settings.from_env(given)
