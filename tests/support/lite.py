"""Launching dynamo_lite workers as real processes for tests."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.stock import loopback_env

REPO = Path(__file__).resolve().parents[2]
SAMPLE_ENGINE = REPO / "examples" / "sample_engine.py"
PROBE_ENGINE = REPO / "tests" / "engines" / "probe_engine.py"


def worker_argv(
    model_dir: Path,
    *,
    discovery: str = "file",
    script: Path = PROBE_ENGINE,
    extra: Sequence[str] = (),
    delay: float = 0.01,
) -> list[str]:
    return [
        sys.executable, str(script),
        "--model-name", str(model_dir),
        "--namespace", "dynamo",
        "--discovery-backend", discovery,
        "--delay", str(delay),
        *extra,
    ]  # fmt: skip


def worker_env(
    *,
    file_kv: Path | None = None,
    etcd_endpoint: str | None = None,
    events: Path | None = None,
    **extra: str | os.PathLike[str] | int | None,
) -> dict[str, str]:
    env: dict[str, Any] = {
        "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "0",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    if file_kv is not None:
        env["DYN_FILE_KV"] = str(file_kv)
    if etcd_endpoint is not None:
        env["ETCD_ENDPOINTS"] = etcd_endpoint
    if events is not None:
        env["PROBE_EVENTS"] = str(events)
    env.update(extra)
    return loopback_env(**env)


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def events_of(path: Path, kind: str, **match: Any) -> list[Mapping[str, Any]]:
    return [
        e
        for e in read_events(path)
        if e["event"] == kind and all(e.get(k) == v for k, v in match.items())
    ]
