"""The namespace-host harness itself (tests/support/netns.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import netns
from tests.support.netns import Lab

_CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()\n"
    "    print('open')\n"
    "except OSError as e:\n"
    "    print(type(e).__name__)\n"
)


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _reach(lab: Lab, src: str, dst: str, port: int) -> str:
    host = lab.hosts[src]
    res = host.run([sys.executable, "-c", _CONNECT, lab.hosts[dst].addr, str(port)])
    return res.stdout.strip()


def test_hosts_are_isolated_machines_on_a_private_subnet(lab: Lab, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "weights").write_text("x")
    seg = lab.segment()
    a = lab.host("alpha", seg)
    b = lab.host("beta", seg, hide=[secret])
    assert (a.addr, b.addr) == ("10.201.0.1", "10.201.0.2")
    # Loopback up, no default route: nothing can leave the lab.
    assert "UP" in a.ip("-br", "link", "show", "lo").stdout
    assert a.ip("route", "show", "default").stdout.strip() == ""
    # Host names resolve through the per-host /etc/hosts.
    assert b.run(["getent", "hosts", "alpha"]).stdout.split()[0] == a.addr
    # The hidden directory is empty on beta only, and only inside its processes.
    assert b.run(["ls", "-A", str(secret)]).stdout == ""
    assert a.run(["ls", "-A", str(secret)]).stdout.split() == ["weights"]
    assert (secret / "weights").exists()
    # A listener on alpha is reachable from beta; not once the cable is pulled
    # or the pair is blackholed.
    a.spawn([sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0"], name="http")
    from tests.support.lite import wait_until

    wait_until(lambda: _reach(lab, "beta", "alpha", 8080) == "open", timeout=30, what="listener")
    a.link_down()
    assert _reach(lab, "beta", "alpha", 8080) != "open"
    a.link_up()
    wait_until(lambda: _reach(lab, "beta", "alpha", 8080) == "open", timeout=30, what="healed")
    a.block(b)
    assert _reach(lab, "beta", "alpha", 8080) != "open"
    a.unblock(b)
    assert _reach(lab, "beta", "alpha", 8080) == "open"
    # The test process itself can step onto a host, one thread at a time.
    import httpx

    with b.entered(), httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(f"http://{a.addr}:8080/").status_code == 200


def test_everything_is_removed_even_when_the_test_fails(tmp_path: Path) -> None:
    netns.lab_or_fail()
    with pytest.raises(RuntimeError, match="boom"), Lab(tmp_path / "lab") as lab:
        seg = lab.segment()
        host = lab.host("h", seg)
        proc = host.spawn(["sleep", "600"], name="sleeper")
        tag = lab.tag
        assert tag in _namespaces()
        raise RuntimeError("boom")
    assert tag not in _namespaces()
    assert not proc.running
    assert not list(Path("/etc/netns").glob(f"dl{tag}-*"))


def test_namespaces_of_a_killed_run_are_swept(tmp_path: Path) -> None:
    netns.lab_or_fail()
    # A run that was SIGKILLed: its pid is gone, its namespace is not.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"dl{dead.pid}x0000-orphan"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Lab(tmp_path / "lab"):
            assert stale not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_missing_namespaces_fail_under_ci_and_skip_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netns, "netns_problem", lambda: "no CAP_SYS_ADMIN")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CAP_SYS_ADMIN"):
        netns.lab_or_fail()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        netns.lab_or_fail()
