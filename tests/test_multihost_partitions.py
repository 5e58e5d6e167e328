"""Network partitions between namespace hosts (cables pulled, routes blackholed).

* worker ↔ etcd, longer than the lease TTL: the lease expires on the server and
  the records vanish; after the link heals the same dynamo_lite process
  re-grants the same lease id and re-registers, and serves again. The stock
  worker, the control, gives up instead.
* frontend ↔ worker mid-stream: the worker notices the frontend stopped
  reading within ``DYN_LITE_WRITE_STALL_SECS`` and aborts the request.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.lite import events_of, wait_until

pytestmark = pytest.mark.interop

TTL = 3


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
    when its gRPC keepalive stream fails, up to ~25 s) and shuts down gracefully
    with exit 0: it never comes back without a supervisor."""
    host = cluster.worker_host("worker")
    proc = cluster.start_stock_worker(host, ETCD_LEASE_TTL=str(TTL))
    cluster.wait_instances(1)
    host.link_down()
    assert proc.wait(60) == 0
    host.link_up()
    assert "unable to maintain lease" in proc.log_text().lower()
    assert cluster.instance_records() == []
