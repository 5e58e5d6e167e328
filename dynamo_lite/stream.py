"""The stream validator: enforces the generate() contract between engine and wire.

Every chunk an engine yields passes :meth:`StreamValidator.accept` before it
is encoded. The contract (always on, unlike the stock debug-only validator):

* a chunk is a dict with ``token_ids`` (a list of ints) and an int ``index``
  (default 0); ``finish_reason``, when present, is one of the exact,
  case-sensitive stock strings (:data:`FINISH_REASONS`), ``"error"`` or
  ``"error: <message>"``;
* exactly one terminal (a chunk with ``finish_reason``) ends the stream;
* chunks after the terminal are dropped, logged once and counted.

Finish reasons go out as stock sends them: ``abort`` → ``cancelled``;
``"error"`` / ``"error: <message>"`` become the wire's error finish reason
``{"error": "<message>"}`` (the message verbatim after ``"error: "``; a bare
``"error"`` gets stock's "backend emitted finish_reason=error without a
message"), which the frontend answers with 500 "Internal server error" and
logs with the message. Anything else — ``"STOP"``, ``"tool_calls"``,
``""``, ``"error:x"`` — is a contract violation.

Violations, where we deliberately differ from stock:

* a malformed chunk or an unknown finish reason ends the stream with an
  ``Internal`` error item naming what was wrong, logged at ERROR here and
  shown in the frontend's log as the diagnostic. The client sees 500
  "Internal server error"; stock answers 400 "Invalid request", which
  blames the client's request for an engine bug and invites it to give up
  rather than retry or report it;
* a stream that ends without a terminal gets the same kind of error item
  (500). Stock ends it silently: the client gets 200 with
  ``finish_reason: null`` and cannot tell a truncated answer from a
  complete one.

With ``DYN_LITE_STREAM_DEBUG=1`` (or ``strict=True``) every violation raises
:class:`StreamContractError` instead, for tests.
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import DynamoException, WireError

logger = logging.getLogger(__name__)

#: Engine finish_reason → wire value (exact, case-sensitive).
FINISH_REASONS: dict[str, str] = {
    "stop": "stop",
    "eos": "eos",
    "length": "length",
    "cancelled": "cancelled",
    "abort": "cancelled",
    "content_filter": "content_filter",
}

#: Stock's text for a bare ``"error"`` finish reason.
ERROR_WITHOUT_MESSAGE = "backend emitted finish_reason=error without a message"
_ERROR_PREFIX = "error: "

#: Chunk keys forwarded into ``LLMEngineOutput``; anything else is ignored.
OUTPUT_KEYS = frozenset(
    {
        "token_ids",
        "tokens",
        "text",
        "output_type",
        "cum_log_probs",
        "log_probs",
        "top_logprobs",
        "finish_reason",
        "index",
        "completion_usage",
        "disaggregated_params",
        "encoder_result",
        "engine_data",
        "extra_args",
        "stop_reason",
        "content_parts",
        "worker_trace_link",
        "routing_data",
    }
)


def is_known_finish_reason(value: str) -> bool:
    """True for the engine finish_reason strings 1.6.1 accepts (exact, case-sensitive)."""
    return value in FINISH_REASONS or value == "error" or value.startswith(_ERROR_PREFIX)


class StreamContractError(DynamoException):
    """The engine broke the generate() contract (debug mode raises this)."""

    kind = "Unknown"


def _debug_default() -> bool:
    # Validators built without ``strict`` (the worker's endpoint passes its
    # setting) take the process's DYN_LITE_STREAM_DEBUG from the config layer.
    from .config import process_switches

    return process_switches().stream_debug


class StreamValidator:
    """Validates and normalises one request's chunks; see the module docstring."""

    __slots__ = ("chunks", "dropped", "strict", "terminal", "tokens")

    def __init__(self, strict: bool | None = None) -> None:
        self.strict = _debug_default() if strict is None else strict
        self.terminal = False
        self.dropped = 0
        self.chunks = 0
        self.tokens = 0

    def _violation(self, message: str) -> WireError:
        if self.strict:
            raise StreamContractError(message)
        self.terminal = True
        text = f"engine stream contract violation: {message}"
        logger.error("%s; ending the request with an error", text)
        return WireError("Unknown", text)

    def accept(self, chunk: Any) -> dict[str, Any] | WireError | None:
        """The wire output for ``chunk``, an error terminal, or None to drop it."""
        if self.terminal:
            self.dropped += 1
            if self.strict:
                raise StreamContractError("chunk yielded after the terminal chunk")
            if self.dropped == 1:
                logger.warning("engine yielded a chunk after its terminal chunk; dropping it")
            return None
        if type(chunk) is not dict:
            return self._violation(f"chunk is {type(chunk).__name__}, not dict")
        ids = chunk.get("token_ids")
        if type(ids) is not list:
            if isinstance(ids, tuple):
                ids = list(ids)
            elif ids is None:
                return self._violation("chunk has no token_ids")
            else:
                return self._violation(f"token_ids is {type(ids).__name__}, not a list of ints")
        for t in ids:
            if type(t) is not int or t < 0:
                return self._violation(f"token_ids holds {t!r}, not a non-negative int")
        self.chunks += 1
        self.tokens += len(ids)
        if len(chunk) <= 2 and "finish_reason" not in chunk:
            # Hot path: a plain token chunk needs no copy.
            index = chunk.get("index", 0)
            if type(index) is not int:
                return self._violation(f"index is {index!r}, not an int")
            if ids is chunk["token_ids"] and "index" in chunk:
                return chunk
            return {"token_ids": ids, "index": index}
        out = {k: v for k, v in chunk.items() if k in OUTPUT_KEYS}
        out["token_ids"] = ids
        index = out.setdefault("index", 0)
        if type(index) is not int:
            return self._violation(f"index is {index!r}, not an int")
        reason = out.get("finish_reason")
        if reason is None:
            out.pop("finish_reason", None)
            return out
        if not isinstance(reason, str):
            return self._violation(f"finish_reason is {reason!r}, not a string")
        wire = FINISH_REASONS.get(reason)
        if wire is not None:
            out["finish_reason"] = wire
        elif is_known_finish_reason(reason):
            detail = reason[len(_ERROR_PREFIX) :] if reason != "error" else ERROR_WITHOUT_MESSAGE
            logger.warning("engine ended a request with finish_reason error: %s", detail)
            out["finish_reason"] = {"error": detail}
        else:
            return self._violation(
                f"unknown finish_reason {reason!r} (expected one of "
                f"{', '.join(sorted(FINISH_REASONS))}, 'error' or 'error: <message>')"
            )
        self.terminal = True
        return out

    def finish(self) -> WireError | None:
        """Called when the engine's stream ended: the missing-terminal error, if any."""
        if self.terminal:
            return None
        what = "without a terminal chunk" if self.chunks else "without yielding any chunk"
        return self._violation(f"stream ended {what}")


class RawStreamValidator(StreamValidator):
    """The raw-engine contract: each item is a JSON object, forwarded untouched.

    Raw engines (images, video, audio) have no token pipeline and no terminal
    marker; the stream simply ends after the last object.
    """

    __slots__ = ()

    def accept(self, chunk: Any) -> dict[str, Any] | WireError | None:
        if type(chunk) is not dict:
            return self._violation(f"raw engine item is {type(chunk).__name__}, not dict")
        self.chunks += 1
        return chunk

    def finish(self) -> WireError | None:
        if self.terminal or self.chunks:
            return None
        return self._violation("raw engine stream ended without yielding any object")
