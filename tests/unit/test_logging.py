"""DYN_LOG parsing and the stock JSONL / readable formats (lifecycle.md §10)."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import re
import time
import warnings
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_lite import logsetup, spanlog, telemetry
from dynamo_lite.context import Context
from dynamo_lite.lifecycle import Lifecycle, Reason
from dynamo_lite.logsetup import TRACE, configure_logging, parse_dyn_log


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    configure_logging({"DYN_LOG": "info"}, io.StringIO())
    for h in list(root.handlers):
        if getattr(h, "_dynamo_lite", False):
            root.removeHandler(h)
    structlog.reset_defaults()


@pytest.mark.parametrize(
    ("spec", "default", "targets", "invalid"),
    [
        (None, logging.INFO, {}, []),
        ("debug", logging.DEBUG, {}, []),
        ("WARN", logging.WARNING, {}, []),
        ("warn,dynamo_lite.endpoint=debug", logging.WARNING, {"dynamo_lite.endpoint": 10}, []),
        ("a::b=error", logging.INFO, {"a.b": logging.ERROR}, []),
        ("my_engine", logging.INFO, {"my_engine": TRACE}, []),
        ("4,x=1", logging.DEBUG, {"x": logging.ERROR}, []),
        ("off", logging.CRITICAL + 10, {}, []),
        (
            "warn,dynamo_backend_common::worker=debug,dynamo_runtime=trace",
            logging.WARNING,
            {"dynamo_lite.worker": logging.DEBUG, "dynamo_lite": TRACE},
            [],
        ),
        (
            "info,x=loud,y[span]=debug,=debug",
            logging.INFO,
            {},
            ["x=loud", "y[span]=debug", "=debug"],
        ),
    ],
)
def test_parse_dyn_log(
    spec: str | None, default: int, targets: dict[str, int], invalid: list[str]
) -> None:
    assert parse_dyn_log(spec) == (default, targets, invalid)


def emit_sample(env: dict[str, str]) -> list[str]:
    buf = io.StringIO()
    configure_logging(env, buf)
    logging.getLogger("dynamo_lite.worker").info("Serving %s on %s", "m", "ns.c.generate")
    logging.getLogger("dynamo_lite.endpoint").debug("per request", extra={"request_id": "r1"})
    Lifecycle().handle(Reason.RUN)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("dynamo_lite.tasks").exception("task failed")
    structlog.get_logger("engine").warning("engine said", step=3)
    return buf.getvalue().splitlines()


def test_jsonl_has_the_stock_keys_in_order() -> None:
    lines = [json.loads(x) for x in emit_sample({"DYN_LOGGING_JSONL": "1", "DYN_LOG": "debug"})]
    for rec in lines:
        assert list(rec)[:6] == ["time", "level", "file", "line", "target", "message"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", rec["time"])
        assert isinstance(rec["line"], int)
    serving, request, transition, failure, engine = lines
    assert serving["level"] == "INFO" and serving["target"] == "dynamo_lite.worker"
    assert serving["message"] == "Serving m on ns.c.generate"
    assert serving["file"].endswith("test_logging.py")
    assert request["level"] == "DEBUG" and request["request_id"] == "r1"
    assert transition["target"] == "dynamo_lite.lifecycle"
    assert {k: transition[k] for k in ("from_state", "to_state", "reason")} == {
        "from_state": "created",
        "to_state": "connecting",
        "reason": "run",
    }
    assert isinstance(transition["elapsed"], float)
    assert failure["level"] == "ERROR" and "ValueError: boom" in failure["exception"]
    assert engine["level"] == "WARN" and engine["target"] == "engine" and engine["step"] == 3
    # Fields after the fixed keys are sorted, as stock's BTreeMap writes them.
    assert list(transition)[6:] == sorted(list(transition)[6:])


def test_console_format_alias_and_filters() -> None:
    lines = emit_sample({"DYN_LOGGING_CONSOLE_FORMAT": "jsonl", "DYN_LOG": "error,engine=warn"})
    levels = [json.loads(x)["level"] for x in lines]
    assert levels == ["ERROR", "WARN"]


def test_readable_lines() -> None:
    lines = emit_sample({"DYN_LOG": "info"})
    assert re.match(r"\S+Z INFO  worker: Serving m on ns\.c\.generate$", lines[0])
    assert "lifecycle  created → connecting  (run, +" in lines[1]
    assert "ERROR tasks: task failed" in lines[2]
    assert any("ValueError: boom" in x for x in lines)


def test_reconfiguring_resets_target_levels() -> None:
    configure_logging({"DYN_LOG": "info,dynamo_lite.endpoint=debug"}, io.StringIO())
    assert logging.getLogger("dynamo_lite.endpoint").level == logging.DEBUG
    configure_logging({"DYN_LOG": "info"}, io.StringIO())
    assert logging.getLogger("dynamo_lite.endpoint").level == logging.NOTSET
    assert logging.getLogger("httpx").level == logging.WARNING
    root = logging.getLogger()
    assert sum(getattr(h, "_dynamo_lite", False) for h in root.handlers) == 1


def test_local_time_and_invalid_directive_warning() -> None:
    buf = io.StringIO()
    configure_logging(
        {"DYN_LOGGING_JSONL": "1", "DYN_LOG_USE_LOCAL_TZ": "1", "DYN_LOG": "x=?"}, buf
    )
    (rec,) = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert rec["level"] == "WARN" and "x=?" in rec["message"]
    assert re.search(r"[+-]\d\d:\d\d$", rec["time"])


def test_logging_config_file_as_stock_reads_it(tmp_path: Path) -> None:
    """Stock 1.6.1, side by side: the file's ``log_level`` is the default unless
    DYN_LOG sets one; its ``log_filters`` apply on top of DYN_LOG either way."""
    cfg = tmp_path / "logging.toml"
    cfg.write_text(
        'log_level = "warn"\n\n[log_filters]\n"dynamo_backend_common::worker" = "debug"\n'
        '"dynamo_lite.canary" = "nonsense"\n'
    )
    root, worker = logging.getLogger(), logging.getLogger("dynamo_lite.worker")
    buf = io.StringIO()
    configure_logging({"DYN_LOGGING_CONFIG_PATH": str(cfg)}, buf)
    assert root.level == logging.WARNING and worker.level == logging.DEBUG
    assert "log_filters.dynamo_lite.canary = 'nonsense'" in buf.getvalue()
    configure_logging({"DYN_LOGGING_CONFIG_PATH": str(cfg), "DYN_LOG": "error"}, io.StringIO())
    assert root.level == logging.ERROR and worker.level == logging.DEBUG
    configure_logging({"DYN_LOGGING_CONFIG_PATH": str(tmp_path / "absent.toml")}, io.StringIO())
    assert root.level == logging.INFO and worker.level == logging.NOTSET
    configure_logging({"DYN_LOG": "info"}, io.StringIO())


# --- DYN_LOGGING_SPAN_EVENTS: span records against the stock capture -----------------------

STOCK_SPANS = Path(__file__).parents[1] / "vectors" / "logging" / "stock_span_events.jsonl"
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def _span_records(text: str) -> list[dict[str, Any]]:
    recs = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    return [r for r in recs if r["message"] in ("SPAN_FIRST_ENTRY", "SPAN_CLOSED")]


def _by_case(recs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """One record per (case, span, message); the case is read off the handle_payload span:
    ``plain`` (no traceparent), ``traced`` (traceparent + x-request-id), ``dropped``."""
    dropped = {r["request_id"] for r in recs if r.get("finish_reason") == "Dropped"}
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in recs:
        case = (
            "dropped"
            if rec["request_id"] in dropped
            else "traced"
            if "x_request_id" in rec
            else "plain"
        )
        out[(case, rec["span_name"], rec["message"])] = rec
    return out


def _serve_three_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> str:
    """The capture's three requests through an in-process worker; returns the log.

    As there: the first without ``traceparent``, the second with ``traceparent`` and
    ``x-request-id``, the third with ``traceparent`` and dropped by the client."""
    from dynamo_lite.protocol import request_plane as rp
    from dynamo_lite.tiny_model import write_tiny_model
    from tests.support.inproc import ScriptedEngine, running

    buf = io.StringIO()
    configure_logging(env, buf)
    extra: dict[str, str] = {}
    real_encode = rp.encode_frame

    def encode(path: str, headers: dict[str, str], payload: bytes) -> bytes:
        return real_encode(path, {**headers, **extra}, payload)

    monkeypatch.setattr("dynamo_lite.client.rp.encode_frame", encode)

    async def go() -> None:
        async with running(ScriptedEngine(), write_tiny_model(tmp_path / "m")) as h:
            await h.generate(model="m")
            extra.update({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "x-request-id": "xrid-1"})
            await h.generate(model="m")
            del extra["x-request-id"]  # the stock capture's dropped request had none
            stream = await h.client.generate(
                {"token_ids": [1, 2], "model": "m", "stop_conditions": {"max_tokens": 10_000}}
            )
            async for _ in stream:
                await stream.cancel()
                break
            async with asyncio.timeout(20):  # only to catch a hang
                while len(_span_records(buf.getvalue())) < 12:
                    await asyncio.sleep(0.01)

    asyncio.run(go())
    return buf.getvalue()


def test_span_events_match_the_stock_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stock = _by_case(_span_records(STOCK_SPANS.read_text()))
    assert len(stock) == 12  # 3 requests x 2 spans x (entry, close)
    # DYN_LOG=warn: stock writes the span records whatever the level.
    env = {"DYN_LOGGING_JSONL": "1", "DYN_LOGGING_SPAN_EVENTS": "1", "DYN_LOG": "warn"}
    ours = _by_case(_span_records(_serve_three_requests(tmp_path, monkeypatch, env)))
    assert ours.keys() == stock.keys()
    for key, want in stock.items():
        got = ours[key]
        assert list(got)[:6] == ["time", "level", "file", "line", "target", "message"]
        assert list(got)[6:] == sorted(list(got)[6:])
        assert set(got) == set(want), key
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}, key
        for rec in (got, want):
            assert (rec["level"], rec["target"]) == ("INFO", "request_span")
            assert re.fullmatch(r"[0-9a-f]{16}", rec["span_id"])
            assert re.fullmatch(r"[0-9a-f]{32}", rec["trace_id"])
            if rec["message"] == "SPAN_CLOSED":
                busy, idle = rec["time.busy_us"], rec["time.idle_us"]
                assert rec["time.duration_us"] == busy + idle
                # Whole microseconds from tracing's three-significant-digit display.
                assert spanlog.span_micros(busy * 1000) == busy
                assert spanlog.span_micros(idle * 1000) == idle
    for recs in (ours, stock):
        for case in ("plain", "traced", "dropped"):
            handle = recs[(case, "handle_payload", "SPAN_FIRST_ENTRY")]
            engine = recs[(case, "engine.generate", "SPAN_FIRST_ENTRY")]
            assert engine["parent_id"] == handle["span_id"]
            assert engine["trace_id"] == handle["trace_id"]
            assert handle["otel.kind"] == "server" and engine["disagg_role"] == "agg"
            for message in ("SPAN_FIRST_ENTRY", "SPAN_CLOSED"):
                for span in ("handle_payload", "engine.generate"):
                    assert (
                        recs[(case, span, message)]["span_id"]
                        == recs[(case, span, "SPAN_FIRST_ENTRY")]["span_id"]
                    )
        closed = recs[("dropped", "engine.generate", "SPAN_CLOSED")]
        assert (closed["cancelled"], closed["finish_reason"]) == ("true", "Dropped")
        assert recs[("traced", "handle_payload", "SPAN_FIRST_ENTRY")]["trace_flags"] == "01"
    traced = ours[("traced", "handle_payload", "SPAN_FIRST_ENTRY")]
    assert (traced["trace_id"], traced["parent_id"]) == (TRACE_ID, PARENT_ID)
    assert traced["x_request_id"] == "xrid-1"
    plain = ours[("plain", "engine.generate", "SPAN_FIRST_ENTRY")]
    assert (plain["model"], plain["input_tokens"]) == ("m", "3")


def test_span_micros_follows_the_stock_arithmetic() -> None:
    cases = {
        377_400: 377,  # "377µs"
        2_064_000: 2060,  # "2.06ms"
        53_421_000: 53400,  # "53.4ms"
        22_049: 22,  # "22.0µs"
        850: 0,  # "850ns"
        2_010_000: 2009,  # "2.01ms": 2.01 * 1000.0 is 2009.9999999999998 in Rust too
        1_234_567_891: 1_230_000,  # "1.23s"
        123_456_000_000: 123_000_000,  # "123s"
    }
    assert {ns: spanlog.span_micros(ns) for ns in cases} == cases


@pytest.mark.parametrize(
    "env",
    [
        {"DYN_LOGGING_JSONL": "1", "DYN_LOG": "debug"},
        {"DYN_LOGGING_JSONL": "1", "DYN_LOGGING_SPAN_EVENTS": "0"},
        {"DYN_LOGGING_SPAN_EVENTS": "1", "DYN_LOG": "debug"},  # readable logs: ignored
    ],
    ids=["unset", "zero", "readable"],
)
def test_no_span_events_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    from dynamo_lite.tiny_model import write_tiny_model
    from tests.support.inproc import ScriptedEngine, running

    buf = io.StringIO()
    configure_logging(env, buf)
    assert telemetry.span_events is False

    async def go() -> None:
        async with running(ScriptedEngine(), write_tiny_model(tmp_path / "m")) as h:
            await h.generate(model="m")

    asyncio.run(go())
    assert "SPAN_" not in buf.getvalue()
    assert "request_span" not in buf.getvalue()


def test_span_of_a_failing_engine_closes_without_drop_fields(tmp_path: Path) -> None:
    """Stock, side by side (an engine raising after its first chunk): the
    ``engine.generate`` close has the entry fields only, no ``cancelled``."""
    from dynamo_lite.client import RemoteError
    from dynamo_lite.tiny_model import write_tiny_model
    from tests.support.inproc import ScriptedEngine, running

    async def boom(request: Any, ctx: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"token_ids": [1], "index": 0}
        raise ValueError("boom in engine")

    buf = io.StringIO()
    configure_logging({"DYN_LOGGING_JSONL": "1", "DYN_LOGGING_SPAN_EVENTS": "1"}, buf)

    async def go() -> None:
        engine = ScriptedEngine({"boom": boom})
        async with running(engine, write_tiny_model(tmp_path / "m")) as h:
            with pytest.raises(RemoteError, match="boom in engine"):
                await h.generate(model="m", mode="boom")

    asyncio.run(go())
    closed = [r for r in _span_records(buf.getvalue()) if r["message"] == "SPAN_CLOSED"]
    assert [r["span_name"] for r in closed] == ["engine.generate", "handle_payload"]
    assert "cancelled" not in closed[0] and "finish_reason" not in closed[0]


def test_a_request_cancelled_before_its_first_step_leaves_no_coroutine_behind() -> None:
    """The span wrapper makes the request's coroutine itself: a task cancelled
    before it ever runs must not leave an inner coroutine never awaited."""
    made: list[str] = []

    async def serve() -> None:
        made.append("ran")

    def factory() -> Coroutine[Any, Any, None]:
        made.append("made")
        return serve()

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(
            spanlog.handle_payload(factory, Context("r-1"), {"endpoint": "generate"})
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        asyncio.run(main())
        gc.collect()
    assert made == []


@settings(max_examples=500, deadline=None)
@given(
    created=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns"]),
)
def test_log_timestamps_print_as_datetime_would(created: float, zone: str) -> None:
    """The log time is formatted with ``time`` (no ``datetime`` import in a
    worker); it must read exactly as ``datetime`` prints the same instant."""
    import datetime as dt

    saved = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        utc = dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        local = dt.datetime.fromtimestamp(created).astimezone().isoformat(timespec="microseconds")
        assert logsetup._timestamp(created, False) == utc
        assert logsetup._timestamp(created, True) == local
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()
