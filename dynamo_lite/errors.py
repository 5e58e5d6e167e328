"""Typed errors an engine raises, and how each reaches the HTTP client.

An exception escaping ``generate()`` is classified into one of the backend
error kinds (the order follows the stock bridge: a :class:`DynamoException`
maps to its namesake; an HTTP-like exception with an int ``code`` maps 4xx to
``InvalidArgument``; ``ValueError``/``TypeError`` → ``InvalidArgument``;
``TimeoutError`` → ``ConnectionTimeout``; connection errors → ``CannotConnect``
or ``Disconnected``; ``CancelledError`` → ``Cancelled``; ``GeneratorExit`` →
``EngineShutdown``; anything else → ``Unknown``). The kind picks the
canonical ``class`` and ``reason`` of the wire ``DynamoError``, and those
decide the status the stock frontend answers with:

=================== ================= ============================ ======
kind                class             reason                       HTTP
=================== ================= ============================ ======
InvalidArgument     InvalidRequest    backend.invalid_argument     400
Unknown             Internal          backend.unknown              500
Cancelled           Cancelled         backend.cancelled            499
EngineShutdown      Unavailable       backend.engine_shutdown      503
StreamIncomplete    Unavailable       backend.stream_incomplete    503
CannotConnect       Unavailable       backend.cannot_connect       503
Disconnected        Unavailable       backend.disconnected         503
ConnectionTimeout   DeadlineExceeded  backend.connection_timeout   504
=================== ================= ============================ ======

Only a typed ``InvalidArgument`` carries a ``public`` message, so the client
sees its text; a bare ``ValueError`` is answered with "Invalid request", as
in stock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Cancelled",
    "CannotConnect",
    "ConnectionTimeout",
    "Disconnected",
    "DynamoException",
    "EngineShutdown",
    "ErrorKind",
    "HttpError",
    "InvalidArgument",
    "StreamIncomplete",
    "Unknown",
    "WireError",
    "classify",
    "to_wire_error",
]


class DynamoException(Exception):
    """Base of the typed engine errors (``dynamo.llm.exceptions`` names)."""

    kind = "Unknown"


class Unknown(DynamoException):
    kind = "Unknown"


class InvalidArgument(DynamoException):
    """Bad request input: HTTP 400 with this message."""

    kind = "InvalidArgument"


class CannotConnect(DynamoException):
    kind = "CannotConnect"


class Disconnected(DynamoException):
    kind = "Disconnected"


class ConnectionTimeout(DynamoException):
    kind = "ConnectionTimeout"


class Cancelled(DynamoException):
    kind = "Cancelled"


class EngineShutdown(DynamoException):
    """The engine is going away; the frontend quarantines the worker briefly."""

    kind = "EngineShutdown"


class StreamIncomplete(DynamoException):
    kind = "StreamIncomplete"


class HttpError(Exception):
    """An error with an explicit HTTP status (``dynamo.llm.exceptions.HttpError``)."""

    def __init__(self, code: int, message: str) -> None:
        if not isinstance(code, int) or not 0 <= code <= 599:
            raise ValueError("HttpError code must be an int in 0..599")
        self.code = code
        self.message = message[:8192]
        super().__init__(self.message)


ErrorKind = str

_KIND_CLASS_REASON: dict[str, tuple[str, str]] = {
    "Unknown": ("Internal", "backend.unknown"),
    "InvalidArgument": ("InvalidRequest", "backend.invalid_argument"),
    "CannotConnect": ("Unavailable", "backend.cannot_connect"),
    "Disconnected": ("Unavailable", "backend.disconnected"),
    "ConnectionTimeout": ("DeadlineExceeded", "backend.connection_timeout"),
    "Cancelled": ("Cancelled", "backend.cancelled"),
    "EngineShutdown": ("Unavailable", "backend.engine_shutdown"),
    "StreamIncomplete": ("Unavailable", "backend.stream_incomplete"),
}

# Diagnostics are operator-only text; the stock runtime caps them at 4 KiB.
_MAX_DIAGNOSTIC = 4096


@dataclass(frozen=True, slots=True)
class WireError:
    """A classified error, ready to become a wire ``DynamoError`` map."""

    kind: str
    message: str
    public: str | None = None

    def to_wire(self) -> dict[str, Any]:
        cls, reason = _KIND_CLASS_REASON.get(self.kind, _KIND_CLASS_REASON["Unknown"])
        diagnostic = _truncate(self.message)
        err: dict[str, Any] = {
            "error_type": {"Backend": self.kind},
            "class": cls,
            "reason": reason,
            "message": diagnostic,
            "diagnostic": diagnostic,
        }
        if self.public is not None:
            err["public"] = {"type": "message", "message": self.public}
        return err

    def __str__(self) -> str:
        cls, _ = _KIND_CLASS_REASON.get(self.kind, _KIND_CLASS_REASON["Unknown"])
        return f"{cls}: {self.message}"


def _truncate(text: str) -> str:
    raw = text.encode()
    if len(raw) <= _MAX_DIAGNOSTIC:
        return text
    return raw[:_MAX_DIAGNOSTIC].decode(errors="ignore")


def _http_like_code(exc: BaseException) -> int | None:
    for attr in ("code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def classify(exc: BaseException) -> WireError:
    """Map an exception raised by engine code to a :class:`WireError`."""
    if isinstance(exc, DynamoException):
        text = str(exc)
        public = text if isinstance(exc, InvalidArgument) else None
        return WireError(exc.kind, text, public)
    code = _http_like_code(exc)
    if code is not None:
        message = next(
            (
                str(v)
                for v in (getattr(exc, a, None) for a in ("message", "msg", "reason"))
                if isinstance(v, str)
            ),
            str(exc),
        )
        return WireError("InvalidArgument" if 400 <= code < 500 else "Unknown", message)
    name = type(exc).__name__
    text = f"{name}: {exc}"
    if isinstance(exc, ValueError | TypeError):
        return WireError("InvalidArgument", text)
    if isinstance(exc, TimeoutError):
        return WireError("ConnectionTimeout", text)
    if isinstance(exc, ConnectionRefusedError):
        return WireError("CannotConnect", text)
    if isinstance(exc, ConnectionError):
        return WireError("Disconnected", text)
    if isinstance(exc, asyncio.CancelledError):
        return WireError("Cancelled", text)
    if isinstance(exc, GeneratorExit):
        return WireError("EngineShutdown", text)
    return WireError("Unknown", text)


def to_wire_error(exc: BaseException) -> dict[str, Any]:
    return classify(exc).to_wire()
