"""The advertised-address rule on fake interface tables (the real thing runs in
namespaces in tests/interop/test_multihost_addresses.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamo_lite import netaddr
from dynamo_lite.netaddr import Interface, InterfaceTable, choose

LO = Interface("lo", 1, up=True, loopback=True, ipv4=("127.0.0.1",))


def table(*ifaces: Interface, v4: str | None = None, v6: str | None = None) -> InterfaceTable:
    return InterfaceTable((LO, *ifaces), v4, v6)


def test_isolated_cluster_network_without_default_route() -> None:
    assert choose(table(Interface("eth0", 2, True, ipv4=("10.201.0.2",)))) == "10.201.0.2"


def test_default_route_nic_wins_over_the_first_nic() -> None:
    t = table(
        Interface("eth0", 2, True, ipv4=("10.201.0.2",)),
        Interface("eth1", 3, True, ipv4=("10.202.0.2",)),
        v4="eth1",
    )
    assert choose(t) == "10.202.0.2"


def test_without_default_route_the_lowest_index_wins_not_the_name_or_address() -> None:
    t = table(
        Interface("zz9", 3, True, ipv4=("10.1.0.1",)),
        Interface("aa1", 2, True, ipv4=("10.202.0.1",)),
    )
    assert choose(t) == "10.202.0.1"


def test_down_and_loopback_interfaces_are_skipped_and_names_are_not_special() -> None:
    t = table(
        Interface("eth0", 2, False, ipv4=("10.202.0.1",)),
        Interface("docker0", 3, True, ipv4=("172.17.0.1",)),
        Interface("eth1", 4, True, ipv4=("10.201.0.1",)),
    )
    assert choose(t) == "172.17.0.1"


def test_primary_address_of_an_interface() -> None:
    t = table(Interface("eth0", 2, True, ipv4=("10.201.0.1", "10.5.0.1")))
    assert choose(t) == "10.201.0.1"


def test_ipv4_beats_an_ipv6_default_route() -> None:
    t = table(
        Interface("eth0", 2, True, ipv4=("10.201.0.1",)),
        Interface("eth1", 3, True, ipv6=("fd00:201::1",)),
        v6="eth1",
    )
    assert choose(t) == "10.201.0.1"


def test_ipv6_only_host_and_link_local_is_never_chosen() -> None:
    t = table(
        Interface("eth0", 2, True, ipv6=("fe80::1",)),
        Interface("eth1", 3, True, ipv6=("fd00:201::1",)),
    )
    assert choose(t) == "fd00:201::1"
    assert choose(t, 4) == "127.0.0.1"  # the system server's 0.0.0.0 bind (as stock)


def test_nothing_usable_is_loopback() -> None:
    assert choose(table()) == "127.0.0.1"
    assert choose(table(Interface("eth0", 2, False, ipv4=("10.0.0.1",)))) == "127.0.0.1"


def test_explicit_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"DYN_TCP_RPC_HOST": "worker-7.example"}
    assert netaddr.advertise_host("DYN_TCP_RPC_HOST", env) == "worker-7.example"
    monkeypatch.setattr(netaddr, "detect", lambda family=None: "10.9.9.9")
    assert netaddr.advertise_host("DYN_TCP_RPC_HOST", {"DYN_TCP_RPC_HOST": " "}) == "10.9.9.9"


def test_host_port_formatting() -> None:
    assert netaddr.format_host_port("fd00::1", 80) == "[fd00::1]:80"
    assert netaddr.format_host_port("10.0.0.1", 80) == "10.0.0.1:80"
    assert netaddr.system_url_host("10.3.3.3") == "10.3.3.3"


def test_proc_net_parsing(tmp_path: Path) -> None:
    (tmp_path / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth1\t00000000\tFE00CA0A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t00000000\tFE00C90A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t0000C90A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    (tmp_path / "ipv6_route").write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n"
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fd0002010000000000000000000000fe 00000400 00000000 00000000 00000003 eth1\n"
    )
    (tmp_path / "if_inet6").write_text(
        "fd000201000000000000000000000001 03 40 00 80     eth1\n"
        "fe800000000000000000000000000001 03 40 20 80     eth1\n"
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fd000201000000000000000000000002 03 40 00 c0     eth1\n"
    )
    assert netaddr._default_route_v4(tmp_path) == "eth0"  # lowest metric
    assert netaddr._default_route_v6(tmp_path) == "eth1"  # lo's reject route ignored
    assert netaddr._ipv6_addresses(tmp_path) == {"eth1": ["fd00:201::1"]}


def test_reads_this_hosts_table() -> None:
    t = netaddr.read_table()
    assert any(i.loopback and "127.0.0.1" in i.ipv4 for i in t.interfaces)


def test_an_interface_name_means_its_address_as_in_stock() -> None:
    t = table(
        Interface("eth0", 2, True, ipv4=("10.202.0.1",)),
        Interface("eth1", 3, True, ipv4=("10.201.0.1",)),
        Interface("v6", 4, True, ipv6=("fd00::1",)),
    )
    assert netaddr.interface_address("eth1", t) == "10.201.0.1"
    assert netaddr.interface_address("v6", t) == "fd00::1"
    assert netaddr.interface_address("nope", t) is None
    lo = netaddr.explicit_or_detect("lo")
    assert lo == "127.0.0.1"
    assert netaddr.explicit_or_detect("10.1.2.3") == "10.1.2.3"
    assert netaddr.explicit_or_detect("some-host") == "some-host"


def test_a_wildcard_setting_listens_everywhere_and_advertises_the_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netaddr, "detect", lambda family=None: "10.9.9.9")
    assert netaddr.bind_and_advertise("0.0.0.0") == ("0.0.0.0", "10.9.9.9")
    assert netaddr.bind_and_advertise("10.1.1.1") == ("10.1.1.1", "10.1.1.1")
    assert netaddr.bind_and_advertise(None) == ("10.9.9.9", "10.9.9.9")
