"""Fault table shared by the dynamo_lite probe engine and the stock-SDK fault engine.

Both engines run the same misbehaviour for the same magic ``max_tokens`` value,
so a test can put the stock worker and ours side by side and compare what the
stock frontend makes of each. This module imports nothing from either SDK: the
exception classes come in as a namespace (``dynamo_lite`` or
``dynamo.llm.exceptions``).

* ``RAISE_BEFORE + i`` raises ``RAISES[i]`` before the first chunk;
* ``RAISE_MID + i`` yields three token chunks, then raises ``RAISES[i]``;
* ``FINISH + j`` yields two token chunks, then a terminal chunk with
  ``finish_reason = FINISH_REASONS[j]`` (``ABSENT``: the stream just ends).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

RAISE_BEFORE = 1000
RAISE_MID = 1100
FINISH = 1200

# Appending keeps earlier codes stable; the test vectors are keyed by name.
RAISES: tuple[str, ...] = (
    # The typed Dynamo exceptions.
    "Unknown",
    "InvalidArgument",
    "CannotConnect",
    "Disconnected",
    "ConnectionTimeout",
    "Cancelled",
    "EngineShutdown",
    "StreamIncomplete",
    "DynamoException",
    # Builtins the bridge maps by type.
    "ValueError",
    "TypeError",
    "RuntimeError",
    "TimeoutError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "HttpError418",
    "HttpError422",
    "HttpError503",
    "KeyError",
    # HttpError across the status range.
    "HttpError0",
    "HttpError200",
    "HttpError400",
    "HttpError401",
    "HttpError403",
    "HttpError404",
    "HttpError408",
    "HttpError409",
    "HttpError413",
    "HttpError415",
    "HttpError429",
    "HttpError499",
    "HttpError500",
    "HttpError501",
    "HttpError502",
    "HttpError504",
    "HttpError529",
    "HttpError599",
    # What makes an exception HTTP-like.
    "CodeAttr404",
    "StatusAttr429",
    "CodeAttrNoMessage",
    "BoolCode",
    # More builtins.
    "GeneratorExit",
    "CancelledError",
    "BrokenPipeError",
    "ConnectionError",
    "OSError",
    "HttpError302",
    "HttpError405",
    "HttpError451",
    "HttpError505",
    "BoolCodeMsg",
    "ValueErrorCodeMsg",
    "StrCodeMsg",
    "CodeNonStrMsg",
    "CodeMsgStatus",
    "CodeAttr700",
    "CodeAttrNeg",
    "CodeAttr65535",
    "CodeAttr65536",
    # Message edge cases: the 4 KiB cap, escaping, empty text.
    "LongInvalidArgument",
    "LongRuntimeError",
    "LongHttpError400",
    "UnicodeInvalidArgument",
    "UnicodeHttpError400",
    "EmptyInvalidArgument",
    "Exact4096InvalidArgument",
    "Exact4097InvalidArgument",
    "EmptyRuntimeError",
    "EmptyUnknown",
)

# The two raise ranges must not overlap.
assert len(RAISES) <= RAISE_MID - RAISE_BEFORE

ABSENT = "<absent>"

FINISH_REASONS: tuple[str, ...] = (
    "stop",
    "eos",
    "length",
    "cancelled",
    "abort",
    "content_filter",
    "error",
    "error: engine gave up",
    ABSENT,
    "STOP",
    "Stop",
    "tool_calls",
    "",
    "canceled",
    "max_tokens",
    "error:",
    "error:nospace",
    "error:   padded   ",
    "ERROR",
    " stop",
)

MESSAGE = "fault: {name} raised by the engine"


def raise_code(name: str, mid: bool = False) -> int:
    return (RAISE_MID if mid else RAISE_BEFORE) + RAISES.index(name)


def finish_code(reason: str) -> int:
    return FINISH + FINISH_REASONS.index(reason)


def is_fault(max_tokens: Any) -> bool:
    return isinstance(max_tokens, int) and (
        RAISE_BEFORE <= max_tokens < RAISE_BEFORE + len(RAISES)
        or RAISE_MID <= max_tokens < RAISE_MID + len(RAISES)
        or FINISH <= max_tokens < FINISH + len(FINISH_REASONS)
    )


class CodeAttr(Exception):
    """Duck-typed HTTP-like error: an int ``code`` (or ``status``) and a message attribute."""

    def __init__(self, text: str, **attrs: Any) -> None:
        super().__init__(text)
        for key, value in attrs.items():
            setattr(self, key, value)


def make_exception(name: str, ns: Any) -> BaseException:
    """The exception ``name`` stands for; Dynamo classes are looked up on ``ns``."""
    message = MESSAGE.format(name=name)
    if name == "CodeAttr404":
        return CodeAttr("str of CodeAttr404", code=404, message=message)
    if name == "StatusAttr429":
        return CodeAttr("str of StatusAttr429", status=429, msg=message)
    if name == "CodeAttrNoMessage":
        return CodeAttr(message, code=409)
    if name == "BoolCode":
        return CodeAttr(message, code=True)
    if name == "BoolCodeMsg":
        return CodeAttr("str of BoolCodeMsg", code=True, message=message)
    if name == "ValueErrorCodeMsg":
        exc = ValueError("str of ValueErrorCodeMsg")
        exc.code = 404  # type: ignore[attr-defined]
        exc.message = message  # type: ignore[attr-defined]
        return exc
    if name == "StrCodeMsg":
        return CodeAttr("str of StrCodeMsg", code="404", message=message)
    if name == "CodeNonStrMsg":
        return CodeAttr("str of CodeNonStrMsg", code=404, message=12345)
    if name == "CodeMsgStatus":
        return CodeAttr("str of CodeMsgStatus", status=404, message=message)
    if name in ("CodeAttr700", "CodeAttr65535", "CodeAttr65536"):
        return CodeAttr(f"str of {name}", code=int(name[len("CodeAttr") :]), message=message)
    if name == "CodeAttrNeg":
        return CodeAttr("str of CodeAttrNeg", code=-5, message=message)
    if name.startswith("Long"):
        # Past the 4 KiB diagnostic cap, with a multi-byte character across the cut.
        text = "L" * 4081 + "é" + "z" * 5000
        inner = name[len("Long") :]
        if inner.startswith("HttpError"):
            return ns.HttpError(int(inner[len("HttpError") :]), text)  # type: ignore[no-any-return]
        return RuntimeError(text) if inner == "RuntimeError" else getattr(ns, inner)(text)  # type: ignore[no-any-return]
    if name.startswith("Unicode"):
        text = 'héllo ✓ "quoted" \u2028 <tag>'
        inner = name[len("Unicode") :]
        if inner.startswith("HttpError"):
            return ns.HttpError(int(inner[len("HttpError") :]), text)  # type: ignore[no-any-return]
        return getattr(ns, inner)(text)  # type: ignore[no-any-return]
    if name.startswith("Exact"):
        return ns.InvalidArgument("E" * int(name[5:9]))  # type: ignore[no-any-return]
    if name == "EmptyInvalidArgument":
        return ns.InvalidArgument("")  # type: ignore[no-any-return]
    if name == "EmptyRuntimeError":
        return RuntimeError()
    if name == "EmptyUnknown":
        return ns.Unknown()  # type: ignore[no-any-return]
    if name == "CancelledError":
        return asyncio.CancelledError(message)
    if name.startswith("HttpError"):
        return ns.HttpError(int(name[len("HttpError") :]), message)  # type: ignore[no-any-return]
    builtin = {
        "ValueError": ValueError,
        "TypeError": TypeError,
        "RuntimeError": RuntimeError,
        "TimeoutError": TimeoutError,
        "ConnectionRefusedError": ConnectionRefusedError,
        "ConnectionResetError": ConnectionResetError,
        "KeyError": KeyError,
        "GeneratorExit": GeneratorExit,
        "BrokenPipeError": BrokenPipeError,
        "ConnectionError": ConnectionError,
        "OSError": OSError,
    }.get(name)
    if builtin is not None:
        return builtin(message)
    return getattr(ns, name)(message)  # type: ignore[no-any-return]


#: Fault streams emit ``FIRST_TOKEN, FIRST_TOKEN + 1, …`` (visible text with the tiny model).
FIRST_TOKEN = 72


def _token(i: int) -> dict[str, Any]:
    return {"token_ids": [FIRST_TOKEN + i], "index": 0}


async def fault_stream(max_tokens: int, ns: Any, delay: float = 0.002) -> AsyncIterator[Any]:
    """The chunks (and the exception) the magic ``max_tokens`` value selects."""
    if RAISE_BEFORE <= max_tokens < RAISE_BEFORE + len(RAISES):
        raise make_exception(RAISES[max_tokens - RAISE_BEFORE], ns)
    if RAISE_MID <= max_tokens < RAISE_MID + len(RAISES):
        for i in range(3):
            await asyncio.sleep(delay)
            yield _token(i)
        raise make_exception(RAISES[max_tokens - RAISE_MID], ns)
    reason = FINISH_REASONS[max_tokens - FINISH]
    for i in range(2):
        await asyncio.sleep(delay)
        yield _token(i)
    if reason == ABSENT:
        return
    await asyncio.sleep(delay)
    yield {"token_ids": [FIRST_TOKEN + 2], "index": 0, "finish_reason": reason}
