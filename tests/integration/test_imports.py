"""Imports follow configuration: a worker loads only what its settings use.

The sample worker on the file backend, without a system port, JSONL logging or
KV routing, runs under ``tests/engines/modules_probe.py``, which writes down
``sys.modules`` once the worker has registered and idled briefly. None of the
clients, exporters and event-plane code of other configurations may be there.

``ssl`` is not on the list: ``asyncio`` (and uvloop) import it themselves, so
every asyncio program has it loaded before dynamo_lite is imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.lite import REPO, SAMPLE_ENGINE, wait_until, worker_argv, worker_env

PROBE = REPO / "tests" / "engines" / "modules_probe.py"

#: Third-party clients and exporters of other configurations.
THIRD_PARTY = (
    "httpx",  # etcd (JSON gateway)
    "httpcore",
    "grpc",  # etcd (gRPC client)
    "etcd3aio",
    "nats",  # NATS request / event plane
    "prometheus_client",  # first /metrics scrape on the system port
    "h11",  # first system-server connection
    "structlog",  # DYN_LOGGING_JSONL
    "opentelemetry",  # OTEL_EXPORT_ENABLED
    "zmq",
    "msgpack",  # the first request's body
)

#: Standard-library modules nothing on this path needs.
STDLIB = (
    "tempfile",  # default DYN_FILE_KV, checksum cache writes, multiproc dir
    "secrets",  # random ids come from os.urandom
    "hmac",
    "multiprocessing",
    "encodings.idna",  # a literal bind host is not resolved
    "datetime",  # log times are printed with ``time``
    "random",  # span ids come from os.urandom
)

#: dynamo_lite modules of other configurations or first used later.
OWN = (
    "dynamo_lite.discovery.etcd",
    "dynamo_lite.discovery.etcd_base",
    "dynamo_lite.discovery.etcd_grpc",
    "dynamo_lite.discovery.tls",
    "dynamo_lite.kv.channels",
    "dynamo_lite.kv.publisher",
    "dynamo_lite.kv.query",
    "dynamo_lite.kv.relay",
    "dynamo_lite.protocol.kv_events",
    "dynamo_lite.transport.zmq_plane",
    "dynamo_lite.protocol.zmtp",
    "dynamo_lite.client",
    "dynamo_lite.endpoint_client",
    "dynamo_lite.model_cards",
    "dynamo_lite.compat",
    "dynamo_lite.multimodal",
    "dynamo_lite.conformance",
    "dynamo_lite.otel_export",  # OTEL_EXPORT_ENABLED
    "dynamo_lite.spanlog",  # DYN_LOGGING_SPAN_EVENTS with JSONL logs
)


def _loaded(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def test_file_backend_worker_imports_only_what_it_uses(
    tiny_model: Path, file_kv: Path, tmp_path: Path, spawn: Any
) -> None:
    out = tmp_path / "modules.txt"
    argv = worker_argv(tiny_model, script=SAMPLE_ENGINE, extra=["--disable-kv-routing"])
    argv[1:1] = [str(PROBE), str(out)]
    env = worker_env(file_kv=file_kv, MODULES_PROBE_IDLE="0.5")
    for name in ("DYN_SYSTEM_PORT", "DYN_LOGGING_JSONL", "OTEL_EXPORT_ENABLED"):
        env.pop(name, None)
    worker = spawn(argv, env=env, name="lite-imports")
    wait_until(
        lambda: out.exists() or not worker.running,
        timeout=60,
        what="the module list",
    )
    assert out.exists(), worker.describe_log()
    modules = set(out.read_text().split())
    # The probe saw a serving worker on the file backend.
    assert {"dynamo_lite.worker", "dynamo_lite.discovery.file"} <= modules
    assert _loaded(modules, THIRD_PARTY) == []
    assert _loaded(modules, STDLIB) == []
    assert _loaded(modules, OWN) == []


@pytest.mark.parametrize("module", ["dynamo_lite", "dynamo_lite.protocol.codec"])
def test_importing_the_package_loads_no_client(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {THIRD_PARTY!r}]\n"
        "bad += [m for m in sys.modules if m in ('tempfile', 'secrets')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
