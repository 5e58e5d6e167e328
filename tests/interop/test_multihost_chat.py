"""Chat, streaming and cancellation across hosts, the stock worker as control.

Every process runs on its own network-namespace host with no ``DYN_*_HOST``
set and no default route (an isolated cluster network); the frontend host
cannot see the model directory, so it reads the tokenizer and config through
the worker's self-hosted URLs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, copy_model, tcp_host_of
from tests.support.lite import REPO, events_of, wait_until
from tests.support.netns import Lab

pytestmark = pytest.mark.interop


def _sse(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def _cancel_mid_stream(cluster: Cluster) -> None:
    """Read three chunks of a long stream, then hang up."""
    body = {
        "model": str(cluster.model_dir),
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 2000,
        "stream": True,
    }
    with cluster.http() as c, c.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        got = 0
        for line in resp.iter_lines():
            got += line.startswith("data: ")
            if got == 3:
                break


@pytest.mark.parametrize("kind", ["lite", "stock"])
def test_chat_and_stream_across_hosts_with_the_model_hidden_from_the_frontend(
    cluster: Cluster, kind: str, tmp_path: Path
) -> None:
    host = cluster.worker_host("worker")
    assert cluster.fe_host.run(["ls", "-A", str(cluster.model_dir)]).stdout == ""
    if kind == "lite":
        cluster.start_lite_worker(host, DYN_SYSTEM_PORT="9090")
    else:
        cluster.start_stock_worker(host, DYN_SYSTEM_PORT="9090")
    cluster.start_frontend()
    (record,) = cluster.wait_instances(1)
    # The worker's own cluster address, not loopback, for the request plane ...
    assert tcp_host_of(record) == host.addr
    (card,) = cluster.card_records()
    url = card["card_json"]["tokenizer"]["hf_tokenizer_json"]["path"]
    # ... and for the model files the frontend cannot read locally.
    assert url.startswith(f"http://{host.addr}:9090/v1/metadata/")
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")

    resp = cluster.chat("hello", max_tokens=5)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"]

    resp = cluster.chat("hello", max_tokens=6, stream=True)
    assert resp.status_code == 200, resp.text
    chunks = _sse(resp.text)
    text = "".join(
        str(c["choices"][0]["delta"].get("content") or "")  # type: ignore[index]
        for c in chunks
        if c.get("choices")
    )
    assert text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]


def test_cancel_across_hosts_reaches_the_worker(cluster: Cluster, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    host = cluster.worker_host("worker")
    cluster.start_lite_worker(host, events=events, DYN_SYSTEM_PORT="9090")
    cluster.start_frontend()
    cluster.wait_instances(1)
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")
    _cancel_mid_stream(cluster)
    # Closing the HTTP stream on the client host travels frontend → worker host.
    wait_until(lambda: events_of(events, "abort"), timeout=30, what="abort on the worker")


@pytest.mark.parametrize("kind", ["lite", "stock"])
def test_python_client_on_its_own_host_calls_home_across_hosts(cluster: Cluster, kind: str) -> None:
    """``dynamo-lite request`` on the client host, no ``DYN_*_HOST`` set: the
    client advertises its own cluster address (it used to say 127.0.0.1, which
    a worker on another host cannot reach)."""
    host = cluster.worker_host("worker")
    if kind == "lite":
        cluster.start_lite_worker(host)
    else:
        cluster.start_stock_worker(host)
    cluster.wait_instances(1)
    env = cluster.env(PYTHONPATH=str(REPO))
    res = cluster.client.run(
        [sys.executable, "-m", "dynamo_lite", "request", "--max-tokens", "5"],
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    items = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert items[-1].get("finish_reason") == "length", items
    assert sum(len(i.get("token_ids") or []) for i in items) == 5


@pytest.mark.parametrize("kind", ["lite", "stock"])
def test_nats_request_plane_across_hosts(
    lab: Lab, tiny_model: Path, tmp_path: Path, kind: str
) -> None:
    """Requests travel through nats-server on the infra host; the responses still
    call home over TCP to the frontend's detected address."""
    cluster = Cluster(lab, copy_model(tiny_model, tmp_path / "models" / "m"), nats=True)
    try:
        host = cluster.worker_host("worker")
        events = tmp_path / "events.jsonl"
        plane = ["--request-plane", "nats"]
        if kind == "lite":
            cluster.start_lite_worker(host, extra=plane, events=events)
        else:
            cluster.start_stock_worker(host, extra=plane)
        cluster.start_frontend(*plane)
        (record,) = cluster.wait_instances(1)
        assert "nats_tcp" in record["transport"]
        cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")
        resp = cluster.chat("hello", max_tokens=4)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["finish_reason"] == "length"
        resp = cluster.chat("hello", max_tokens=4, stream=True)
        assert resp.status_code == 200, resp.text
        assert _sse(resp.text)[-1]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
        if kind == "lite":
            _cancel_mid_stream(cluster)
            wait_until(lambda: events_of(events, "abort"), timeout=30, what="abort")
    finally:
        cluster.close()
