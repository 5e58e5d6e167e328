"""``response_plane``: stock 1.6.1 accepts ``tcp`` and ``quic`` and raises at
startup for anything else; dynamo_lite speaks only TCP, so ``quic`` is a clear,
typed startup error too (before anything is bound or registered)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dynamo_lite
from dynamo_lite import RuntimeSettings, UnsupportedResponsePlane, WorkerConfig
from dynamo_lite.discovery import FileStore
from dynamo_lite.tiny_model import write_tiny_model
from tests.support.inproc import ScriptedEngine
from tests.support.lite import worker_env

SCRIPT = """
import sys
from dynamo.common.backend.run import run
from dynamo.common.backend.sample_engine import SampleLLMEngine
run(SampleLLMEngine, ["--model-name", sys.argv[1], "--discovery-backend", "file",
                      "--response-plane", sys.argv[2]])
"""
BOGUS = """
import asyncio, sys
from dynamo.common.backend.worker import Worker, WorkerConfig
from dynamo.common.backend.sample_engine import SampleLLMEngine
cfg = WorkerConfig(namespace="dynamo", model_name=sys.argv[1], discovery_backend="file",
                   response_plane="udp")
sys.exit(asyncio.run(Worker(SampleLLMEngine(), cfg).run()) or 0)
"""


@pytest.mark.anyio
@pytest.mark.parametrize("plane", ["quic", "udp", "TCP"])
async def test_an_unsupported_response_plane_is_a_typed_startup_error(
    plane: str, tmp_path: Path
) -> None:
    model = write_tiny_model(tmp_path / "tiny")
    engine = ScriptedEngine()
    engine.model = str(model)
    cfg = WorkerConfig(
        namespace="dynamo", model_name=str(model), discovery_backend="file", response_plane=plane
    )
    root = tmp_path / "kv"
    with pytest.raises(UnsupportedResponsePlane) as info:
        async with dynamo_lite.serve(
            engine, cfg, settings=RuntimeSettings(tcp_host="127.0.0.1"), store=FileStore(root)
        ):
            pytest.fail("the block must not run")
    assert isinstance(info.value, ValueError)  # what stock raises for an unknown plane
    assert isinstance(info.value, dynamo_lite.StartupError)
    expected = "not supported by dynamo_lite" if plane == "quic" else "must be 'tcp' or 'quic'"
    assert expected in str(info.value)
    assert engine.calls == []  # nothing started
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))


def _run(argv: list[str], tmp_path: Path, **env: Any) -> subprocess.CompletedProcess[str]:
    kv = tmp_path / "kv"
    kv.mkdir(exist_ok=True)
    return subprocess.run(
        argv, env=worker_env(file_kv=kv, **env), capture_output=True, text=True, timeout=60
    )


@pytest.mark.interop
def test_an_unknown_plane_fails_startup_on_both_runtimes(
    tmp_path: Path, tiny_model: Path, stock_python_path: Path
) -> None:
    bogus = tmp_path / "bogus_main.py"
    bogus.write_text(BOGUS)
    stock = _run([str(stock_python_path), str(bogus), str(tiny_model)], tmp_path)
    lite = _run([sys.executable, "-m", "dynamo_lite.compat", str(bogus), str(tiny_model)], tmp_path)
    for proc in (stock, lite):
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "response_plane must be 'tcp' or 'quic'" in proc.stderr, proc.stderr[-3000:]
    # quic: stock serves it; dynamo_lite refuses at startup with status 1 and says why.
    script = tmp_path / "quic_main.py"
    script.write_text(SCRIPT)
    lite = _run([sys.executable, "-m", "dynamo_lite.compat", str(script), str(tiny_model), "quic"],
                tmp_path)  # fmt: skip
    assert lite.returncode == 1, lite.stderr[-3000:]
    assert "response_plane 'quic' is not supported by dynamo_lite" in lite.stderr
