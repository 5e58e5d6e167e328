"""The advertised address on real namespace hosts, dynamo_lite beside the stock worker.

Each setup is one host shape an operator meets; the expected address is what
the stock 1.6.1 worker was observed to advertise there (and the stock worker
itself is run as the control in the main setups):

* isolated cluster network, no default route → the cluster address;
* two NICs, the default route on the *other* one → the default-route NIC;
* two NICs, no default route → the lower interface index;
* an interface that is down is skipped, a ``docker0`` bridge is not;
* IPv6 only → the global IPv6 address (link-local never), by the same two
  rules (IPv6 default-route NIC, else lowest index); the system
  server's URLs stay ``127.0.0.1`` because it binds IPv4 ``0.0.0.0``;
* nothing but loopback → ``127.0.0.1``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import NO_HOSTS, Cluster, tcp_host_of, unpinned
from tests.support.lite import REPO, wait_until, worker_argv, worker_env
from tests.support.netns import Host, Lab
from tests.support.stock import loopback_env, stock_python

Setup = Callable[[Lab], Host]


def isolated(lab: Lab) -> Host:
    return lab.host("w", lab.segment("cluster", "10.201.0.0/24"))


def default_on_other_nic(lab: Lab) -> Host:
    cluster = lab.segment("cluster", "10.201.0.0/24")
    mgmt = lab.segment("mgmt", "10.202.0.0/24")
    w = lab.host("w", cluster, mgmt)
    w.default_route("10.202.0.254")
    return w


def two_nics_no_default(lab: Lab) -> Host:
    a = lab.segment("a", "10.202.0.0/24")
    b = lab.segment("b", "10.201.0.0/24")
    return lab.host("w", a, b)  # eth0 = 10.202.0.1 has the lower index


def first_nic_down(lab: Lab) -> Host:
    w = two_nics_no_default(lab)
    w.ip("link", "set", "eth0", "down")
    return w


def docker_bridge_first(lab: Lab) -> Host:
    w = lab.host("w")
    w.ip("link", "add", "docker0", "type", "bridge")
    w.ip("addr", "add", "172.17.0.1/16", "dev", "docker0")
    w.ip("link", "set", "docker0", "up")
    w.attach(lab.segment("cluster", "10.201.0.0/24"))
    return w


def ipv6_only(lab: Lab) -> Host:
    return lab.host("w", lab.segment("v6", "fd00:201::/64"))


def dual_stack_v6_default(lab: Lab) -> Host:
    w = lab.host("w", lab.segment("v4", "10.201.0.0/24"), lab.segment("v6", "fd00:201::/64"))
    w.default_route("fd00:201::fe")
    return w


def ipv6_two_nics(lab: Lab) -> Host:
    return lab.host("w", lab.segment("a", "fd00:202::/64"), lab.segment("b", "fd00:201::/64"))


def ipv6_default_on_second_nic(lab: Lab) -> Host:
    w = ipv6_two_nics(lab)
    w.default_route("fd00:201::fe")
    return w


def loopback_only(lab: Lab) -> Host:
    return lab.host("w")


# setup, advertised request-plane host, host in the self-hosted file URLs
SETUPS: dict[str, tuple[Setup, str, str]] = {
    "isolated": (isolated, "10.201.0.1", "10.201.0.1"),
    "default_on_other_nic": (default_on_other_nic, "10.202.0.1", "10.202.0.1"),
    "two_nics_no_default": (two_nics_no_default, "10.202.0.1", "10.202.0.1"),
    "first_nic_down": (first_nic_down, "10.201.0.1", "10.201.0.1"),
    "docker_bridge_first": (docker_bridge_first, "172.17.0.1", "172.17.0.1"),
    "ipv6_only": (ipv6_only, "fd00:201::1", "127.0.0.1"),
    "dual_stack_v6_default": (dual_stack_v6_default, "10.201.0.1", "10.201.0.1"),
    "ipv6_two_nics": (ipv6_two_nics, "fd00:202::1", "127.0.0.1"),
    "ipv6_default_on_second_nic": (ipv6_default_on_second_nic, "fd00:201::1", "127.0.0.1"),
    "loopback_only": (loopback_only, "127.0.0.1", "127.0.0.1"),
}
STOCK_CONTROL = ("isolated", "default_on_other_nic", "ipv6_only")

_DETECT = (
    "from dynamo_lite.netaddr import detect, system_url_host; "
    "print(detect(), system_url_host('0.0.0.0'))"
)


@pytest.mark.parametrize("name", list(SETUPS))
def test_chooser_on_namespace_hosts(lab: Lab, name: str) -> None:
    setup, tcp, system = SETUPS[name]
    host = setup(lab)
    res = host.run([sys.executable, "-c", _DETECT], env={"PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [tcp, system]


def _advertised(kv: Path) -> tuple[str, str]:
    def records(bucket: str) -> list[Any]:
        files = (kv / "v1" / bucket).rglob("*") if (kv / "v1" / bucket).exists() else []
        return [json.loads(p.read_text()) for p in files if p.is_file()]

    def find() -> tuple[Any, Any] | None:
        inst = [r for r in records("instances") if str(r["transport"]["tcp"]).endswith("/generate")]
        cards = records("mdc")
        return (inst[0], cards[0]) if inst and cards else None

    record, card = wait_until(find, timeout=60, what="worker records")
    url = card["card_json"]["tokenizer"]["hf_tokenizer_json"]["path"]
    url_host = url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    return tcp_host_of(record), url_host


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["lite", "stock"])
@pytest.mark.parametrize("name", STOCK_CONTROL)
def test_worker_advertises_what_stock_advertises(
    lab: Lab, tiny_model: Path, tmp_path: Path, name: str, kind: str
) -> None:
    setup, tcp, system = SETUPS[name]
    host = setup(lab)
    kv = tmp_path / "kv"
    if kind == "lite":
        env = unpinned(worker_env(file_kv=kv, DYN_SYSTEM_PORT="9090"))
        host.spawn(worker_argv(tiny_model), env=env, name="lite")
    else:
        env = loopback_env(
            DYN_FILE_KV=kv,
            DYN_SYSTEM_PORT="9090",
            DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0",
            HOME=tmp_path,
            **NO_HOSTS,
        )
        argv = [
            str(stock_python()), "-m", "dynamo.common.backend.sample_main",
            "--model-name", str(tiny_model), "--namespace", "dynamo",
            "--discovery-backend", "file",
        ]  # fmt: skip
        host.spawn(argv, env=env, name="stock")
    assert _advertised(kv) == (tcp, system)


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["lite", "stock"])
@pytest.mark.parametrize(
    ("setting", "advertised"),
    [("eth1", "10.201.0.1"), ("0.0.0.0", "10.202.0.1"), ("10.201.0.1", "10.201.0.1")],
)
def test_explicit_request_plane_host_as_stock_reads_it(
    lab: Lab, tiny_model: Path, tmp_path: Path, setting: str, advertised: str, kind: str
) -> None:
    """``DYN_TCP_RPC_HOST`` may name an interface (its address is advertised) or
    the wildcard (listen everywhere, advertise the chosen address)."""
    host = two_nics_no_default(lab)
    kv = tmp_path / "kv"
    pin = {"DYN_TCP_RPC_HOST": setting}
    if kind == "lite":
        env = unpinned(worker_env(file_kv=kv, DYN_SYSTEM_PORT="9090"))
        host.spawn(worker_argv(tiny_model), env={**env, **pin}, name="lite")
    else:
        env = loopback_env(
            DYN_FILE_KV=kv,
            DYN_SYSTEM_PORT="9090",
            DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0",
            HOME=tmp_path,
            **NO_HOSTS,
        )
        argv = [
            str(stock_python()), "-m", "dynamo.common.backend.sample_main",
            "--model-name", str(tiny_model), "--namespace", "dynamo",
            "--discovery-backend", "file",
        ]  # fmt: skip
        host.spawn(argv, env={**env, **pin}, name="stock")
    assert _advertised(kv)[0] == advertised


@pytest.mark.interop
def test_multi_nic_hosts_work_once_the_cluster_addresses_are_named(cluster: Cluster) -> None:
    """Default route on a management NIC: stock and dynamo_lite both advertise the
    management address (unreachable from the cluster network), and the stock
    variables fix it, on the worker and on the frontend alike."""
    mgmt = cluster.lab.segment("mgmt", "10.202.0.0/24")
    host = cluster.worker_host("worker")
    for h in (host, cluster.fe_host):
        h.attach(mgmt)
        h.default_route("10.202.0.254")
    cluster.start_lite_worker(
        host,
        DYN_SYSTEM_PORT="9090",
        DYN_TCP_RPC_HOST=host.addr,
        DYN_SYSTEM_HOST=host.addr,
    )
    cluster.start_frontend(DYN_TCP_RESPONSE_STREAM_HOST=cluster.fe_host.addr)
    (record,) = cluster.wait_instances(1)
    assert tcp_host_of(record) == host.addr
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")
    resp = cluster.chat("hello", max_tokens=3)
    assert resp.status_code == 200, resp.text
