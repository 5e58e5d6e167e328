"""TLS and mutual TLS on both TCP planes, interoperating with the stock frontend."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dynamo_lite.client import Client, ClientError
from dynamo_lite.discovery import FileStore
from dynamo_lite.transport.tls import TcpTls
from tests.support.lite import wait_until, worker_argv, worker_env
from tests.support.services import make_test_pki


def tls_env(pki: Any) -> dict[str, str]:
    # One certificate good for both roles (serverAuth + clientAuth, IP SAN 127.0.0.1).
    return {
        "DYN_TCP_TLS_CERT_PATH": str(pki.server_cert),
        "DYN_TCP_TLS_KEY_PATH": str(pki.server_key),
        "DYN_TCP_TLS_CLIENT_CA_CERT_PATH": str(pki.ca),
        "DYN_TCP_TLS_CA_CERT_PATH": str(pki.ca),
        "DYN_TCP_TLS_CLIENT_CERT_PATH": str(pki.server_cert),
        "DYN_TCP_TLS_CLIENT_KEY_PATH": str(pki.server_key),
    }


def as_tls(env: dict[str, str]) -> TcpTls:
    return TcpTls.from_env(env)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_test_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.mark.interop
def test_stock_frontend_over_mutual_tls(
    pki: Any, tiny_model: Path, file_kv: Path, spawn: Any, stock_frontend: Any
) -> None:
    env = tls_env(pki)
    fe = stock_frontend(discovery="file", file_kv=file_kv, env=env)
    proc = spawn(worker_argv(tiny_model), env=worker_env(file_kv=file_kv, **env), name="lite-tls")
    model = str(tiny_model)
    fe.wait_model(model, timeout=30)
    for stream in (False, True):
        r = httpx.post(
            fe.url("/v1/chat/completions"),
            timeout=30,
            json={
                "model": model,
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 4,
                "stream": stream,
            },
        )
        assert r.status_code == 200, r.text
        assert '"finish_reason":"length"' in r.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def _request_via(client_tls: TcpTls, kv: Path) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with Client(
            "dynamo",
            "sample",
            "generate",
            store=FileStore(kv),
            tls=client_tls,
            ack_timeout=3,
            item_timeout=5,
        ) as client:
            await client.wait_for_instances(20)
            stream = await client.generate({"token_ids": [1], "stop_conditions": {"max_tokens": 2}})
            return await stream.collect()

    return anyio.run(go)


def test_plaintext_and_wrong_certificates_are_refused(
    pki: Any, other_pki: Any, tiny_model: Path, file_kv: Path, spawn: Any
) -> None:
    env = tls_env(pki)
    proc = spawn(worker_argv(tiny_model), env=worker_env(file_kv=file_kv, **env), name="lite-tls")
    wait_until(lambda: any((file_kv / "v1" / "instances").glob("*")), timeout=20, what="worker")
    # The right certificates work with the pure-Python client too.
    outs = _request_via(as_tls(env), file_kv)
    assert outs[-1]["finish_reason"] == "length"
    # A plaintext peer never gets an ack.
    with pytest.raises(ClientError):
        _request_via(TcpTls(), file_kv)
    # A peer whose certificate another CA signed is refused.
    with pytest.raises(ClientError):
        _request_via(as_tls(tls_env(other_pki)), file_kv)
    # A peer presenting no client certificate is refused (mutual TLS).
    no_cert = dict(env)
    del no_cert["DYN_TCP_TLS_CLIENT_CERT_PATH"], no_cert["DYN_TCP_TLS_CLIENT_KEY_PATH"]
    with pytest.raises(ClientError):
        _request_via(as_tls(no_cert), file_kv)
    assert proc.running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
