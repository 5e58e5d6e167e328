"""The stream validator: enforces the generate() contract between engine and wire.

Every chunk an engine yields passes :meth:`StreamValidator.accept` before it
is encoded. The contract (always on, unlike the stock debug-only validator):

* a chunk is a dict with ``token_ids`` (a list of ints) and an int ``index``
  (default 0); ``finish_reason``, when present, is one of the exact,
  case-sensitive stock strings;
* exactly one terminal (a chunk with ``finish_reason``) ends the stream;
* chunks after the terminal are dropped, logged once and counted;
* a malformed chunk or an unknown finish reason ends the stream with a typed
  error item that says what was wrong (stock answers a bare HTTP 400);
* a stream that ends without a terminal gets an explicit error terminal
  (stock ends it silently, or answers an empty 200).

``finish_reason`` is normalised on the way out: ``abort`` → ``cancelled``;
``error`` / ``error: <msg>`` become an error item. With
``DYN_LITE_STREAM_DEBUG=1`` (or ``strict=True``) every violation raises
:class:`StreamContractError` instead, for tests.
"""

from __future__ import annotations

import logging
import os
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


class StreamContractError(DynamoException):
    """The engine broke the generate() contract (debug mode raises this)."""

    kind = "Unknown"


def _debug_default() -> bool:
    return os.environ.get("DYN_LITE_STREAM_DEBUG", "").strip().lower() in ("1", "true", "yes")


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
        return WireError("Unknown", f"engine stream contract violation: {message}")

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
        if wire is None:
            if reason == "error" or reason.startswith("error:"):
                self.terminal = True
                detail = reason[6:].strip() if reason.startswith("error:") else ""
                return WireError("Unknown", detail or "engine reported finish_reason 'error'")
            return self._violation(
                f"unknown finish_reason {reason!r} (expected one of "
                f"{', '.join(sorted(FINISH_REASONS))}, 'error' or 'error: <message>')"
            )
        out["finish_reason"] = wire
        self.terminal = True
        return out

    def finish(self) -> WireError | None:
        """Called when the engine's stream ended: the missing-terminal error, if any."""
        if self.terminal:
            return None
        what = "without a terminal chunk" if self.chunks else "without yielding any chunk"
        return self._violation(f"stream ended {what}")
