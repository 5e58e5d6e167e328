"""The promise to users without compiled wheels, kept by a test.

A worker with msgpack forced onto its pure-Python fallback, the pure-Python
BLAKE3 and no uvloop serves the stock frontend; afterwards it reports every
extension module it had loaded, and none may come from outside the standard
library.
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.lite import events_of, worker_argv, worker_env

pytestmark = pytest.mark.interop


def _stdlib_dirs() -> tuple[str, ...]:
    # The base interpreter's library, not the venv's (whose platstdlib
    # contains site-packages).
    base = {
        "base": sys.base_prefix,
        "platbase": sys.base_exec_prefix,
        "installed_base": sys.base_prefix,
        "installed_platbase": sys.base_exec_prefix,
    }
    return tuple(
        str(Path(sysconfig.get_path(name, vars=base)).resolve()) + os.sep
        for name in ("stdlib", "platstdlib")
    )


def test_pure_python_worker_serves_the_stock_frontend(
    tiny_model: Path, file_kv: Path, tmp_path: Path, spawn: Any, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv)
    events = tmp_path / "events.jsonl"
    env = worker_env(
        file_kv=file_kv,
        events=events,
        MSGPACK_PUREPYTHON="1",
        DYN_LITE_PURE_BLAKE3="1",
        DYN_LITE_PURE_XXH3="1",
        DYN_LITE_UVLOOP="0",
        DYN_LITE_CHECKSUM_CACHE="0",
        PROBE_REPORT_MODULES="1",
    )
    worker = spawn(worker_argv(tiny_model), env=env, name="lite-pure")
    fe.wait_model(str(tiny_model), timeout=30)
    for stream in (False, True):
        r = httpx.post(
            fe.url("/v1/chat/completions"),
            timeout=30,
            json={
                "model": str(tiny_model),
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 4,
                "stream": stream,
            },
        )
        assert r.status_code == 200, r.text
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    (report,) = events_of(events, "modules")
    stdlib = _stdlib_dirs()
    foreign = [
        entry
        for entry in report["modules"]
        if not str(Path(entry.split("=", 1)[1]).resolve()).startswith(stdlib)
    ]
    assert foreign == [], f"compiled third-party modules were loaded: {foreign}"
    assert report["modules"], "the probe reported no extension modules at all"
    loaded = {entry.split("=", 1)[0] for entry in report["modules"]}
    assert not any(name.startswith(("msgpack", "blake3", "uvloop")) for name in loaded)
