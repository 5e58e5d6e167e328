"""The NATS request plane, with the stock frontend routing through it."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo_lite.transport.nats_plane import NatsError, NatsSettings, subject_for
from tests.support.lite import wait_until, worker_argv, worker_env
from tests.support.services import NatsServer


def test_subject_is_exactly_what_is_advertised() -> None:
    assert subject_for("dynamo", "sample", "generate", 0x4F73A20966AAAD14) == (
        "dynamo_sample.generate-4f73a20966aaad14"
    )
    # 1.6.1 slugifies this for its subscription and hangs; we keep it verbatim.
    assert subject_for("Ns-1.X", "Comp.A", "generate", 0x9A) == "Ns-1.X_Comp.A.generate-9a"
    for bad in ("a b", "a*", "a>", "a..b"):
        with pytest.raises(NatsError):
            subject_for(bad, "c", "e", 1)


def test_settings_from_env() -> None:
    s = NatsSettings.from_env(
        {
            "NATS_SERVER": "nats://a:1,nats://b:2",
            "NATS_AUTH_USERNAME": "u",
            "NATS_AUTH_PASSWORD": "p",
            "NATS_AUTH_TOKEN": "t",
        }
    )
    opts = s.connect_options()
    assert opts["servers"] == ["nats://a:1", "nats://b:2"]
    assert (opts["user"], opts["password"], opts["token"]) == ("u", "p", "t")
    assert "tls" not in opts
    tls = NatsSettings.from_env({"NATS_SERVER": "tls://a:1", "NATS_TLS_INSECURE": "true"})
    assert "tls" in tls.connect_options()


@pytest.mark.interop
@pytest.mark.parametrize(("namespace", "component"), [("dynamo", "sample"), ("Ns-1.X", "Comp.A")])
def test_stock_frontend_routes_over_nats(
    namespace: str,
    component: str,
    nats: NatsServer,
    tiny_model: Path,
    file_kv: Path,
    spawn: Any,
    stock_frontend: Any,
) -> None:
    fe = stock_frontend(
        discovery="file",
        file_kv=file_kv,
        extra_args=["--request-plane", "nats"],
        env={"NATS_SERVER": nats.url},
    )
    env = worker_env(file_kv=file_kv, NATS_SERVER=nats.url)
    argv = worker_argv(tiny_model, extra=["--request-plane", "nats"])
    argv[argv.index("--namespace") + 1] = namespace
    proc = spawn([*argv, "--component", component], env=env, name="lite-nats")
    model = str(tiny_model)
    fe.wait_model(model, timeout=30)
    (path,) = [p for p in (file_kv / "v1" / "instances").iterdir() if "%2Fgenerate%2F" in p.name]
    record = json.loads(path.read_text())
    assert set(record["transport"]) == {"nats_tcp"}
    assert record["transport"]["nats_tcp"].startswith(f"{namespace}_{component}.generate-")
    for stream in (False, True):
        r = httpx.post(
            fe.url("/v1/chat/completions"),
            timeout=30,
            json={
                "model": model,
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 5,
                "stream": stream,
            },
        )
        assert r.status_code == 200, r.text
        if not stream:
            assert r.json()["choices"][0]["finish_reason"] == "length"
        else:
            assert '"finish_reason":"length"' in r.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    fe.wait_model(model, present=False, timeout=10)


def test_unreachable_nats_fails_startup(tiny_model: Path, file_kv: Path, spawn: Any) -> None:
    from tests.support.ports import free_port

    env = worker_env(
        file_kv=file_kv,
        NATS_SERVER=f"nats://127.0.0.1:{free_port()}",
        NATS_STARTUP_CONNECT_TIMEOUT_SECONDS="1",
    )
    proc = spawn(worker_argv(tiny_model, extra=["--request-plane", "nats"]), env=env)
    assert proc.wait(20) == 1
    assert "cannot connect to NATS" in proc.log_text()
    wait_until(lambda: not proc.running, timeout=1)
