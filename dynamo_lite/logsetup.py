"""Logging for ``run()``: stdlib loggers in the library, structlog rendering here.

``DYN_LOG`` follows the stock filter syntax: a default level, optionally
followed by comma-separated ``target=level`` directives
(``DYN_LOG="warn,dynamo_lite.endpoint=debug"``). ``DYN_LOGGING_JSONL=1``
(or ``DYN_LOGGING_CONSOLE_FORMAT=jsonl``) prints one JSON object per line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

import structlog

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}

# Record attributes that are not user-supplied "extra" fields.
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def parse_dyn_log(spec: str | None) -> tuple[int, dict[str, int]]:
    """``"warn,dynamo_lite.endpoint=debug"`` → (WARNING, {"dynamo_lite.endpoint": DEBUG})."""
    default = logging.INFO
    targets: dict[str, int] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            target, _, level = part.partition("=")
            if level.strip().lower() in _LEVELS:
                # Rust-style paths (a::b) name Python loggers (a.b).
                targets[target.strip().replace("::", ".")] = _LEVELS[level.strip().lower()]
        elif part.lower() in _LEVELS:
            default = _LEVELS[part.lower()]
    return default, targets


def _add_extras(
    _: object, __: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_") and key not in event_dict:
                event_dict[key] = value
        event_dict.setdefault("target", record.name)
    return event_dict


_LIFECYCLE_KEYS = (
    "from_state",
    "to_state",
    "reason",
    "elapsed",
    "event",
    "level",
    "time",
    "target",
)


def render_console(_: object, __: str, event_dict: structlog.types.EventDict) -> str:
    """One readable line per record; lifecycle transitions get their own shape.

    ``12:00:01.234 INFO  lifecycle  serving → grace  (SIGTERM, +6.848s)``
    """
    time_ = str(event_dict.pop("time", ""))[11:23]
    level = str(event_dict.pop("level", "")).upper()
    target = str(event_dict.pop("target", ""))
    event = str(event_dict.pop("event", ""))
    exc = event_dict.pop("exception", None)
    if "from_state" in event_dict and "to_state" in event_dict:
        head = (
            f"lifecycle  {event_dict['from_state']} → {event_dict['to_state']}"
            f"  ({event_dict['reason']}, +{float(event_dict['elapsed']):.3f}s)"
        )
        rest = {k: v for k, v in event_dict.items() if k not in _LIFECYCLE_KEYS}
    else:
        head = f"{target.removeprefix('dynamo_lite.')}: {event}" if target else event
        rest = dict(event_dict)
    extras = " ".join(f"{k}={v}" for k, v in rest.items() if not k.startswith("_"))
    line = f"{time_} {level:<5} {head}" + (f"  {extras}" if extras else "")
    return line + (f"\n{exc}" if exc else "")


def configure_logging(env: Mapping[str, str] | None = None, stream: object = None) -> None:
    env = os.environ if env is None else env
    default, targets = parse_dyn_log(env.get("DYN_LOG"))
    jsonl = env.get("DYN_LOGGING_JSONL", "").lower() in ("1", "true") or (
        env.get("DYN_LOGGING_CONSOLE_FORMAT", "").lower() == "jsonl"
    )
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if jsonl else render_console
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="time")
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, timestamper, _add_extras],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_dynamo_lite", False):
            root.removeHandler(old)
    handler._dynamo_lite = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(default)
    for target, level in targets.items():
        logging.getLogger(target).setLevel(level)
