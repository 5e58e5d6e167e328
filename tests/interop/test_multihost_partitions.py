"""Network partitions between namespace hosts (cables pulled, routes blackholed).

* worker ↔ etcd, longer than the lease TTL: the lease expires on the server and
  the records vanish; after the link heals the same dynamo_lite process
  re-grants the same lease id and re-registers, and serves again. The stock
  worker, the control, gives up instead.
* frontend ↔ worker mid-stream: the worker notices the frontend stopped
  reading within ``DYN_LITE_WRITE_STALL_SECS`` and aborts the request;
* a worker killed mid-stream: with ``--migration-limit`` the stream completes
  on the worker on the other host.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.lite import events_of, wait_until

pytestmark = pytest.mark.interop

TTL = 3
FLOOD = 1998  # the probe engine's endless stream of 16 KiB chunks


def test_etcd_partition_longer_than_the_lease_then_heal_reregisters_same_process(
    cluster: Cluster, tmp_path: Path
) -> None:
    host = cluster.worker_host("worker")
    proc = cluster.start_lite_worker(host, DYN_SYSTEM_PORT="9090", ETCD_LEASE_TTL=str(TTL))
    cluster.start_frontend()
    (before,) = cluster.wait_instances(1)
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")

    host.link_down()
    # etcd itself expires the lease once the keepalives stop arriving.
    cluster.wait_instances(0, timeout=TTL * 10)
    cluster.wait_http(lambda r: str(cluster.model_dir) not in r.text, "/v1/models", what="gone")
    host.link_up()

    (after,) = cluster.wait_instances(1, timeout=60)
    assert proc.running and after["instance_id"] == before["instance_id"]
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="back")
    resp = cluster.chat("hello", max_tokens=3)
    assert resp.status_code == 200, resp.text
    assert "lease" in proc.log_text().lower()


def test_stock_worker_control_exits_when_its_lease_is_lost(cluster: Cluster) -> None:
    """Stock 1.6.1 gives up on the lease during the partition (at the expiry, or
    when its gRPC keepalive to etcd fails) and shuts down gracefully
    with exit 0: it never comes back without a supervisor."""
    host = cluster.worker_host("worker")
    # Stock's gRPC keepalive to etcd (15 s + 10 s by default), shortened.
    proc = cluster.start_stock_worker(
        host,
        ETCD_LEASE_TTL=str(TTL),
        ETCD_KEEPALIVE_INTERVAL_SECONDS="1",
        ETCD_KEEPALIVE_TIMEOUT_SECONDS="1",
    )
    cluster.wait_instances(1)
    host.link_down()
    assert proc.wait(60) == 0
    host.link_up()
    assert "unable to maintain lease" in proc.log_text().lower()
    assert cluster.instance_records() == []


def _stream_body(cluster: Cluster, max_tokens: int) -> dict[str, object]:
    return {
        "model": str(cluster.model_dir),
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "stream": True,
    }


def test_frontend_worker_partition_mid_stream_worker_aborts_within_its_bound(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A silent partition (packets dropped both ways, no RST): the frontend keeps
    waiting (stock 1.6.1 has no stream inactivity timeout), the worker stops
    after ``DYN_LITE_WRITE_STALL_SECS`` of unread output and aborts the engine."""
    events = tmp_path / "events.jsonl"
    host = cluster.worker_host("worker")
    proc = cluster.start_lite_worker(host, events=events, delay=0.0, DYN_LITE_WRITE_STALL_SECS="2")
    cluster.start_frontend()
    cluster.wait_instances(1)
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")
    seen = 0
    with (
        pytest.raises(httpx.ReadTimeout),
        cluster.http(timeout=60) as c,
        c.stream("POST", "/v1/chat/completions", json=_stream_body(cluster, FLOOD)) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            seen += line.startswith("data: ")
            if seen == 50:
                host.block(cluster.fe_host)
                # The frontend's own cancellation cannot cross the partition:
                # an abort now can only be the worker's own decision.
                wait_until(lambda: events_of(events, "abort"), timeout=60, what="abort")
                raise httpx.ReadTimeout("partitioned; the worker gave up")
    assert len(events_of(events, "abort")) == 1
    assert not events_of(events, "terminal")
    assert "frontend stopped reading" in proc.log_text()
    host.unblock(cluster.fe_host)


def test_worker_killed_mid_stream_migrates_to_the_other_host(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With ``--migration-limit`` the stream survives its worker (SIGKILL: the
    kernel resets the connections): it completes on the worker on the other
    host. (A *silent* partition is not detected by the stock frontend at all;
    see the test above.)"""
    h1, h2 = cluster.worker_host("w1"), cluster.worker_host("w2")
    p1 = cluster.start_lite_worker(h1, events=tmp_path / "e1.jsonl")
    p2 = cluster.start_lite_worker(h2, events=tmp_path / "e2.jsonl")
    cluster.start_frontend("--migration-limit", "3")
    cluster.wait_instances(2)
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")
    finish = []
    seen = 0
    with (
        cluster.http(timeout=60) as c,
        c.stream("POST", "/v1/chat/completions", json=_stream_body(cluster, 300)) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            seen += 1
            chunk = json.loads(line[6:])
            finish += [c["finish_reason"] for c in chunk.get("choices", []) if c["finish_reason"]]
            if seen == 20:
                (serving,) = cluster.serving_hosts(h1, h2)
                (p1 if serving is h1 else p2).kill()
    assert finish == ["length"]
    survivor = tmp_path / ("e2.jsonl" if serving is h1 else "e1.jsonl")
    # Recorded just after the last chunk went out: wait for it.
    wait_until(lambda: events_of(survivor, "terminal"), timeout=30, what="terminal on survivor")
