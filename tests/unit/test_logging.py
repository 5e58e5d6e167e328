"""DYN_LOG parsing and the stock JSONL / readable formats (lifecycle.md §10)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

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
