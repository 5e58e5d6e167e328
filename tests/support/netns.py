"""Hosts made of Linux network namespaces, for multi-host tests on one machine.

A :class:`Lab` owns everything it creates and removes all of it on
:meth:`Lab.close` (also after a failure, and from ``atexit``):

* a *switch* namespace holding one Linux bridge per :class:`Segment` (a
  private subnet such as ``10.201.0.0/24``); nothing of it exists in the
  machine's own namespace, so no test traffic can leave the lab;
* one namespace per :class:`Host`, joined to segments by veth pairs whose
  host end is ``eth0``, ``eth1``, ... Loopback is up, there is no default
  route unless a test adds one;
* ``/etc/netns/<ns>/hosts``: ``ip netns exec`` bind-mounts it over
  ``/etc/hosts``, so host names resolve inside the lab as in a cluster;
* the processes started with :meth:`Host.spawn` (each run as
  ``ip netns exec <ns> ...``, which also gives it a private mount namespace:
  ``hide`` mounts an empty tmpfs over directories that host must not see).

The test process itself stays in the machine's namespace; :meth:`Host.entered`
switches the *calling thread* into a host's network namespace (``setns``), so
a test can be an HTTP client "on" that host without a subprocess.

Namespace names carry the creating process id and a random tag, so parallel
runs on one machine never collide, and a run that was killed outright leaves
nothing for long: the next lab removes namespaces whose creator is gone.

Partitions: :meth:`Host.link_down` pulls a host's cable (its switch port goes
down); :meth:`Host.block` silently drops traffic to one peer (blackhole
route), which is what a partition between two hosts looks like. Slow links:
``tc ... tbf`` in a host (this kernel has no ``netem``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.services import ManagedProcess

__all__ = ["Bind", "Host", "Lab", "Segment", "lab_or_fail", "netns_problem"]

_CLONE_NEWNET = 0x40000000
#: A bind mount: (source, target, read-only).
Bind = tuple[Path, Path, bool]
_libc = ctypes.CDLL(None, use_errno=True)
_LABS: set[Lab] = set()
_LABS_LOCK = threading.Lock()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_problem() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = f"dlprobe-{secrets.token_hex(3)}"
    res = _ip("netns", "add", name, check=False)
    if res.returncode != 0:
        return f"ip netns add failed: {res.stderr.strip()}"
    try:
        res = _ip("-n", name, "link", "add", "br0", "type", "bridge", check=False)
        if res.returncode != 0:
            return f"cannot create a bridge: {res.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def lab_or_fail() -> None:
    """Skip when namespaces are unavailable; fail instead under CI (``CI`` set)."""
    problem = netns_problem()
    if problem is None:
        return
    ci = os.environ.get("CI", "").strip().lower()
    msg = f"multi-host tests need network namespaces (run as root): {problem}"
    if ci not in ("", "0", "false", "no"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@dataclass
class Segment:
    """One L2 network: a bridge in the lab's switch namespace."""

    lab: Lab
    name: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    bridge: str
    next_host: int = 1

    def allocate(self) -> str:
        addr = self.network.network_address + self.next_host
        self.next_host += 1
        return str(addr)


@dataclass
class Host:
    """A machine in the lab: its own network namespace (and, per process, mounts)."""

    lab: Lab
    name: str
    ns: str
    hide: tuple[Path, ...] = ()
    addresses: dict[str, str] = field(default_factory=dict)  # segment name -> address
    ports: dict[str, tuple[str, str]] = field(default_factory=dict)  # segment -> (ifname, port)
    procs: list[ManagedProcess] = field(default_factory=list)

    @property
    def addr(self) -> str:
        """The address on the first segment this host was attached to."""
        return next(iter(self.addresses.values()))

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _ip("-n", self.ns, *args, check=check)

    def attach(self, segment: Segment, address: str | None = None) -> str:
        ifname = f"eth{len(self.ports)}"
        port = f"p{len(self.lab.hosts)}-{len(self.ports)}-{self.name}"[:15]
        address = address or segment.allocate()
        sw = self.lab.switch
        _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", self.ns)
        _ip("-n", sw, "link", "set", port, "master", segment.bridge)
        _ip("-n", sw, "link", "set", port, "up")
        v6 = segment.network.version == 6
        if v6:
            # Duplicate address detection would delay the address by a second or two.
            self.ip("link", "set", ifname, "addrgenmode", "none", check=False)
            _sysctl(self.ns, f"net.ipv6.conf.{ifname}.accept_dad", "0")
        self.ip("addr", "add", f"{address}/{segment.network.prefixlen}", "dev", ifname)
        self.ip("link", "set", ifname, "up")
        self._wait_carrier(ifname)
        self.addresses[segment.name] = address
        self.ports[segment.name] = (ifname, port)
        self.lab.write_hosts()
        return address

    def _wait_carrier(self, ifname: str, timeout: float = 10.0) -> None:
        # The kernel reports carrier asynchronously (linkwatch): wait for it so a
        # process started next sees a fully up interface.
        deadline = time.monotonic() + timeout
        while "LOWER_UP" not in self.ip("link", "show", "dev", ifname).stdout or (
            "NO-CARRIER" in self.ip("link", "show", "dev", ifname).stdout
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {ifname} has no carrier after {timeout}s")
            time.sleep(0.02)

    def ifname(self, segment: Segment) -> str:
        return self.ports[segment.name][0]

    def default_route(self, via: str) -> None:
        family = "-6" if ":" in via else "-4"
        self.ip(family, "route", "replace", "default", "via", via)

    # -- partitions ------------------------------------------------------------

    def link_down(self, segment: Segment | None = None) -> None:
        """Pull the cable: the switch port goes down (the host sees NO-CARRIER)."""
        for name, (_ifname, port) in self.ports.items():
            if segment is None or segment.name == name:
                _ip("-n", self.lab.switch, "link", "set", port, "down")

    def link_up(self, segment: Segment | None = None) -> None:
        for name, (_ifname, port) in self.ports.items():
            if segment is None or segment.name == name:
                _ip("-n", self.lab.switch, "link", "set", port, "up")

    def block(self, other: Host) -> None:
        """Drop everything between this host and ``other``, both ways, silently."""
        for a, b in ((self, other), (other, self)):
            for addr in b.addresses.values():
                a.ip("route", "add", "blackhole", addr)

    def unblock(self, other: Host) -> None:
        for a, b in ((self, other), (other, self)):
            for addr in b.addresses.values():
                a.ip("route", "del", "blackhole", addr, check=False)

    # -- processes ---------------------------------------------------------------

    def argv(self, argv: Sequence[str | os.PathLike[str]], binds: Sequence[Bind] = ()) -> list[str]:
        """``argv`` run on this host (its network and a private mount namespace).

        ``binds`` are ``(source, target, read_only)`` bind mounts made first, like
        a container's volumes (each target must exist).
        """
        cmd = [os.fspath(a) for a in argv]
        prefix = ["ip", "netns", "exec", self.ns]
        if not self.hide and not binds:
            return prefix + cmd
        # ip netns exec already unshares the mount namespace (slave propagation),
        # so these mounts are seen by this process tree only.
        steps: list[str] = []
        params: list[str] = []
        for path in self.hide:
            params.append(str(path))
            steps.append(f'mount -t tmpfs -o size=64k,mode=0755 dl-hidden "${{{len(params)}}}"')
        for source, target, read_only in binds:
            params += [str(source), str(target)]
            src, dst = f'"${{{len(params) - 1}}}"', f'"${{{len(params)}}}"'
            steps.append(f"mount --bind {src} {dst}")
            if read_only:
                steps.append(f"mount -o remount,bind,ro {dst}")
        script = " && ".join([*steps, f'shift {len(params)} && exec "$@"'])
        return [*prefix, "sh", "-c", script, "sh", *params, *cmd]

    def spawn(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        stop_timeout: float = 20.0,
        binds: Sequence[Bind] = (),
    ) -> ManagedProcess:
        name = name or f"{self.name}-{Path(os.fspath(argv[0])).name}"
        proc = ManagedProcess(
            self.argv(argv, binds),
            env=env,
            name=name,
            log_path=log_path or self.lab.workdir / f"{name}.log",
            cwd=cwd,
            stop_timeout=stop_timeout,
        )
        self.procs.append(proc)
        return proc.start()

    def run(
        self, argv: Sequence[str | os.PathLike[str]], timeout: float = 60.0, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            self.argv(argv), capture_output=True, text=True, timeout=timeout, **kw
        )

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with the calling thread inside this host's network.

        Sockets opened in the block stay in that namespace afterwards.
        """
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(10)
        # Anything a process left running in this namespace was started by us.
        res = _ip("netns", "pids", self.ns, check=False)
        for pid in res.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)


def _sysctl(ns: str, key: str, value: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"],
        capture_output=True,
        timeout=30,
    )


class Lab:
    """A set of hosts and segments, all removed by :meth:`close`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        _sweep_dead_runs()
        # The creator's pid in every name lets a later run remove what a killed
        # (SIGKILLed, so no atexit) run left behind.
        self.tag = f"{os.getpid()}x{secrets.token_hex(2)}"
        self.switch = f"dl{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self.segments: dict[str, Segment] = {}
        self._namespaces: list[str] = []
        self._closed = False
        with _LABS_LOCK:
            _LABS.add(self)
        self._add_ns(self.switch)

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def segment(self, name: str = "cluster", subnet: str = "10.201.0.0/24") -> Segment:
        bridge = f"br{len(self.segments)}"
        _ip("-n", self.switch, "link", "add", bridge, "type", "bridge")
        _ip("-n", self.switch, "link", "set", bridge, "up")
        seg = Segment(self, name, ipaddress.ip_network(subnet), bridge)
        self.segments[name] = seg
        return seg

    def host(
        self,
        name: str,
        *segments: Segment,
        hide: Sequence[Path] = (),
    ) -> Host:
        """A new host attached to ``segments`` (eth0, eth1, ... in that order)."""
        ns = f"dl{self.tag}-{name}"
        self._add_ns(ns)
        host = Host(self, name, ns, tuple(Path(p) for p in hide))
        self.hosts[name] = host
        for seg in segments:
            host.attach(seg)
        return host

    def write_hosts(self) -> None:
        """Each host's ``/etc/hosts``: localhost, itself, and every host by name."""
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        for host in self.hosts.values():
            for addr in host.addresses.values():
                lines.append(f"{addr} {host.name}")
        text = "\n".join(lines) + "\n"
        for host in self.hosts.values():
            etc = Path("/etc/netns") / host.ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(text)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            host.stop_all()
        for ns in reversed(self._namespaces):
            _ip("netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        with _LABS_LOCK:
            _LABS.discard(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NS_NAME = re.compile(r"^dl(\d+)x[0-9a-f]+-\S+")


def _sweep_dead_runs() -> None:
    res = _ip("netns", "list", check=False)
    for line in res.stdout.splitlines():
        match = _NS_NAME.match(line.strip())
        if match is None or _alive(int(match.group(1))):
            continue
        name = match.group(0)
        for pid in _ip("netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        _ip("netns", "del", name, check=False)
        shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@atexit.register
def _close_all() -> None:
    with _LABS_LOCK:
        labs = list(_LABS)
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.close()
