"""Typed engine errors → wire error items, checked against what the stock SDK emits.

``tests/vectors/tcp/stock_error_items.json`` holds the error map the stock
1.6.1 worker sent for every row of ``tests/engines/faults.py`` (captured with
``python -m tests.engines.capture_stock_errors``); our classification must give
the same map, key order included, so the encoded item is byte-identical.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import msgpack
import pytest

import dynamo_lite
from dynamo_lite.errors import (
    HTTP_STATUS_ERRORS,
    Cancelled,
    CannotConnect,
    ConnectionTimeout,
    Disconnected,
    DynamoException,
    EngineShutdown,
    HttpError,
    InvalidArgument,
    StreamIncomplete,
    Unknown,
    WireError,
    classify,
    http_status_error,
    to_wire_error,
    truncate_diagnostic,
)
from dynamo_lite.protocol import items
from dynamo_lite.stream import (
    ERROR_WITHOUT_MESSAGE,
    FINISH_REASONS,
    StreamContractError,
    StreamValidator,
    is_known_finish_reason,
)
from tests.engines import faults

VECTORS = Path(__file__).parents[1] / "vectors" / "tcp"
STOCK = json.loads((VECTORS / "stock_error_items.json").read_text())


def ordered(value: Any) -> Any:
    """``value`` with every map turned into its (key, value) list, so == checks order."""
    if isinstance(value, dict):
        return [(k, ordered(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [ordered(v) for v in value]
    return value


# --- every fault row, against the stock capture -------------------------------------


def test_the_capture_covers_the_fault_table() -> None:
    assert list(STOCK["raises"]) == list(faults.RAISES)
    assert list(STOCK["finish_reasons"]) == list(faults.FINISH_REASONS)


@pytest.mark.parametrize("name", faults.RAISES)
def test_wire_error_matches_stock(name: str) -> None:
    ours = to_wire_error(faults.make_exception(name, dynamo_lite))
    assert ordered(ours) == ordered(STOCK["raises"][name])
    stock_frame = items.error_frame("msgpack", STOCK["raises"][name])
    assert items.error_frame("msgpack", ours) == stock_frame


@pytest.mark.parametrize(
    ("vector", "exc"),
    [
        (
            "stock_frame_error_invalid_argument.bin",
            InvalidArgument("ref: invalid argument before first token"),
        ),
        ("stock_frame_error_valueerror.bin", ValueError("ref: plain value error")),
    ],
)
def test_error_frame_is_byte_equal_to_the_stock_capture(vector: str, exc: Exception) -> None:
    stock = (VECTORS / vector).read_bytes()
    assert items.error_frame("msgpack", to_wire_error(exc)) == stock
    # And the capture decodes to the map we build, in the same key order.
    body = msgpack.unpackb(stock[24:])
    assert ordered(body["data"]["error"]) == ordered(to_wire_error(exc))


# --- classification table -----------------------------------------------------------

CLASSIFY_TABLE: list[tuple[BaseException, str, str, str]] = [
    # exception, error_type (the Backend kind unless HTTP-like), class, reason
    (DynamoException("m"), "Unknown", "Internal", "backend.unknown"),
    (Unknown("m"), "Unknown", "Internal", "backend.unknown"),
    (InvalidArgument("m"), "InvalidArgument", "InvalidRequest", "backend.invalid_argument"),
    (CannotConnect("m"), "CannotConnect", "Unavailable", "backend.cannot_connect"),
    (Disconnected("m"), "Disconnected", "Unavailable", "backend.disconnected"),
    (
        ConnectionTimeout("m"),
        "ConnectionTimeout",
        "DeadlineExceeded",
        "backend.connection_timeout",
    ),
    (Cancelled("m"), "Cancelled", "Cancelled", "backend.cancelled"),
    (EngineShutdown("m"), "EngineShutdown", "Unavailable", "backend.engine_shutdown"),
    (StreamIncomplete("m"), "StreamIncomplete", "Unavailable", "backend.stream_incomplete"),
    (ValueError("m"), "InvalidArgument", "InvalidRequest", "backend.invalid_argument"),
    (TypeError("m"), "InvalidArgument", "InvalidRequest", "backend.invalid_argument"),
    (TimeoutError("m"), "ConnectionTimeout", "DeadlineExceeded", "backend.connection_timeout"),
    (ConnectionRefusedError("m"), "CannotConnect", "Unavailable", "backend.cannot_connect"),
    (ConnectionResetError("m"), "Disconnected", "Unavailable", "backend.disconnected"),
    (BrokenPipeError("m"), "Disconnected", "Unavailable", "backend.disconnected"),
    (asyncio.CancelledError("m"), "Cancelled", "Cancelled", "backend.cancelled"),
    (GeneratorExit(), "EngineShutdown", "Unavailable", "backend.engine_shutdown"),
    (OSError("m"), "Unknown", "Internal", "backend.unknown"),
    (RuntimeError("m"), "Unknown", "Internal", "backend.unknown"),
    (HttpError(418, "m"), "InvalidArgument", "InvalidRequest", "request.invalid"),
    (HttpError(422, "m"), "InvalidArgument", "InvalidRequest", "request.invalid"),
    (HttpError(503, "m"), "Unavailable", "Unavailable", "backend.unavailable"),
]


@pytest.mark.parametrize(
    ("exc", "error_type", "cls", "reason"),
    CLASSIFY_TABLE,
    ids=[type(row[0]).__name__ + str(getattr(row[0], "code", "")) for row in CLASSIFY_TABLE],
)
def test_classification_table(exc: BaseException, error_type: str, cls: str, reason: str) -> None:
    wire = to_wire_error(exc)
    http = isinstance(exc, HttpError)
    assert wire["error_type"] == (error_type if http else {"Backend": error_type})
    assert (wire["class"], wire["reason"]) == (cls, reason)
    assert ("public" in wire) == isinstance(exc, InvalidArgument)


def test_builtin_messages_name_their_type_and_dynamo_ones_do_not() -> None:
    assert classify(RuntimeError("boom")).message == "RuntimeError: boom"
    assert classify(KeyError("k")).message == "KeyError: 'k'"
    assert classify(RuntimeError()).message == "RuntimeError: "
    assert classify(Unknown("boom")).message == "boom"
    assert classify(GeneratorExit("ignored")).message == "engine shutting down"


def test_only_invalid_argument_reaches_the_client() -> None:
    assert to_wire_error(InvalidArgument("shown"))["public"] == {
        "type": "message",
        "message": "shown",
    }
    for exc in (ValueError("hidden"), Unknown("hidden"), HttpError(400, "hidden")):
        assert "public" not in to_wire_error(exc)


def test_dynamo_exception_wins_over_http_like_attributes() -> None:
    exc = InvalidArgument("typed")
    exc.code = 503  # type: ignore[attr-defined]
    exc.message = "typed"  # type: ignore[attr-defined]
    assert classify(exc).kind == "InvalidArgument"


class _Attrs(Exception):
    def __init__(self, **attrs: Any) -> None:
        super().__init__("text")
        self.__dict__.update(attrs)


@pytest.mark.parametrize(
    ("attrs", "code"),
    [
        ({"code": 404, "message": "m"}, 404),
        ({"status": 404, "message": "m"}, 404),
        ({"code": True, "message": "m"}, 1),
        ({"code": 65535, "message": "m"}, 65535),
        ({"code": 65536, "message": "m"}, None),
        ({"code": -1, "message": "m"}, None),
        ({"code": "404", "message": "m"}, None),
        ({"code": 404, "message": 7}, None),
        ({"code": 404}, None),
        ({"status": 429, "msg": "m"}, None),
    ],
)
def test_what_makes_an_exception_http_like(attrs: dict[str, Any], code: int | None) -> None:
    assert classify(_Attrs(**attrs)).http_code == code


def test_http_like_message_is_compact_json() -> None:
    wire = to_wire_error(HttpError(429, 'slow "down" ✓'))
    assert wire["message"] == '{"message":"slow \\"down\\" ✓","code":429}'
    assert wire["message"] == wire["diagnostic"]
    assert wire["error_type"] == "ResourceExhausted"


def test_http_status_table() -> None:
    assert http_status_error(400) == ("InvalidArgument", "InvalidRequest", "request.invalid")
    assert http_status_error(451) == http_status_error(400)
    for other in (0, 200, 302, 500, 505, 599, 700):
        assert http_status_error(other) == ("Unknown", "Internal", "runtime.internal")
    for code, (_, cls, reason) in HTTP_STATUS_ERRORS.items():
        assert http_status_error(code)[1:] == (cls, reason)


# --- HttpError ----------------------------------------------------------------------


def test_http_error_attributes() -> None:
    exc = HttpError(418, "short and stout")
    assert (exc.code, exc.message, str(exc)) == (
        418,
        "short and stout",
        "HTTP 418: short and stout",
    )


@pytest.mark.parametrize("code", [True, "400", 400.0, -1, 600, 1000])
def test_http_error_rejects_bad_codes(code: Any) -> None:
    with pytest.raises(ValueError):
        HttpError(code, "m")


def test_http_error_rejects_a_non_string_message() -> None:
    with pytest.raises(ValueError):
        HttpError(400, 42)  # type: ignore[arg-type]


def test_http_error_truncates_long_messages(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dynamo_lite.errors"):
        exc = HttpError(400, "x" * 10_000)
    assert exc.message == "x" * 8189 + "..."
    assert "truncating" in caplog.text
    assert HttpError(400, "y" * 8192).message == "y" * 8192


# --- the 4 KiB cap ------------------------------------------------------------------


def test_truncate_diagnostic() -> None:
    assert truncate_diagnostic("E" * 4096) == "E" * 4096
    assert truncate_diagnostic("E" * 4097) == "E" * 4082 + "...[truncated]"
    # A character split by the cut is dropped whole.
    cut = truncate_diagnostic("L" * 4081 + "é" + "z" * 100)
    assert cut == "L" * 4081 + "...[truncated]"
    assert truncate_diagnostic("\ud800x") == "?x"


def test_public_message_is_capped_too() -> None:
    wire = to_wire_error(InvalidArgument("p" * 5000))
    assert len(wire["public"]["message"].encode()) == 4096
    assert wire["public"]["message"].endswith("...[truncated]")


def test_wire_error_str_uses_the_class_name() -> None:
    assert str(classify(InvalidArgument("bad"))) == "InvalidRequest: bad"
    assert str(classify(RuntimeError("x"))) == "Internal: RuntimeError: x"
    assert str(WireError("InvalidArgument", "m", http_code=404)) == "NotFound: m"


# --- finish reasons (lifecycle.md §7) -------------------------------------------------


def _terminal(reason: str) -> dict[str, Any] | WireError | None:
    v = StreamValidator(strict=False)
    for chunk in ({"token_ids": [72], "index": 0}, {"token_ids": [73], "index": 0}):
        assert v.accept(chunk) == chunk
    out = v.accept({"token_ids": [74], "index": 0, "finish_reason": reason})
    assert v.terminal
    return out


@pytest.mark.parametrize("reason", [*FINISH_REASONS, "error", "error: engine gave up"])
def test_finish_reason_goes_out_as_stock_sends_it(reason: str) -> None:
    out = _terminal(reason)
    stock = STOCK["finish_reasons"][reason]["output"]
    assert out == stock


def test_finish_reason_error_forms() -> None:
    assert _terminal("error") == {
        "token_ids": [74],
        "index": 0,
        "finish_reason": {"error": ERROR_WITHOUT_MESSAGE},
    }
    # The message is taken verbatim after "error: ".
    out = _terminal("error:   padded   ")
    assert isinstance(out, dict) and out["finish_reason"] == {"error": "  padded   "}
    out = _terminal("error: ")
    assert isinstance(out, dict) and out["finish_reason"] == {"error": ""}


@pytest.mark.parametrize(
    "reason",
    ["STOP", "Stop", "tool_calls", "", "canceled", "max_tokens", "error:", "error:x", " stop"],
)
def test_unknown_finish_reason_is_an_internal_error_naming_it(
    reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Stock rejects these as InvalidArgument (client: 400); we say it is the engine's fault.
    assert "error" in STOCK["finish_reasons"].get(reason, {"error": True})
    with caplog.at_level(logging.ERROR, logger="dynamo_lite.stream"):
        out = _terminal(reason)
    assert isinstance(out, WireError)
    wire = out.to_wire()
    assert (wire["class"], wire["reason"]) == ("Internal", "backend.unknown")
    assert f"unknown finish_reason {reason!r}" in wire["diagnostic"]
    assert f"unknown finish_reason {reason!r}" in caplog.text
    with pytest.raises(StreamContractError):
        StreamValidator(strict=True).accept({"token_ids": [], "finish_reason": reason})


def test_absent_terminal_is_an_internal_error() -> None:
    v = StreamValidator(strict=False)
    v.accept({"token_ids": [72], "index": 0})
    err = v.finish()
    assert isinstance(err, WireError) and err.error_class == "Internal"
    assert "without a terminal chunk" in err.message
    assert StreamValidator(strict=False).finish() is not None


def test_is_known_finish_reason_agrees_with_stock() -> None:
    for reason, seen in STOCK["finish_reasons"].items():
        if reason != faults.ABSENT:
            assert is_known_finish_reason(reason) == ("output" in seen), reason
