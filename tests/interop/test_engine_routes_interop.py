"""``/engine/control|update/<name>``: dynamo_lite answers as the stock 1.6.1 worker does.

One engine (``tests/engines/control_engine.py``, written against the stock
SDK) runs on the stock worker and, unmodified, on dynamo_lite through the
compat layer; the same requests go to both system ports and every answer
(status, body), every registration change and every engine call must match.
Then, behind the stock frontend, taking a dynamo_lite worker out of service
removes its model and putting it back restores it.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.lite import REPO, worker_env
from tests.support.ports import LOOPBACK

pytestmark = pytest.mark.interop

ENGINE = REPO / "tests" / "engines" / "control_engine.py"

# (method, path, body or None)
CASES: list[tuple[str, str, bytes | None]] = [
    ("GET", "/engine/control/echo", None),
    ("POST", "/engine/control/echo", b'{"a":1}'),
    ("POST", "/engine/control/echo", b""),
    ("PUT", "/engine/control/echo", b"{}"),
    ("POST", "/engine/control/echo", b"[1,2]"),
    ("POST", "/engine/control/echo", b"null"),
    ("POST", "/engine/control/echo", b'{"a":}'),
    ("POST", "/engine/control/echo", b"{}x"),
    ("POST", "/engine/control/unknown", b"{}"),
    ("POST", "/engine/control/", b"{}"),
    ("POST", "/engine/control", b"{}"),
    ("POST", "/engine/control/echo/extra", b"{}"),
    ("POST", "/engine/control/lora", b"{}"),
    ("POST", "/engine/control/echo", b'{"fail":true}'),
    ("POST", "/engine/control/echo", b'{"ret":["not","a","dict"]}'),
    ("POST", "/engine/control/echo", b'{"ret":{"f":1.5,"u":"\xc3\xa9","n":null}}'),
    ("POST", "/engine/control/echo", b'{"exc":"RuntimeError"}'),
    ("POST", "/engine/control/echo", b'{"exc":"ValueError"}'),
    ("POST", "/engine/control/echo", b'{"exc":"KeyError"}'),
    ("POST", "/engine/control/echo", b'{"exc":"TimeoutError"}'),
    ("POST", "/engine/control/echo", b'{"exc":"ConnectionError"}'),
    ("POST", "/engine/update/lora", b'{"x":"y"}'),
    ("POST", "/engine/update/lora", b"[1]"),
    ("POST", "/engine/update/lora", b'{"exc":"TypeError"}'),
    ("POST", "/engine/update/nope", b"{}"),
    ("POST", "/engine/update/model_taints", b"{}"),
    ("POST", "/engine/update/model_taints", b"[1]"),
    ("POST", "/engine/update/model_taints", b'{"taints":["b","a","b"],"other":1}'),
    ("POST", "/engine/update/model_taints", b'{"taints":["dynamo.topology/x"]}'),
    ("POST", "/engine/control/pause_generation", b"[1]"),
    ("POST", "/engine/control/pause_generation", b"{}"),
    ("POST", "/engine/control/pause_generation", b"{}"),
    ("POST", "/engine/control/resume_generation", b'{"fail":true}'),
    ("POST", "/engine/control/resume_generation", b"{}"),
    ("POST", "/engine/control/sleep", b'{"exc":"RuntimeError"}'),
    ("POST", "/engine/control/wake_up", b'{"stay_asleep":true}'),
    ("POST", "/engine/control/wake_up", b'{"exc":"RuntimeError"}'),
    ("POST", "/engine/control/wake_up", b'{"ret":{"status":"ok","is_sleeping":1}}'),
    ("POST", "/engine/control/pause_generation", b'{"fail":true}'),
    ("POST", "/engine/control/resume_generation", b'{"ret":{"status":"weird"}}'),
    # the endpoint object on_endpoint_ready received
    ("POST", "/engine/control/ep_off", b"{}"),
    ("GET", "/health", None),
    ("POST", "/engine/control/ep_off", b"{}"),
    ("POST", "/engine/control/pause_generation", b"{}"),
    ("POST", "/engine/control/ep_on", b"{}"),
    ("POST", "/engine/control/ep_on", b"{}"),
    ("POST", "/engine/control/resume_generation", b"{}"),
    ("GET", "/health", None),
]
# While the engine starts, before its routes exist.
STARTING_CASES: list[tuple[str, str, bytes | None]] = [
    ("POST", "/engine/control/echo", b"{}"),
    ("GET", "/engine/control/echo", None),
    ("POST", "/engine/control/echo", b"not json"),
    ("POST", "/engine/update/model_taints", b'{"taints":[]}'),
]
SHUTDOWN_CASES: list[tuple[str, str, bytes | None]] = [
    ("POST", "/engine/control/echo", b"{}"),
    ("POST", "/engine/control/echo", b"[1]"),
    ("POST", "/engine/control/unknown", b"{}"),
    ("POST", "/engine/update/lora", b"{}"),
    ("POST", "/engine/control/pause_generation", b"{}"),
    ("POST", "/engine/update/model_taints", b"{}"),
]


def free_system_port() -> int:
    """A free port the stock worker accepts: it parses DYN_SYSTEM_PORT as an i16."""
    for _ in range(200):
        port = random.randrange(20000, 32768)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


class Runtime:
    def __init__(self, name: str, proc: Any, port: int, kv: Path, events: Path) -> None:
        self.name, self.proc, self.port, self.kv, self.events = name, proc, port, kv, events

    def registered(self) -> int:
        return sum(
            1
            for p in self.kv.rglob("*")
            if p.is_file() and p.parent.name == "instances" and "%2Fgenerate%2F" in p.name
        )

    def wait_health(self, status: int) -> None:
        """Poll ``/health`` until it answers ``status`` (a generous bound only catches a hang)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2)
                if r.status_code == status:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.running, self.proc.describe_log()
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: /health never {status}\n{self.proc.describe_log()}")

    def ask(self, cases: list[tuple[str, str, bytes | None]]) -> list[Any]:
        out = []
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10) as client:
            for method, path, body in cases:
                r = client.request(method, path, content=body)
                parsed = r.json()
                if path == "/health":  # stock lists its KV query endpoint too
                    parsed = (parsed["status"], parsed["endpoints"].get("generate"))
                if isinstance(parsed, dict) and parsed.get("error") == "Invalid JSON":
                    parsed = {"error": "Invalid JSON"}  # the parser's wording differs
                out.append((method, path, body, r.status_code, r.headers["content-type"],
                            parsed, self.registered()))  # fmt: skip
        return out


def _launch(
    name: str, argv_head: list[str], tmp_path: Path, spawn: Any, tiny_model: Path, **env: Any
) -> Runtime:
    kv = tmp_path / f"kv-{name}"
    kv.mkdir()
    events = tmp_path / f"events-{name}.jsonl"
    port = free_system_port()
    argv = [*argv_head, str(ENGINE), "--model-name", str(tiny_model),
            "--discovery-backend", "file", "--delay", "0"]  # fmt: skip
    proc = spawn(
        argv,
        env=worker_env(file_kv=kv, DYN_SYSTEM_PORT=port, CTL_EVENTS=events, **env),
        name=f"control-{name}",
    )
    rt = Runtime(name, proc, port, kv, events)
    rt.wait_health(503 if "CTL_START_GATE" in env else 200)
    return rt


def _events(rt: Runtime) -> list[Any]:
    if not rt.events.exists():
        return []
    return [json.loads(line) for line in rt.events.read_text().splitlines()]


def test_engine_routes_answer_as_the_stock_worker(
    tmp_path: Path, tiny_model: Path, spawn: Any, stock_python_path: Path
) -> None:
    gate = tmp_path / "start-gate"
    env = {"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "30", "CTL_START_GATE": gate}
    stock = _launch("stock", [str(stock_python_path)], tmp_path, spawn, tiny_model, **env)
    lite = _launch(
        "lite", [sys.executable, "-m", "dynamo_lite.compat"], tmp_path, spawn, tiny_model, **env
    )
    # Both system ports are up and start() is held: no engine routes yet.
    assert lite.ask(STARTING_CASES) == stock.ask(STARTING_CASES)
    gate.touch()
    for rt in (stock, lite):
        rt.wait_health(200)
    ours, theirs = lite.ask(CASES), stock.ask(CASES)
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine == ref
    assert _events(lite) == _events(stock)

    def card_taints(rt: Runtime) -> Any:
        [mdc] = [p for p in rt.kv.rglob("*") if p.is_file() and p.parent.name == "mdc"]
        return json.loads(mdc.read_text())["card_json"]["runtime_config"].get("taints")

    assert card_taints(lite) == card_taints(stock) == ["a", "b"]

    # From the first moment of shutdown (a long grace keeps both alive meanwhile).
    for rt in (stock, lite):
        rt.proc.send_signal(15)
    for rt in (stock, lite):
        rt.wait_health(503)  # readiness is withdrawn at the first moment of shutdown
    assert lite.ask(SHUTDOWN_CASES) == stock.ask(SHUTDOWN_CASES)


def test_out_of_service_controls_move_the_model_in_the_stock_frontend(
    tmp_path: Path, tiny_model: Path, spawn: Any, stock_frontend: Any
) -> None:
    lite = _launch(
        "lite", [sys.executable, "-m", "dynamo_lite.compat"], tmp_path, spawn, tiny_model
    )
    fe = stock_frontend(discovery="file", file_kv=lite.kv)
    fe.wait_model(str(tiny_model), timeout=30)
    base = f"http://127.0.0.1:{lite.port}"
    assert httpx.post(f"{base}/engine/control/sleep", content=b"{}").json()["status"] == "ok"
    fe.wait_model(str(tiny_model), present=False, timeout=30)
    assert httpx.get(f"{base}/health").status_code == 503
    r = httpx.post(f"{base}/engine/control/wake_up", content=b"{}")
    assert r.json() == {"status": "ok", "is_sleeping": False}
    fe.wait_model(str(tiny_model), timeout=30)
    chat = httpx.post(
        fe.url("/v1/chat/completions"),
        timeout=30,
        json={"model": str(tiny_model), "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 2},
    )  # fmt: skip
    assert chat.status_code == 200, chat.text
