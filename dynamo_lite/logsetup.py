"""Logging for ``run()``: stdlib loggers in the library, stock-shaped rendering here.

The library only ever calls :mod:`logging`; :func:`configure_logging` (called
by :func:`dynamo_lite.run`) installs one handler on the root logger whose
formatter renders every record — the library's, the engine's and any
``structlog.get_logger()`` output — the way the stock worker does. structlog
is configured to feed that handler when JSONL logging is on or the engine
already uses structlog; otherwise it is never imported:

``DYN_LOG``
    The stock filter (tracing's ``EnvFilter`` syntax): comma-separated
    directives, each a level (``info``; the default level), ``target=level``
    or a bare ``target`` (everything from it). Levels are ``trace``,
    ``debug``, ``info``, ``warn``, ``error``, ``off`` (any case, or ``0`` to ``5``).
    Targets are logger names; Rust paths work too (``a::b`` is ``a.b``), and
    the stock targets ``dynamo_backend_common`` / ``…::worker`` /
    ``…::adapter`` and ``dynamo_runtime`` select the matching dynamo_lite
    loggers. Unparsable directives are skipped with a warning (as stock's
    lossy parse does). Default ``info``; ``httpx``/``httpcore`` are kept at
    ``warn`` and ``nats`` at ``error`` unless a directive names them.
``DYN_LOGGING_JSONL=1`` (or ``DYN_LOGGING_CONSOLE_FORMAT=jsonl``)
    One JSON object per line with the stock keys, in the stock order:
    ``time`` (UTC, microseconds, ``Z``), ``level`` (``ERROR``/``WARN``/
    ``INFO``/``DEBUG``/``TRACE``), ``file``, ``line``, ``target`` (the logger
    name), ``message``, then the record's fields sorted by name (``extra=``
    values, structlog key/values, ``exception`` with the traceback).
``DYN_LOGGING_SPAN_EVENTS=1`` (with JSONL)
    ``SPAN_FIRST_ENTRY`` / ``SPAN_CLOSED`` records for each request's
    ``handle_payload`` and ``engine.generate`` spans (:mod:`dynamo_lite.spanlog`),
    target ``request_span``, level INFO, whatever ``DYN_LOG`` says. Ignored in the
    readable format, as in stock.
``DYN_LOG_USE_LOCAL_TZ=1``
    Local time with its UTC offset instead of UTC.
``DYN_LOGGING_CONFIG_PATH``
    A TOML file (default ``/opt/dynamo/etc/logging.toml`` when it exists), as
    stock reads it: ``log_level = "warn"`` is the default level unless
    ``DYN_LOG`` sets one; ``[log_filters]`` maps targets to levels and is
    merged after ``DYN_LOG``'s directives (the file wins for a target both name).

Otherwise each record is one readable line; a lifecycle transition (a record
with ``from_state``/``to_state``) reads ``lifecycle  serving → grace
(SIGTERM, +6.848s)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from .envparse import parse_bool, parse_str

__all__ = ["TRACE", "configure_logging", "parse_dyn_log"]

#: Python has no TRACE level; stock's ``trace`` lets everything through.
TRACE = 5
OFF = logging.CRITICAL + 10
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": OFF,
    "0": OFF,
    "1": logging.ERROR,
    "2": logging.WARNING,
    "3": logging.INFO,
    "4": logging.DEBUG,
    "5": TRACE,
}

#: Stock target names → the dynamo_lite loggers that do that job.
TARGET_ALIASES = {
    "dynamo_backend_common": "dynamo_lite",
    "dynamo_backend_common.worker": "dynamo_lite.worker",
    "dynamo_backend_common.adapter": "dynamo_lite.endpoint",
    "dynamo_runtime": "dynamo_lite",
}

#: Chatty libraries, quiet unless a directive names them (stock does the same for its crates).
DEFAULT_TARGETS = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "nats": logging.ERROR}

#: Stock's level words.
_LEVEL_NAMES = {
    TRACE: "TRACE",
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "ERROR",
}

# Record attributes that are not user-supplied "extra" fields.
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def _level(word: str) -> int | None:
    return _LEVELS.get(word.strip().lower())


def parse_dyn_log(spec: str | None) -> tuple[int, dict[str, int], list[str]]:
    """``"warn,dynamo_lite.endpoint=debug"`` → (WARNING, {"dynamo_lite.endpoint": DEBUG}, []).

    The third item lists the directives that were skipped as invalid.
    """
    default = logging.INFO
    targets: dict[str, int] = {}
    invalid: list[str] = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        target, sep, word = part.partition("=")
        target = target.strip()
        if not sep:
            level = _level(part)
            if level is not None:
                default = level
                continue
            word = "trace"  # a bare target enables everything from it
        level = _level(word)
        if level is None or not target or "[" in target or "{" in target:
            invalid.append(part)
            continue
        name = target.replace("::", ".")
        targets[TARGET_ALIASES.get(name, name)] = level
    return default, targets, invalid


#: Stock's default logging configuration file.
DEFAULT_LOGGING_CONFIG = "/opt/dynamo/etc/logging.toml"


def read_logging_config(path: str) -> tuple[int | None, dict[str, int], list[str]]:
    """``(log_level, log_filters, problems)`` from a stock logging TOML file."""
    import tomllib

    problems: list[str] = []
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return None, {}, [f"cannot read {path}: {exc}"]
    level: int | None = None
    raw_level = data.get("log_level")
    if isinstance(raw_level, str):
        level = _level(raw_level)
        if level is None:
            problems.append(f"log_level {raw_level!r}")
    targets: dict[str, int] = {}
    filters = data.get("log_filters")
    if isinstance(filters, dict):
        for target, word in filters.items():
            value = _level(word) if isinstance(word, str) else None
            if value is None:
                problems.append(f"log_filters.{target} = {word!r}")
                continue
            name = str(target).replace("::", ".")
            targets[TARGET_ALIASES.get(name, name)] = value
    return level, targets, problems


def _timestamp(created: float, local: bool) -> str:
    """``2026-12-01T10:00:00.123456Z`` (UTC) or with the local offset
    (``+01:00``), as ``datetime`` would print it; written with ``time`` so a
    worker does not load ``datetime`` for its log lines."""
    # datetime.fromtimestamp's rounding: the fraction alone, half to even.
    frac, whole = math.modf(created)
    secs, micros = int(whole), round(frac * 1e6)
    if micros >= 1_000_000:
        secs, micros = secs + 1, micros - 1_000_000
    elif micros < 0:
        secs, micros = secs - 1, micros + 1_000_000
    if not local:
        return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(secs))}.{micros:06d}Z"
    lt = time.localtime(secs)
    sign = "-" if lt.tm_gmtoff < 0 else "+"
    hours, rest = divmod(abs(lt.tm_gmtoff), 3600)
    offset = f"{sign}{hours:02d}:{rest // 60:02d}" + (f":{rest % 60:02d}" if rest % 60 else "")
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', lt)}.{micros:06d}{offset}"


def stock_event(record: logging.LogRecord, local_tz: bool) -> dict[str, Any]:
    """The record in the stock order: time, level, file, line, target, message, fields."""
    fields: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key not in _STD_ATTRS and not key.startswith("_"):
            fields[key] = value
    if isinstance(record.msg, dict):
        # A structlog event dict (structlog's wrap_for_formatter puts it here).
        event = dict(record.msg)
        message = event.pop("event", "")
        exc_info: Any = event.pop("exc_info", None)
        stack = event.pop("stack_info", None)
        fields.update((k, v) for k, v in event.items() if not k.startswith("_"))
    else:
        message = record.getMessage()
        exc_info, stack = record.exc_info, record.stack_info
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        fields["exception"] = logging.Formatter().formatException(exc_info)
    if isinstance(stack, str):
        fields["stack"] = stack
    out: dict[str, Any] = {
        "time": _timestamp(record.created, local_tz),
        "level": _LEVEL_NAMES.get(record.levelno, record.levelname),
        "file": record.pathname,
        "line": record.lineno,
        "target": record.name,
        "message": str(message),
    }
    for key in sorted(fields):
        if key not in out:
            out[key] = fields[key]
    return out


def render_jsonl(event_dict: dict[str, Any]) -> str:
    return json.dumps(event_dict, default=str, ensure_ascii=False, separators=(",", ":"))


_HEAD_KEYS = ("time", "level", "file", "line", "target", "message")
_LIFECYCLE_KEYS = frozenset({"from_state", "to_state", "reason", "elapsed", "event"})


def render_console(event_dict: dict[str, Any]) -> str:
    """One readable line per record; lifecycle transitions get their own shape.

    ``2026-01-01T12:00:01.234567Z INFO  lifecycle  serving → grace  (SIGTERM, +6.848s)``
    """
    time_ = str(event_dict.get("time", ""))
    level = str(event_dict.get("level", ""))
    target = str(event_dict.get("target", ""))
    message = str(event_dict.get("message", ""))
    rest = {k: v for k, v in event_dict.items() if k not in _HEAD_KEYS}
    exc = rest.pop("exception", None)
    if "from_state" in rest and "to_state" in rest:
        head = (
            f"lifecycle  {rest['from_state']} → {rest['to_state']}"
            f"  ({rest.get('reason')}, +{float(rest.get('elapsed') or 0):.3f}s)"
        )
        rest = {k: v for k, v in rest.items() if k not in _LIFECYCLE_KEYS}
    else:
        head = f"{target.removeprefix('dynamo_lite.')}: {message}" if target else message
    extras = " ".join(f"{k}={v}" for k, v in rest.items())
    line = f"{time_} {level:<5} {head}" + (f"  {extras}" if extras else "")
    return line + (f"\n{exc}" if exc else "")


class StockFormatter(logging.Formatter):
    """Renders a record as one stock-shaped JSON line or one readable line."""

    def __init__(self, *, jsonl: bool, local_tz: bool) -> None:
        super().__init__()
        self.render = render_jsonl if jsonl else render_console
        self.local_tz = local_tz

    def format(self, record: logging.LogRecord) -> str:
        return self.render(stock_event(record, self.local_tz))


def _route_structlog() -> None:
    """Send structlog loggers (an engine's) through the stdlib handler."""
    import structlog

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


#: Loggers a previous configure_logging() gave a level, reset by the next one.
_configured: set[str] = set()


@dataclass(frozen=True)
class LoggingSettings:
    """``DYN_LOG``, ``DYN_LOGGING_*`` and ``DYN_LOG_USE_LOCAL_TZ``."""

    dyn_log: str | None = None
    config_path: str = DEFAULT_LOGGING_CONFIG
    jsonl: bool = False
    local_tz: bool = False
    #: ``DYN_LOGGING_SPAN_EVENTS``: span entry/close records (JSONL only).
    span_events: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LoggingSettings:
        return cls(
            dyn_log=parse_str(env, "DYN_LOG"),
            config_path=parse_str(env, "DYN_LOGGING_CONFIG_PATH") or DEFAULT_LOGGING_CONFIG,
            jsonl=parse_bool(env, "DYN_LOGGING_JSONL", False)
            or (env.get("DYN_LOGGING_CONSOLE_FORMAT") or "").strip().lower() == "jsonl",
            local_tz=parse_bool(env, "DYN_LOG_USE_LOCAL_TZ", False),
            span_events=parse_bool(env, "DYN_LOGGING_SPAN_EVENTS", False),
        )


def configure_logging(
    env: LoggingSettings | Mapping[str, str], stream: TextIO | None = None
) -> None:
    """Install the worker's log handler on the root logger (idempotent).

    ``env``: the settings (:class:`dynamo_lite.config.Settings` ``.logging``)
    or an environment mapping to read them from.
    """
    s = env if isinstance(env, LoggingSettings) else LoggingSettings.from_env(env)
    default, targets, invalid = parse_dyn_log(s.dyn_log)
    config_path = s.config_path
    if os.path.isfile(config_path):
        file_level, file_targets, problems = read_logging_config(config_path)
        if file_level is not None and not (s.dyn_log or "").strip():
            default = file_level
        targets.update(file_targets)
        invalid += [f"{config_path}: {p}" for p in problems]
    jsonl = s.jsonl
    formatter = StockFormatter(jsonl=jsonl, local_tz=s.local_tz)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler._dynamo_lite = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_dynamo_lite", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(default)
    for name in _configured - targets.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in {**DEFAULT_TARGETS, **targets}.items():
        logging.getLogger(name).setLevel(level)
        _configured.add(name)
    # structlog loggers (an engine's) go through the same handler; importing
    # structlog only for that keeps a plain worker lighter.
    if jsonl or "structlog" in sys.modules:
        _route_structlog()
    from . import telemetry

    span_events = jsonl and s.span_events
    if span_events:
        from . import spanlog

        # Stock lets its span records through whatever DYN_LOG says (even ``warn``).
        span_logger = logging.getLogger(spanlog.TARGET)
        if not span_logger.isEnabledFor(logging.INFO):
            span_logger.setLevel(logging.INFO)
            _configured.add(spanlog.TARGET)
    telemetry.span_events = span_events
    for directive in invalid:
        logging.getLogger(__name__).warning("DYN_LOG: ignoring invalid directive %r", directive)
