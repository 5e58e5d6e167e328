"""NATS request plane with user/password, token and (mutual) TLS authentication."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.extras import require_module
from tests.support.lite import worker_argv, worker_env
from tests.support.ports import LOOPBACK, free_port, wait_port
from tests.support.services import make_test_pki, nats_server_binary

pytestmark = pytest.mark.interop


def start_nats(spawn: Any, *args: str, scheme: str = "nats") -> str:
    port = free_port()
    spawn([str(nats_server_binary()), "-a", LOOPBACK, "-p", str(port), *args], name="nats-auth")
    wait_port(LOOPBACK, port, timeout=15)
    return f"{scheme}://{LOOPBACK}:{port}"


def serve_chat(
    url: str, auth: dict[str, str], tiny_model: Path, file_kv: Path, spawn: Any, stock_frontend: Any
) -> None:
    env = {"NATS_SERVER": url, **auth}
    fe = stock_frontend(
        discovery="file", file_kv=file_kv, env=env, extra_args=["--request-plane", "nats"]
    )
    proc = spawn(
        worker_argv(tiny_model, extra=["--request-plane", "nats"]),
        env=worker_env(file_kv=file_kv, **env),
        name="lite-nats-auth",
    )
    fe.wait_model(str(tiny_model), timeout=30)
    r = httpx.post(
        fe.url("/v1/completions"),
        timeout=30,
        json={"model": str(tiny_model), "prompt": "hello", "max_tokens": 3},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_user_password(tiny_model: Path, file_kv: Path, spawn: Any, stock_frontend: Any) -> None:
    url = start_nats(spawn, "--user", "dyn", "--pass", "s3cret")
    serve_chat(
        url,
        {"NATS_AUTH_USERNAME": "dyn", "NATS_AUTH_PASSWORD": "s3cret"},
        tiny_model,
        file_kv,
        spawn,
        stock_frontend,
    )


def test_token(tiny_model: Path, file_kv: Path, spawn: Any, stock_frontend: Any) -> None:
    url = start_nats(spawn, "--auth", "t0ken")
    serve_chat(url, {"NATS_AUTH_TOKEN": "t0ken"}, tiny_model, file_kv, spawn, stock_frontend)


def test_mutual_tls(
    tiny_model: Path, file_kv: Path, tmp_path: Path, spawn: Any, stock_frontend: Any
) -> None:
    pki = make_test_pki(tmp_path / "pki")
    url = start_nats(
        spawn,
        "--tls",
        "--tlscert",
        str(pki.server_cert),
        "--tlskey",
        str(pki.server_key),
        "--tlsverify",
        "--tlscacert",
        str(pki.ca),
        scheme="tls",
    )
    serve_chat(
        url,
        {
            "NATS_TLS_CA_CERT_PATH": str(pki.ca),
            "NATS_TLS_CLIENT_CERT_PATH": str(pki.client_cert),
            "NATS_TLS_CLIENT_KEY_PATH": str(pki.client_key),
        },
        tiny_model,
        file_kv,
        spawn,
        stock_frontend,
    )


def test_tls_settings_need_the_tls_scheme() -> None:
    from dynamo_lite.transport.nats_plane import NatsError, NatsSettings

    settings = NatsSettings.from_env({"NATS_SERVER": "nats://h:1", "NATS_TLS_INSECURE": "1"})
    with pytest.raises(NatsError, match="tls://"):
        settings.connect_options()


def test_wrong_password_fails_startup(tiny_model: Path, file_kv: Path, spawn: Any) -> None:
    url = start_nats(spawn, "--user", "dyn", "--pass", "s3cret")
    env = worker_env(
        file_kv=file_kv,
        NATS_SERVER=url,
        NATS_AUTH_USERNAME="dyn",
        NATS_AUTH_PASSWORD="wrong",
        NATS_STARTUP_CONNECT_TIMEOUT_SECONDS="2",
    )
    proc = spawn(worker_argv(tiny_model, extra=["--request-plane", "nats"]), env=env)
    assert proc.wait(30) == 1
    assert "cannot connect to NATS" in proc.log_text()


def test_nkey_authentication(
    tiny_model: Path, file_kv: Path, tmp_path: Path, spawn: Any, stock_frontend: Any
) -> None:
    nkeys = require_module("nkeys")
    import os

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    port = free_port()
    conf = tmp_path / "nats.conf"
    # The worker signs in with its nkey; the frontend with a password.
    conf.write_text(
        f'listen: "{LOOPBACK}:{port}"\n'
        "authorization {\n"
        f'  users = [ {{ nkey: "{public}" }}, {{ user: "fe", password: "pw" }} ]\n'
        "}\n"
    )
    spawn([str(nats_server_binary()), "-c", str(conf)], name="nats-nkey")
    wait_port(LOOPBACK, port, timeout=15)
    url = f"nats://{LOOPBACK}:{port}"
    fe = stock_frontend(
        discovery="file",
        file_kv=file_kv,
        extra_args=["--request-plane", "nats"],
        env={"NATS_SERVER": url, "NATS_AUTH_USERNAME": "fe", "NATS_AUTH_PASSWORD": "pw"},
    )
    seed_file = tmp_path / "worker.nk"
    seed_file.write_bytes(seed)
    for source in (seed.decode(), str(seed_file)):  # the seed itself, or a file holding it
        proc = spawn(
            worker_argv(tiny_model, extra=["--request-plane", "nats"]),
            env=worker_env(file_kv=file_kv, NATS_SERVER=url, NATS_AUTH_NKEY=source),
            name="lite-nkey",
        )
        fe.wait_model(str(tiny_model), timeout=30)
        r = httpx.post(
            fe.url("/v1/completions"),
            timeout=30,
            json={"model": str(tiny_model), "prompt": "hi", "max_tokens": 2},
        )
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        fe.wait_model(str(tiny_model), present=False, timeout=10)


def test_creds_file_authentication(
    tiny_model: Path, file_kv: Path, tmp_path: Path, spawn: Any, stock_frontend: Any
) -> None:
    require_module("nkeys")
    from tests.support.nats_jwt import make_operator_setup

    port = free_port()
    setup = make_operator_setup(tmp_path / "operator", LOOPBACK, port)
    spawn([str(nats_server_binary()), "-c", str(setup.server_conf)], name="nats-operator")
    wait_port(LOOPBACK, port, timeout=15)
    serve_chat(
        f"nats://{LOOPBACK}:{port}",
        {"NATS_AUTH_CREDENTIALS_FILE": str(setup.creds)},
        tiny_model,
        file_kv,
        spawn,
        stock_frontend,
    )
