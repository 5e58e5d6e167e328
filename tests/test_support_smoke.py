"""Smoke tests for the shared test infrastructure (tests/support, tests/conftest.py)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from dynamo_lite.tiny_model import (
    CHAT_TEMPLATE,
    EOS_TOKEN_ID,
    FILE_NAMES,
    decode,
    encode,
    write_tiny_model,
)
from tests.conftest import Spawn, StockWorkerFactory
from tests.support.extras import require_module
from tests.support.ports import free_port, free_ports, port_open, wait_port
from tests.support.services import EtcdServer, ManagedProcess, NatsServer
from tests.support.stock import StockFrontend, loopback_env


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _etcd_put(endpoint: str, key: str, value: str) -> None:
    resp = httpx.post(f"{endpoint}/v3/kv/put", json={"key": _b64(key), "value": _b64(value)})
    resp.raise_for_status()


def _etcd_get(endpoint: str, key: str) -> str | None:
    resp = httpx.post(f"{endpoint}/v3/kv/range", json={"key": _b64(key)})
    resp.raise_for_status()
    kvs = resp.json().get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


# -- ports / processes -----------------------------------------------------------


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(4)
    assert len(set(ports)) == 4
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_managed_process_stop_and_logs(spawn: Spawn) -> None:
    port = free_port()
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "print('listening', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = spawn([sys.executable, "-c", code, str(port)], name="sleeper")
    wait_port("127.0.0.1", port, timeout=10, alive=lambda: proc.running)
    proc.wait_for_log("listening", timeout=5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert not port_open("127.0.0.1", port)
    assert "listening" in proc.log_text()


def test_managed_process_escalates_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    with ManagedProcess(
        [sys.executable, "-c", code], log_path=tmp_path / "stubborn.log", stop_timeout=0.5
    ) as proc:
        proc.wait_for_log("ready", timeout=10)
        assert proc.stop() == -signal.SIGKILL
    assert not proc.running


# -- etcd --------------------------------------------------------------------------


@pytest.mark.services
def test_etcd_put_get_and_restart(etcd: EtcdServer) -> None:
    assert etcd.endpoint.startswith("http://127.0.0.1:")
    assert etcd.status()["version"].startswith("3.")
    _etcd_put(etcd.endpoint, "/smoke/key", "value-1")
    assert _etcd_get(etcd.endpoint, "/smoke/key") == "value-1"

    endpoint = etcd.endpoint
    etcd.restart(keep_data=True)
    assert etcd.endpoint == endpoint
    assert _etcd_get(etcd.endpoint, "/smoke/key") == "value-1"

    # A crash loses nothing that was acknowledged.
    _etcd_put(etcd.endpoint, "/smoke/other", "value-2")
    etcd.kill()
    assert not port_open("127.0.0.1", etcd.client_port)
    etcd.start()
    assert _etcd_get(etcd.endpoint, "/smoke/other") == "value-2"

    etcd.restart(keep_data=False)
    assert etcd.endpoint == endpoint
    assert _etcd_get(etcd.endpoint, "/smoke/key") is None


@pytest.mark.services
def test_etcd_context_manager_cleans_up(tmp_path: Path) -> None:
    with EtcdServer() as server:
        workdir, port = server.workdir, server.client_port
        assert port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", port)
    assert not workdir.exists()


# -- nats --------------------------------------------------------------------------


@pytest.mark.services
def test_nats_accepts_connections(nats: NatsServer) -> None:
    assert nats.url.startswith("nats://127.0.0.1:")
    with socket.create_connection(("127.0.0.1", nats.port), timeout=5) as sock:
        banner = sock.makefile("rb").readline()
    assert banner.startswith(b"INFO ")
    assert json.loads(banner[5:])["jetstream"] is True

    port = nats.port
    nats.restart()
    assert nats.port == port and port_open("127.0.0.1", port)


@pytest.mark.services
@pytest.mark.skipif(importlib.util.find_spec("nats") is None, reason="nats-py not installed")
@pytest.mark.anyio
async def test_nats_publish_subscribe(nats: NatsServer) -> None:
    import nats as nats_py

    nc = await nats_py.connect(nats.url, connect_timeout=5, allow_reconnect=False)
    try:
        sub = await nc.subscribe("smoke.subject")
        await nc.publish("smoke.subject", b"ping")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"ping"
    finally:
        await nc.close()


# -- tiny model --------------------------------------------------------------------


def test_tiny_model_files_and_round_trip(tiny_model: Path) -> None:
    for name in FILE_NAMES:
        assert (tiny_model / name).is_file(), name
    tok_cfg = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHAT_TEMPLATE
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    config = json.loads((tiny_model / "config.json").read_text())
    # The frontend loads tokenizer.json with Hugging Face tokenizers: check that it does.
    tokenizers = require_module("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    assert config["vocab_size"] == tokenizer.get_vocab_size()
    assert tokenizer.token_to_id("<|endoftext|>") == EOS_TOKEN_ID == config["eos_token_id"]
    assert tokenizer.token_to_id("<|im_start|>") == 1
    assert tokenizer.token_to_id("<|im_end|>") == 2

    ids = encode(tiny_model, "hello world")
    assert ids == tokenizer.encode("hello world", add_special_tokens=False).ids
    assert len(ids) < len("hello world")  # the merges apply
    assert decode(tiny_model, ids) == "hello world"
    # Arbitrary bytes survive the byte-level round trip, and both decoders agree.
    text = "Grüße, 世界!"
    hf_ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert decode(tiny_model, hf_ids) == tokenizer.decode(hf_ids) == text
    assert decode(tiny_model, encode(tiny_model, text)) == text
    every = list(range(config["vocab_size"]))
    assert decode(tiny_model, every) == tokenizer.decode(every, skip_special_tokens=True)


def test_tiny_model_is_deterministic(tiny_model: Path, tmp_path: Path) -> None:
    again = write_tiny_model(tmp_path / "again")
    for name in FILE_NAMES:
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes(), name


# -- stock Dynamo --------------------------------------------------------------------


def test_loopback_env() -> None:
    env = loopback_env(NATS_SERVER=None, EXTRA=1)
    assert env["DYN_TCP_RPC_HOST"] == "127.0.0.1"
    assert env["DYN_SYSTEM_HOST"] == "127.0.0.1"
    assert "NATS_SERVER" not in env
    assert env["EXTRA"] == "1"
    assert env["HOME"] != os.environ.get("HOME")
    assert Path(env["HOME"]).is_dir()


@pytest.mark.interop
def test_stock_frontend_file_backend_empty(stock_frontend_file: StockFrontend) -> None:
    resp = httpx.get(stock_frontend_file.url("/v1/models"), timeout=5)
    assert resp.status_code == 200
    assert resp.json()["data"] == []
    assert stock_frontend_file.models() == []


@pytest.mark.interop
def test_stock_sample_worker_serves_chat(
    stock_frontend_file: StockFrontend,
    stock_sample_worker: StockWorkerFactory,
    file_kv: Path,
    tiny_model: Path,
) -> None:
    worker = stock_sample_worker(
        tiny_model,
        discovery="file",
        file_kv=file_kv,
        frontend=stock_frontend_file,
        # The default 5 s pause between unregistering and draining only slows this test.
        env={"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "0"},
    )
    assert worker.model_name in stock_frontend_file.models()

    resp = httpx.post(
        stock_frontend_file.url("/v1/chat/completions"),
        json={
            "model": worker.model_name,
            "messages": [{"role": "user", "content": "hello world"}],
            "max_tokens": 4,
        },
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4

    # SIGTERM unregisters the model from the frontend, then the worker exits cleanly.
    worker.send_signal(signal.SIGTERM)
    stock_frontend_file.wait_model(worker.model_name, present=False, timeout=30)
    assert worker.wait(timeout=30) == 0
    assert "SIGTERM received" in worker.log_text()
