"""ZMTP 3.x (the ZeroMQ wire protocol), NULL security, as a sans-IO state machine.

Theory of operation. Each side of a TCP connection first sends a 64-byte
greeting: ``FF`` + 8 padding bytes + ``7F`` (the signature), the version
(major 3, minor 0 or 1), the 20-byte NUL-padded mechanism name (``NULL``),
an as-server byte and 31 filler bytes. libzmq sends the first 10 or 11 bytes
before the rest, so the parser waits for each part rather than for a whole
greeting. After the greetings the NULL mechanism exchanges one ``READY``
command each way, carrying properties (``Socket-Type``, optionally
``Identity``) as ``u8 name_len | name | u32 value_len | value``. Then
traffic is frames: a flags byte (bit 0 MORE, bit 1 LONG size, bit 2 COMMAND),
a size (1 byte, or 8 bytes big-endian when LONG) and the body. A message is a
run of frames whose last one has MORE clear. Commands are ``u8 name_len |
name | data``.

Subscriptions travel two ways: ZMTP 3.1 peers send ``SUBSCRIBE`` /
``CANCEL`` commands, ZMTP 3.0 peers (and libzmq talking to one) send a
one-frame message whose first byte is ``01`` (subscribe) or ``00`` (cancel)
followed by the topic prefix. :class:`ZmtpConnection` reports both as
:class:`Subscribe` / :class:`Cancel` events. ``PING`` is answered with
``PONG`` automatically.

Nothing here touches a socket: :meth:`ZmtpConnection.feed` takes received
bytes and returns events, the ``send_*`` methods return bytes to write.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import FrameTooLarge, MalformedFrame

__all__ = [
    "GREETING_LEN",
    "Cancel",
    "Command",
    "Message",
    "Ready",
    "Subscribe",
    "ZmtpConnection",
    "ZmtpEvent",
    "decode_properties",
    "encode_command",
    "encode_frame",
    "encode_greeting",
    "encode_message",
    "encode_properties",
]

GREETING_LEN = 64
FLAG_MORE = 0x01
FLAG_LONG = 0x02
FLAG_COMMAND = 0x04
_KNOWN_FLAGS = FLAG_MORE | FLAG_LONG | FLAG_COMMAND
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")

#: Socket types this module can speak for; the pairs are what libzmq accepts.
COMPATIBLE = {
    b"PUB": {b"SUB", b"XSUB"},
    b"XPUB": {b"SUB", b"XSUB"},
    b"SUB": {b"PUB", b"XPUB"},
    b"XSUB": {b"PUB", b"XPUB"},
    b"PUSH": {b"PULL"},
    b"PULL": {b"PUSH"},
    b"DEALER": {b"ROUTER", b"DEALER", b"REP"},
    b"ROUTER": {b"DEALER", b"REQ", b"ROUTER"},
    b"REQ": {b"REP", b"ROUTER"},
    b"REP": {b"REQ", b"DEALER"},
    b"PAIR": {b"PAIR"},
}

# A bound on one message; a hostile peer must not make us allocate without end.
DEFAULT_MAX_MESSAGE = 64 << 20


def encode_greeting(*, as_server: bool = False, minor: int = 1) -> bytes:
    # The padding repeats what libzmq sends (an old ZMTP 1.0 length field) so
    # pre-3.0 peers fail cleanly; 3.x receivers ignore it.
    signature = b"\xff" + b"\x00" * 7 + b"\x01" + b"\x7f"
    mechanism = b"NULL".ljust(20, b"\x00")
    return signature + bytes([3, minor]) + mechanism + bytes([int(as_server)]) + b"\x00" * 31


def encode_frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    flags = (FLAG_MORE if more else 0) | (FLAG_COMMAND if command else 0)
    n = len(body)
    if n < 256:
        return bytes([flags, n]) + body
    return bytes([flags | FLAG_LONG]) + _U64.pack(n) + body


def encode_message(parts: list[bytes]) -> bytes:
    if not parts:
        raise ValueError("a ZMTP message has at least one frame")
    last = len(parts) - 1
    return b"".join(encode_frame(p, more=i < last) for i, p in enumerate(parts))


def encode_command(name: bytes, data: bytes = b"") -> bytes:
    if not 0 < len(name) < 256:
        raise ValueError("command name must be 1..255 bytes")
    return encode_frame(bytes([len(name)]) + name + data, command=True)


def encode_properties(props: dict[str, bytes]) -> bytes:
    out = bytearray()
    for name, value in props.items():
        raw = name.encode("ascii")
        out += bytes([len(raw)]) + raw + _U32.pack(len(value)) + value
    return bytes(out)


def decode_properties(data: bytes) -> dict[str, bytes]:
    props: dict[str, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        n = data[pos]
        pos += 1
        if n == 0 or pos + n + 4 > end:
            raise MalformedFrame("truncated ZMTP property")
        name = data[pos : pos + n].decode("ascii", "replace")
        pos += n
        (vlen,) = _U32.unpack_from(data, pos)
        pos += 4
        if pos + vlen > end:
            raise MalformedFrame("truncated ZMTP property value")
        # Property names are case-insensitive; keep a canonical spelling.
        props[name.lower()] = bytes(data[pos : pos + vlen])
        pos += vlen
    return props


@dataclass(frozen=True)
class Ready:
    """The peer's handshake finished; ``properties`` keys are lower-case."""

    properties: dict[str, bytes]
    minor: int

    @property
    def socket_type(self) -> bytes:
        return self.properties.get("socket-type", b"")


@dataclass(frozen=True)
class Message:
    parts: list[bytes]


@dataclass(frozen=True)
class Subscribe:
    topic: bytes


@dataclass(frozen=True)
class Cancel:
    topic: bytes


@dataclass(frozen=True)
class Command:
    """A command this module does not interpret (ERROR, PONG, unknown ones)."""

    name: bytes
    data: bytes


ZmtpEvent = Ready | Message | Subscribe | Cancel | Command


@dataclass
class ZmtpConnection:
    """One end of a ZMTP 3.x connection with the NULL mechanism.

    ``socket_type`` is ours (``b"PUB"``, ``b"SUB"``, …). :meth:`start` returns
    the greeting to send; :meth:`feed` returns events and queues any bytes the
    protocol itself must answer (our READY, PONG) in :meth:`data_to_send`.
    Subscriptions arriving before the handshake ends are a protocol error.
    """

    socket_type: bytes
    identity: bytes = b""
    as_server: bool = False
    max_message: int = DEFAULT_MAX_MESSAGE
    peer_minor: int = -1
    ready: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _out: bytearray = field(default_factory=bytearray)
    _state: str = "greeting"
    _parts: list[bytes] = field(default_factory=list)
    _parts_size: int = 0

    def start(self) -> bytes:
        return encode_greeting(as_server=self.as_server)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def send_message(self, parts: list[bytes]) -> bytes:
        return encode_message(parts)

    def send_subscribe(self, topic: bytes) -> bytes:
        # 3.1 peers get the SUBSCRIBE command (what the stock frontend sends),
        # 3.0 peers the old message form.
        if self.peer_minor >= 1:
            return encode_command(b"SUBSCRIBE", topic)
        return encode_message([b"\x01" + topic])

    def send_cancel(self, topic: bytes) -> bytes:
        if self.peer_minor >= 1:
            return encode_command(b"CANCEL", topic)
        return encode_message([b"\x00" + topic])

    def feed(self, data: bytes) -> list[ZmtpEvent]:
        self._buf += data
        events: list[ZmtpEvent] = []
        while True:
            if self._state == "greeting":
                if not self._parse_greeting():
                    break
                continue
            frame = self._take_frame()
            if frame is None:
                break
            flags, body = frame
            if flags & FLAG_COMMAND:
                self._on_command(body, events)
            else:
                self._on_data_frame(flags, body, events)
        return events

    def _parse_greeting(self) -> bool:
        buf = self._buf
        if buf and buf[0] != 0xFF:
            raise MalformedFrame("not a ZMTP 3 peer: signature byte is not FF")
        if len(buf) >= 10 and buf[9] != 0x7F:
            raise MalformedFrame("not a ZMTP 3 peer: signature does not end in 7F")
        if len(buf) >= 11 and buf[10] < 3:
            raise MalformedFrame(f"ZMTP {buf[10]}.x peers are not supported")
        if len(buf) < GREETING_LEN:
            return False
        mechanism = bytes(buf[12:32]).rstrip(b"\x00")
        if mechanism != b"NULL":
            raise MalformedFrame(f"unsupported ZMTP mechanism {mechanism!r}")
        self.peer_minor = buf[11]
        del buf[:GREETING_LEN]
        props = {"Socket-Type": self.socket_type}
        if self.socket_type in (b"ROUTER", b"DEALER", b"REQ", b"REP") or self.identity:
            props["Identity"] = self.identity
        self._out += encode_command(b"READY", encode_properties(props))
        self._state = "handshake"
        return True

    def _take_frame(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        flags = buf[0]
        if flags & ~_KNOWN_FLAGS:
            raise MalformedFrame(f"reserved ZMTP frame flag bits set: {flags:#04x}")
        if flags & FLAG_LONG:
            if len(buf) < 9:
                return None
            (size,) = _U64.unpack_from(buf, 1)
            head = 9
        else:
            size = buf[1]
            head = 2
        if size > self.max_message:
            raise FrameTooLarge(size, self.max_message)
        if len(buf) < head + size:
            return None
        body = bytes(buf[head : head + size])
        del buf[: head + size]
        return flags, body

    def _on_command(self, body: bytes, events: list[ZmtpEvent]) -> None:
        if not body or len(body) < 1 + body[0]:
            raise MalformedFrame("truncated ZMTP command")
        name = bytes(body[1 : 1 + body[0]])
        data = bytes(body[1 + body[0] :])
        if self._state == "handshake":
            if name == b"ERROR":
                events.append(Command(name, data))
                return
            if name != b"READY":
                raise MalformedFrame(f"expected READY, got {name!r}")
            props = decode_properties(data)
            peer_type = props.get("socket-type", b"")
            if peer_type not in COMPATIBLE.get(self.socket_type, set()):
                raise MalformedFrame(
                    f"socket type {peer_type!r} cannot talk to {self.socket_type!r}"
                )
            self._state = "traffic"
            self.ready = True
            events.append(Ready(props, self.peer_minor))
            return
        if name == b"SUBSCRIBE":
            events.append(Subscribe(data))
        elif name == b"CANCEL":
            events.append(Cancel(data))
        elif name == b"PING":
            # PING: u16 ttl | context (up to 16 bytes); PONG echoes the context.
            self._out += encode_command(b"PONG", data[2:18])
        else:
            events.append(Command(name, data))

    def _on_data_frame(self, flags: int, body: bytes, events: list[ZmtpEvent]) -> None:
        if self._state != "traffic":
            raise MalformedFrame("ZMTP data frame before the handshake finished")
        self._parts.append(body)
        self._parts_size += len(body)
        if self._parts_size > self.max_message:
            raise FrameTooLarge(self._parts_size, self.max_message)
        if flags & FLAG_MORE:
            return
        parts, self._parts, self._parts_size = self._parts, [], 0
        # A publisher sees its subscribers' old-style subscriptions as
        # one-frame messages starting 01 / 00.
        if (
            self.socket_type in (b"PUB", b"XPUB")
            and len(parts) == 1
            and parts[0][:1]
            in (
                b"\x00",
                b"\x01",
            )
        ):
            topic = parts[0][1:]
            events.append(Subscribe(topic) if parts[0][0] == 1 else Cancel(topic))
            return
        events.append(Message(parts))
