"""Typed errors an engine raises, and how each reaches the HTTP client.

An exception escaping ``generate()`` is classified (:func:`classify`) the way
the stock 1.6.1 bridge does it, in this order:

1. a :class:`DynamoException` maps to its namesake kind (bare → ``Unknown``);
2. an *HTTP-like* exception — an int ``code`` (else ``status``) in 0..65535
   **and** a str ``message`` attribute, e.g. :class:`HttpError` — keeps its
   status: the wire error carries the legacy type, class and reason of that
   status (:data:`HTTP_STATUS_ERRORS`) and, as its text, the compact JSON
   ``{"message":…,"code":…}``;
3. ``ValueError``/``TypeError`` → ``InvalidArgument``; ``TimeoutError`` →
   ``ConnectionTimeout``; ``ConnectionRefusedError`` → ``CannotConnect``;
   other ``ConnectionError`` → ``Disconnected``; ``CancelledError`` →
   ``Cancelled``; ``GeneratorExit`` → ``EngineShutdown`` ("engine shutting
   down"); anything else → ``Unknown``. Builtins carry ``"<Type>: <str>"``.

What the stock frontend answers (measured, with the stock worker and ours)::

    kind               class             reason                     HTTP  SSE type
    InvalidArgument    InvalidRequest    backend.invalid_argument   400   invalid_request_error
    Unknown            Internal          backend.unknown            500   internal_server_error
    Cancelled          Cancelled         backend.cancelled          499   request_cancelled
    EngineShutdown     Unavailable       backend.engine_shutdown    503   service_unavailable  (*)
    StreamIncomplete   Unavailable       backend.stream_incomplete  503   service_unavailable  (*)
    CannotConnect      Unavailable       backend.cannot_connect     503   service_unavailable
    Disconnected       Unavailable       backend.disconnected       503   service_unavailable
    ConnectionTimeout  DeadlineExceeded  backend.connection_timeout 504   timeout_error

(*) the frontend also takes the worker out of rotation for
``DYN_RUNTIME_INHIBITED_DURATION_SECS`` (default 5 s); with one worker every
request in that window gets 503 "Model … is not ready to serve requests yet".

Only a typed ``InvalidArgument`` carries a ``public`` message, so only its
text reaches the client; every other body is the frontend's stock phrase
("Invalid request", "Internal server error", …). A non-streaming 500 raised
before the first chunk adds ``"details":{"backend_status":500}``.

HTTP-like errors: raised before the first chunk of a non-streaming request,
the client gets the status with its reason phrase (418 "I'm a teapot",
404 "Not Found"; 422 → 400 "Unprocessable Entity"; 501/502/504 → 500 with
``backend_status``); otherwise the class decides (a generic 4xx is 400
"Invalid request", 404 stays 404 "Resource not found", 429 stays 429). A
408/504 (``ResponseTimeout``) quarantines the worker like ``EngineShutdown``.
``tests/interop/test_interop_errors.py`` holds the measured table.

``message`` and ``diagnostic`` (and ``public``) are capped at 4096 UTF-8
bytes: longer text is cut on a character boundary and ends with
``...[truncated]``, as stock does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HTTP_STATUS_ERRORS",
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
    "http_status_error",
    "to_wire_error",
    "truncate_diagnostic",
]

logger = logging.getLogger(__name__)


class DynamoException(Exception):
    """Base of the typed engine errors (``dynamo.llm.exceptions`` names)."""

    kind = "Unknown"


class Unknown(DynamoException):
    """An engine failure with no better kind: HTTP 500."""

    kind = "Unknown"


class InvalidArgument(DynamoException):
    """Bad request input: HTTP 400 with this message shown to the client."""

    kind = "InvalidArgument"


class CannotConnect(DynamoException):
    """The engine could not reach something it needs: HTTP 503."""

    kind = "CannotConnect"


class Disconnected(DynamoException):
    """A connection the engine depends on dropped: HTTP 503."""

    kind = "Disconnected"


class ConnectionTimeout(DynamoException):
    """The engine timed out on a dependency: HTTP 504."""

    kind = "ConnectionTimeout"


class Cancelled(DynamoException):
    """The engine gave up on the request: HTTP 499."""

    kind = "Cancelled"


class EngineShutdown(DynamoException):
    """The engine is going away: HTTP 503, and the frontend quarantines the worker."""

    kind = "EngineShutdown"


class StreamIncomplete(DynamoException):
    """The engine lost the rest of the stream: HTTP 503 and quarantine, as above."""

    kind = "StreamIncomplete"


_HTTP_ERROR_MAX_MESSAGE = 8192


class HttpError(Exception):
    """An error with an explicit HTTP status (``dynamo.llm.exceptions.HttpError``)."""

    def __init__(self, code: int, message: str) -> None:
        if not isinstance(code, int) or isinstance(code, bool):
            raise ValueError("HttpError status code must be an integer")
        if not isinstance(message, str):
            raise ValueError("HttpError message must be a string")
        if not 0 <= code < 600:
            raise ValueError("HTTP status code must be an integer between 0 and 599")
        if len(message) > _HTTP_ERROR_MAX_MESSAGE:
            logger.warning(
                "HttpError message length %d exceeds max length %d, truncating...",
                len(message),
                _HTTP_ERROR_MAX_MESSAGE,
            )
            message = message[: _HTTP_ERROR_MAX_MESSAGE - 3] + "..."
        self.code = code
        self.message = message
        super().__init__(f"HTTP {code}: {message}")


ErrorKind = str

#: Backend error kind → (canonical class, reason).
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

#: HTTP status → (legacy error_type, class, reason) for HTTP-like exceptions, as
#: the stock bridge emits them. Other 4xx: :data:`_HTTP_OTHER_4XX`; the rest:
#: :data:`_HTTP_OTHER`.
HTTP_STATUS_ERRORS: dict[int, tuple[str, str, str]] = {
    401: ("Unknown", "Unauthenticated", "request.unauthenticated"),
    403: ("Unknown", "PermissionDenied", "request.permission_denied"),
    404: ("Unknown", "NotFound", "request.not_found"),
    408: ("ResponseTimeout", "DeadlineExceeded", "request.deadline_exceeded"),
    409: ("Unknown", "Conflict", "request.conflict"),
    413: ("InvalidArgument", "PayloadTooLarge", "request.payload_too_large"),
    415: ("InvalidArgument", "UnsupportedMedia", "request.unsupported_media"),
    429: ("ResourceExhausted", "RateLimited", "request.rate_limited"),
    499: ("Cancelled", "Cancelled", "request.cancelled"),
    501: ("Unknown", "NotImplemented", "runtime.not_implemented"),
    502: ("Unknown", "BackendProtocol", "backend.protocol"),
    503: ("Unavailable", "Unavailable", "backend.unavailable"),
    504: ("ResponseTimeout", "DeadlineExceeded", "request.deadline_exceeded"),
    529: ("ResourceExhausted", "CapacityExhausted", "capacity.exhausted"),
}
_HTTP_OTHER_4XX = ("InvalidArgument", "InvalidRequest", "request.invalid")
_HTTP_OTHER = ("Unknown", "Internal", "runtime.internal")


def http_status_error(code: int) -> tuple[str, str, str]:
    """``(error_type, class, reason)`` the stock bridge gives an HTTP-like status."""
    known = HTTP_STATUS_ERRORS.get(code)
    if known is not None:
        return known
    return _HTTP_OTHER_4XX if 400 <= code < 500 else _HTTP_OTHER


# Operator text is capped at 4 KiB; the cut keeps whole characters and is marked.
_MAX_DIAGNOSTIC = 4096
_TRUNCATED = "...[truncated]"


def truncate_diagnostic(text: str) -> str:
    """``text`` within 4096 UTF-8 bytes, cut and marked as stock does."""
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # lone surrogates cannot go on the wire
        raw = text.encode(errors="replace")
        text = raw.decode()
    if len(raw) <= _MAX_DIAGNOSTIC:
        return text
    keep = raw[: _MAX_DIAGNOSTIC - len(_TRUNCATED)].decode(errors="ignore")
    return keep + _TRUNCATED


@dataclass(frozen=True, slots=True)
class WireError:
    """A classified error, ready to become a wire ``DynamoError`` map.

    ``kind`` is the backend error kind; for an HTTP-like error (``http_code``
    set) it is the legacy error type of that status instead.
    """

    kind: str
    message: str
    public: str | None = None
    http_code: int | None = None

    @property
    def error_class(self) -> str:
        if self.http_code is not None:
            return http_status_error(self.http_code)[1]
        return _KIND_CLASS_REASON.get(self.kind, _KIND_CLASS_REASON["Unknown"])[0]

    @property
    def reason(self) -> str:
        if self.http_code is not None:
            return http_status_error(self.http_code)[2]
        return _KIND_CLASS_REASON.get(self.kind, _KIND_CLASS_REASON["Unknown"])[1]

    def to_wire(self) -> dict[str, Any]:
        if self.http_code is not None:
            error_type: str | dict[str, str] = http_status_error(self.http_code)[0]
            text = json.dumps(
                {"message": self.message, "code": self.http_code},
                ensure_ascii=False,
                separators=(",", ":"),
            )
        else:
            kind = self.kind if self.kind in _KIND_CLASS_REASON else "Unknown"
            error_type = {"Backend": kind}
            text = self.message
        diagnostic = truncate_diagnostic(text)
        err: dict[str, Any] = {
            "error_type": error_type,
            "class": self.error_class,
            "reason": self.reason,
            "message": diagnostic,
            "diagnostic": diagnostic,
        }
        if self.public is not None:
            err["public"] = {"type": "message", "message": truncate_diagnostic(self.public)}
        return err

    def __str__(self) -> str:
        return f"{self.error_class}: {self.message}"


def _http_like(exc: BaseException) -> tuple[int, str] | None:
    """``(status, message)`` when ``exc`` looks like an HTTP error, as the stock bridge
    decides: an int ``code`` (else ``status``) that fits a u16, and a str ``message``."""
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        return None
    for attr in ("code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return (int(value), message) if 0 <= value <= 0xFFFF else None
    return None


def classify(exc: BaseException) -> WireError:
    """Map an exception raised by engine code to a :class:`WireError`."""
    if isinstance(exc, DynamoException):
        text = str(exc)
        public = text if isinstance(exc, InvalidArgument) else None
        return WireError(exc.kind, text, public)
    http = _http_like(exc)
    if http is not None:
        code, message = http
        return WireError(http_status_error(code)[0], message, http_code=code)
    if isinstance(exc, GeneratorExit):
        return WireError("EngineShutdown", "engine shutting down")
    text = f"{type(exc).__name__}: {exc}"
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
    return WireError("Unknown", text)


def to_wire_error(exc: BaseException) -> dict[str, Any]:
    """The wire ``DynamoError`` map for ``exc``."""
    return classify(exc).to_wire()
