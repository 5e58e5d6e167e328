"""Which local address a process tells its peers to dial, chosen as stock Dynamo does.

Theory of operation. A listener that peers on other hosts must reach (the
request plane, the self-hosted model files, the client's call-home server)
needs one concrete address to put in discovery. Unless the operator names
one (``DYN_TCP_RPC_HOST``, ``DYN_SYSTEM_HOST``,
``DYN_TCP_RESPONSE_STREAM_HOST``), the stock 1.6.1 runtime picks it from the
interface table, and so do we, with the same precedence (observed by running
the stock worker in network namespaces):

1. IPv4 first. With an IPv4 default route: the primary address of the
   interface that route leaves by (even when the cluster network is another
   NIC: the default-route NIC wins).
2. No IPv4 default route (an isolated cluster network): the primary IPv4
   address of the first interface, in interface-index order, that is up and
   not loopback. No name is special (``docker0`` counts like ``eth0``).
3. No usable IPv4 address at all: the same two steps for IPv6, global scope
   only (never link-local); an IPv6 default route does not outrank IPv4.
4. Nothing: ``127.0.0.1``.

:func:`choose` is the pure rule over an :class:`InterfaceTable`;
:func:`read_table` builds the table from ``/proc/net`` and two ioctls (no
dependency, Linux only; elsewhere :func:`advertise_host` falls back to asking
the kernel for an outbound route).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc

logger = logging.getLogger(__name__)

__all__ = [
    "Interface",
    "InterfaceTable",
    "advertise_host",
    "bind_and_advertise",
    "choose",
    "explicit_or_detect",
    "format_host_port",
    "interface_address",
    "read_table",
    "system_url_host",
    "tcp_listener",
    "url_host",
]

LOOPBACK = "127.0.0.1"
Family = Literal[4, 6]

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_RTF_UP = 0x1
_RTF_REJECT = 0x200


@dataclass(frozen=True)
class Interface:
    """A network interface as the address rule sees it."""

    name: str
    index: int
    up: bool
    loopback: bool = False
    #: Primary address first.
    ipv4: tuple[str, ...] = ()
    #: Global-scope addresses only.
    ipv6: tuple[str, ...] = ()


@dataclass(frozen=True)
class InterfaceTable:
    """The host's interfaces and which ones the default routes leave by."""

    interfaces: tuple[Interface, ...]
    #: Name of the interface the IPv4 / IPv6 default route leaves by, if any.
    default_v4: str | None = None
    default_v6: str | None = None


def _candidates(table: InterfaceTable, family: Family) -> list[tuple[Interface, str]]:
    out: list[tuple[Interface, str]] = []
    for iface in sorted(table.interfaces, key=lambda i: i.index):
        if not iface.up or iface.loopback:
            continue
        addrs = iface.ipv4 if family == 4 else iface.ipv6
        for addr in addrs:
            ip = ipaddress.ip_address(addr)
            if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
                continue
            out.append((iface, addr))
            break  # the primary one
    return out


def choose_family(table: InterfaceTable, family: Family) -> str | None:
    """The advertised address of one family, or None when it has none."""
    candidates = _candidates(table, family)
    default = table.default_v4 if family == 4 else table.default_v6
    for iface, addr in candidates:
        if iface.name == default:
            return addr
    return candidates[0][1] if candidates else None


def choose(table: InterfaceTable, family: Family | None = None) -> str:
    """The stock rule (module docstring); ``family`` restricts it to one family."""
    families: tuple[Family, ...] = (4, 6) if family is None else (family,)
    for fam in families:
        addr = choose_family(table, fam)
        if addr is not None:
            return addr
    return LOOPBACK


# --- reading the table (Linux) -------------------------------------------------


def _ioctl_ifreq(sock: socket.socket, request: int, name: str) -> bytes:
    ifreq = struct.pack("16s16x", name.encode()[:15])
    return fcntl.ioctl(sock.fileno(), request, ifreq)


def _default_route_v4(proc_net: Path) -> str | None:
    best: tuple[int, str] | None = None
    with contextlib.suppress(OSError):
        for line in (proc_net / "route").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) < 8 or f[1] != "00000000" or f[7] != "00000000":
                continue
            flags, metric = int(f[3], 16), int(f[6])
            if flags & _RTF_UP and not flags & _RTF_REJECT and (best is None or metric < best[0]):
                best = (metric, f[0])
    return None if best is None else best[1]


def _default_route_v6(proc_net: Path) -> str | None:
    best: tuple[int, str] | None = None
    with contextlib.suppress(OSError):
        for line in (proc_net / "ipv6_route").read_text().splitlines():
            f = line.split()
            if len(f) < 10 or f[0] != "0" * 32 or f[1] != "00":
                continue
            metric, flags, name = int(f[5], 16), int(f[8], 16), f[9]
            if name == "lo" or not flags & _RTF_UP or flags & _RTF_REJECT:
                continue
            if best is None or metric < best[0]:
                best = (metric, name)
    return None if best is None else best[1]


def _ipv6_addresses(proc_net: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with contextlib.suppress(OSError):
        for line in (proc_net / "if_inet6").read_text().splitlines():
            f = line.split()
            if len(f) < 6:
                continue
            raw, scope, flags, name = f[0], int(f[3], 16), int(f[4], 16), f[5]
            # Global scope only; skip tentative (0x40) and DAD-failed (0x08) addresses.
            if scope != 0 or flags & 0x48:
                continue
            addr = str(ipaddress.IPv6Address(bytes.fromhex(raw)))
            out.setdefault(name, []).append(addr)
    return out


def read_table(proc_net: Path = Path("/proc/net")) -> InterfaceTable:
    """This network namespace's interfaces and default routes."""
    v6 = _ipv6_addresses(proc_net)
    interfaces: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, name in socket.if_nameindex():
            try:
                flags = struct.unpack_from("H", _ioctl_ifreq(sock, _SIOCGIFFLAGS, name), 16)[0]
            except OSError:
                continue  # vanished meanwhile
            v4: tuple[str, ...] = ()
            with contextlib.suppress(OSError):  # EADDRNOTAVAIL: no IPv4 address
                raw = _ioctl_ifreq(sock, _SIOCGIFADDR, name)
                v4 = (socket.inet_ntoa(raw[20:24]),)
            interfaces.append(
                Interface(
                    name=name,
                    index=index,
                    up=bool(flags & _IFF_UP),
                    loopback=bool(flags & _IFF_LOOPBACK),
                    ipv4=v4,
                    ipv6=tuple(v6.get(name, ())),
                )
            )
    return InterfaceTable(
        tuple(interfaces), _default_route_v4(proc_net), _default_route_v6(proc_net)
    )


def _route_probe() -> str:
    """Outside Linux: the source address of the route towards a private address."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # a UDP connect sends nothing
            addr: str = s.getsockname()[0]
            return addr
    except OSError:
        return LOOPBACK


def detect(family: Family | None = None) -> str:
    """The stock choice for this host (see the module docstring)."""
    if not Path("/proc/net/route").exists():
        return _route_probe()
    try:
        return choose(read_table(), family)
    except OSError as exc:
        logger.warning("cannot read the interface table (%s); advertising %s", exc, LOOPBACK)
        return LOOPBACK


def interface_address(name: str, table: InterfaceTable | None = None) -> str | None:
    """The address of the interface called ``name`` (IPv4 first), if there is one."""
    try:
        table = read_table() if table is None else table
    except OSError:
        return None
    for iface in table.interfaces:
        if iface.name == name:
            return next(iter(iface.ipv4 + iface.ipv6), None)
    return None


def explicit_or_detect(explicit: str | None, variable: str = "") -> str:
    """An operator's host setting, else the stock choice.

    As stock, the setting may be an IP address or an interface name
    (``eth1`` → that interface's address). Unlike stock, which refuses them,
    a host name is kept as given (peers resolve it).
    """
    explicit = (explicit or "").strip()
    if explicit:
        if _is_ip(explicit) or not Path("/proc/net/route").exists():
            return explicit
        return interface_address(explicit) or explicit
    addr = detect()
    if addr == LOOPBACK:
        hint = f"; set {variable} to an address peers can reach" if variable else ""
        logger.warning("no usable non-loopback address found, advertising %s%s", LOOPBACK, hint)
    return addr


def bind_and_advertise(explicit: str | None, variable: str = "") -> tuple[str, str]:
    """(address to listen on, address to advertise) for a host setting.

    As stock: a wildcard (``0.0.0.0`` / ``::``) listens everywhere and
    advertises the chosen address; anything else is both.
    """
    value = (explicit or "").strip()
    if value in ("0.0.0.0", "::"):
        return value, detect(6 if value == "::" and detect(4) == LOOPBACK else None)
    host = explicit_or_detect(value, variable)
    return host, host


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


def advertise_host(
    variable: str | None = None,
    env: Mapping[str, str] | None = None,
    family: Family | None = None,
) -> str:
    """``$variable`` in ``env`` when set (the operator's word wins), else :func:`detect`."""
    if variable is not None and env is not None:
        explicit = (env.get(variable) or "").strip()
        if explicit:
            return explicit_or_detect(explicit, variable)
    addr = detect(family)
    if addr == LOOPBACK:
        hint = f"; set {variable} to an address peers can reach" if variable else ""
        logger.warning("no usable non-loopback address found, advertising %s%s", LOOPBACK, hint)
    return addr


def url_host(host: str) -> str:
    """``host`` as it goes into a URL or ``host:port`` (IPv6 literals bracketed)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def format_host_port(host: str, port: int) -> str:
    return f"{url_host(host)}:{port}"


def system_url_host(bind_host: str) -> str:
    """The host for URLs pointing at the system server bound to ``bind_host``.

    A wildcard bind is advertised as stock does: the chosen address of the
    wildcard's family (``0.0.0.0`` → IPv4 only, so a host without IPv4 gets
    ``127.0.0.1``, as stock warns); a concrete address is used as is.
    """
    if bind_host in ("", "0.0.0.0"):
        return detect(4)
    if bind_host == "::":
        addr = detect(6)
        return addr if addr != LOOPBACK else detect(4)
    return bind_host


async def tcp_listener(host: str | None, port: int) -> anyio.abc.Listener[Any]:
    """An anyio TCP listener on ``host:port``.

    ``anyio.create_tcp_listener`` resolves with ``AI_ADDRCONFIG``, which refuses
    an IPv4 literal (``0.0.0.0`` included) on a host with no non-loopback IPv4
    address: the stock binds it anyway, so an address literal is bound
    directly when the lookup fails.
    """
    try:
        return await anyio.create_tcp_listener(
            local_host=host or None, local_port=port, reuse_port=False
        )
    except socket.gaierror:
        literal = (host or "").strip("[]")
        if (
            not literal
            or not _is_ip(literal)
            or not hasattr(anyio.abc.SocketListener, "from_socket")
        ):
            raise
    family = socket.AF_INET6 if ":" in literal else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((literal, port))
        sock.listen(128)
        sock.setblocking(False)
        listener: anyio.abc.Listener[Any] = await anyio.abc.SocketListener.from_socket(sock)
    except BaseException:
        sock.close()
        raise
    return listener
