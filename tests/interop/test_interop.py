"""The stock Dynamo 1.6.1 frontend serving from a dynamo_lite worker (issue: walking skeleton).

Each test starts a real stock frontend and a real dynamo_lite worker process on
loopback, with the file backend and with etcd.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo_lite.tiny_model import decode
from tests.support.lite import events_of, wait_until, worker_argv, worker_env
from tests.support.services import EtcdServer, ManagedProcess
from tests.support.stock import StockFrontend

pytestmark = pytest.mark.interop


@dataclass
class Stack:
    backend: str
    frontend: StockFrontend
    worker: ManagedProcess
    model: str
    model_dir: Path
    events: Path
    file_kv: Path | None
    etcd: EtcdServer | None

    def post(self, path: str, body: dict[str, Any], timeout: float = 30.0) -> httpx.Response:
        return httpx.post(self.frontend.url(path), json=body, timeout=timeout)


@pytest.fixture(params=["file", "etcd"])
def stack(
    request: pytest.FixtureRequest,
    tiny_model: Path,
    tmp_path: Path,
    spawn: Any,
    stock_frontend: Any,
) -> Iterator[Stack]:
    backend: str = request.param
    events = tmp_path / "events.jsonl"
    etcd: EtcdServer | None = None
    file_kv: Path | None = None
    if backend == "etcd":
        etcd = request.getfixturevalue("etcd")
        fe = stock_frontend(discovery="etcd", etcd_endpoint=etcd.endpoint)
        env = worker_env(etcd_endpoint=etcd.endpoint, events=events)
    else:
        file_kv = request.getfixturevalue("file_kv")
        fe = stock_frontend(discovery="file", file_kv=file_kv)
        env = worker_env(file_kv=file_kv, events=events)
    worker = spawn(worker_argv(tiny_model, discovery=backend), env=env, name=f"lite-{backend}")
    model = str(tiny_model)
    fe.wait_model(model, timeout=30)
    yield Stack(backend, fe, worker, model, tiny_model, events, file_kv, etcd)


def sse_events(text: str) -> list[Any]:
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def expected_text(model_dir: Path, n: int) -> str:
    # The sample engine emits token ids 1..n.
    return decode(model_dir, list(range(1, n + 1)))


def test_models_lists_the_worker(stack: Stack) -> None:
    data = httpx.get(stack.frontend.url("/v1/models"), timeout=10).json()
    assert [m["id"] for m in data["data"]] == [stack.model]
    assert data["data"][0]["context_window"] == 2048


def test_chat_non_streaming(stack: Stack) -> None:
    r = stack.post(
        "/v1/chat/completions",
        {
            "model": stack.model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 7,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == expected_text(stack.model_dir, 7)
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7


def test_chat_streaming(stack: Stack) -> None:
    r = stack.post(
        "/v1/chat/completions",
        {
            "model": stack.model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e.get("choices")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == expected_text(stack.model_dir, 6)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    usage = [e["usage"] for e in events[:-1] if e.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 6


def test_completions_non_streaming(stack: Stack) -> None:
    r = stack.post("/v1/completions", {"model": stack.model, "prompt": "hello", "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["text"] == expected_text(stack.model_dir, 5)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


def test_completions_streaming(stack: Stack) -> None:
    r = stack.post(
        "/v1/completions",
        {
            "model": stack.model,
            "prompt": "hello",
            "max_tokens": 9,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e.get("choices")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected_text(stack.model_dir, 9)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert [e["usage"] for e in events[:-1] if e.get("usage")][-1]["completion_tokens"] == 9


def test_client_disconnect_calls_abort_once(stack: Stack) -> None:
    body = {
        "model": stack.model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 2000,
        "stream": True,
    }
    request_id = None
    with httpx.stream(
        "POST", stack.frontend.url("/v1/chat/completions"), json=body, timeout=30
    ) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                request_id = json.loads(line[6:])["id"].removeprefix("chatcmpl-")
                seen += 1
                if seen == 5:
                    break
    assert request_id
    wait_until(
        lambda: events_of(stack.events, "abort", id=request_id),
        timeout=5,
        what="abort() after the disconnect",
    )
    aborts = events_of(stack.events, "abort", id=request_id)
    assert len(aborts) == 1
    assert aborts[0]["stopped"] and aborts[0]["killed"]
    # The stream never reached a natural end.
    assert not events_of(stack.events, "terminal", id=request_id, finish_reason="length")


def test_invalid_argument_is_http_400(stack: Stack) -> None:
    r = stack.post("/v1/completions", {"model": stack.model, "prompt": "hi", "max_tokens": 777})
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "probe: 777 is not an acceptable max_tokens"
    r = stack.post(
        "/v1/chat/completions",
        {
            "model": stack.model,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 777,
            "stream": True,
        },
    )
    errors = [e["error"] for e in sse_events(r.text) if isinstance(e, dict) and "error" in e]
    assert errors and errors[0]["code"] == 400
    assert errors[0]["message"] == "probe: 777 is not an acceptable max_tokens"


def test_other_exceptions_are_http_500(stack: Stack) -> None:
    r = stack.post("/v1/completions", {"model": stack.model, "prompt": "hi", "max_tokens": 779})
    assert r.status_code == 500, r.text
    # The worker keeps serving.
    r = stack.post("/v1/completions", {"model": stack.model, "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200


def test_sigterm_unregisters_and_exits_zero(stack: Stack) -> None:
    stack.worker.send_signal(signal.SIGTERM)
    stack.frontend.wait_model(stack.model, present=False, timeout=10)
    assert stack.worker.wait(timeout=20) == 0
    assert len(events_of(stack.events, "cleanup")) == 1
    if stack.file_kv is not None:
        assert not [p for p in stack.file_kv.rglob("*") if p.is_file()]
    if stack.etcd is not None:
        r = httpx.post(
            stack.etcd.endpoint + "/v3/kv/range",
            json={"key": "djE=", "range_end": "djI="},
            timeout=5,
        )  # v1 .. v2
        assert not r.json().get("kvs")
