"""A slow, lossy link between the frontend and the worker: streams complete.

This kernel has no ``netem``, so the link is shaped with ``tbf`` on both ends:
a low rate delays packets in the queue, and a queue only a few packets long
drops what overflows it (tail drop), so TCP has to retransmit. The test
checks the shaper really dropped packets, then that every streamed chat still
completes with its full length and no error.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.netns import Host

pytestmark = pytest.mark.interop

MAX_TOKENS = 200


def _shape(host: Host) -> None:
    res = host.run(
        ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
         "rate", "400kbit", "burst", "4kb", "limit", "6kb"]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


def _dropped(host: Host) -> int:
    out = host.run(["tc", "-s", "qdisc", "show", "dev", "eth0"]).stdout
    return sum(int(n) for n in re.findall(r"dropped (\d+)", out))


def _stream_ok(cluster: Cluster, results: list[str]) -> None:
    body = {
        "model": str(cluster.model_dir),
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        with cluster.http(timeout=120) as c:
            resp = c.post("/v1/chat/completions", json=body)
        chunks = [
            json.loads(line[6:])
            for line in resp.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
        finish = [ch["finish_reason"] for c in chunks for ch in c.get("choices", [])]
        usage = [c["usage"] for c in chunks if c.get("usage")]
        ok = (
            resp.status_code == 200
            and [f for f in finish if f] == ["length"]
            and usage[-1]["completion_tokens"] == MAX_TOKENS
        )
        results.append("ok" if ok else f"{resp.status_code} {resp.text[-300:]}")
    except Exception as exc:
        results.append(repr(exc))


@pytest.mark.parametrize("kind", ["lite", "stock"])
def test_streams_complete_over_a_slow_lossy_link(
    cluster: Cluster, tmp_path: Path, kind: str
) -> None:
    host = cluster.worker_host("worker")
    if kind == "lite":
        cluster.start_lite_worker(host, delay=0.0)
    else:
        cluster.start_stock_worker(host)
    cluster.start_frontend()
    cluster.wait_instances(1)
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")
    _shape(host)
    _shape(cluster.fe_host)
    results: list[str] = []
    threads = [
        threading.Thread(target=_stream_ok, args=(cluster, results), daemon=True) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert results == ["ok"] * len(threads)
    assert _dropped(host) + _dropped(cluster.fe_host) > 0
    for h in (host, cluster.fe_host):
        h.run(["tc", "qdisc", "del", "dev", "eth0", "root"])
