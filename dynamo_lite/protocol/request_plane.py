"""Request-plane frames and replies (frontend ↔ worker, one persistent connection).

Frame, frontend → worker::

    u16 path_len | path (UTF-8) | u16 hdr_len | headers (JSON object) | u32 payload_len | payload

``hdr_len`` may be 0 (no header block). The payload is one TwoPart message.
The size limit (``DYN_TCP_MAX_MESSAGE_SIZE``, 32 MiB) counts the whole frame.

Reply, worker → frontend, exactly one per frame and in frame order::

    u32 len | text

An empty reply is the ack "accepted". ``Server overloaded: …`` makes the
frontend answer HTTP 529 and ``Server unavailable: …`` HTTP 503; any other
text is taken as an ack and leaves the HTTP request hanging, so a worker must
never send one except the size-limit error just before it closes.
"""

from __future__ import annotations

import json
import struct
from typing import NamedTuple

from .errors import FrameTooLarge, MalformedFrame

DEFAULT_MAX_MESSAGE_SIZE = 33_554_432

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

ACK = b"\x00\x00\x00\x00"
OVERLOADED_PREFIX = "Server overloaded: "
UNAVAILABLE_PREFIX = "Server unavailable: "


class RequestFrame(NamedTuple):
    path: str
    raw_headers: bytes
    payload: bytes

    def headers(self) -> dict[str, str]:
        """The header block as a dict; raises :class:`MalformedFrame` on garbage."""
        return parse_headers(self.raw_headers)


def encode_frame(path: str, headers: dict[str, str] | None, payload: bytes) -> bytes:
    raw_path = path.encode()
    raw_headers = json.dumps(headers, separators=(",", ":")).encode() if headers else b""
    if len(raw_path) > 0xFFFF or len(raw_headers) > 0xFFFF:
        raise MalformedFrame("path or header block longer than 65535 bytes")
    return b"".join(
        (
            _U16.pack(len(raw_path)),
            raw_path,
            _U16.pack(len(raw_headers)),
            raw_headers,
            _U32.pack(len(payload)),
            payload,
        )
    )


def parse_headers(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedFrame(f"frame headers are not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedFrame("frame headers are not a JSON object")
    # Values are strings in every capture; keep anything else as its JSON text
    # rather than refusing a frame the stock worker would route.
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


class RequestFrameDecoder:
    """Incremental decoder for the request-plane byte stream.

    Raises :class:`FrameTooLarge` as soon as a frame's total length is known
    to exceed the limit; the caller replies with :func:`too_large_reply` and
    closes, as the stock worker does. That is the only error: the length
    prefixes always parse, so a frame with a garbled path or header block is
    still returned (its path will not match, its headers parse lazily) and
    the stream stays in sync. Frames completed before an oversized one are
    returned first; the error is raised by the next call.
    """

    __slots__ = ("_buf", "_error", "_max")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_message_size
        self._error: FrameTooLarge | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[RequestFrame]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        out: list[RequestFrame] = []
        try:
            pos = self._parse(buf, out)
        except FrameTooLarge as exc:
            if not out:
                raise
            # The stream cannot resynchronise after an oversized frame; keep
            # the error for the next call and drop the rest.
            self._error = exc
            pos = len(buf)
        if pos:
            del buf[:pos]
        return out

    def _parse(self, buf: bytearray, out: list[RequestFrame]) -> int:
        pos = 0
        end = len(buf)
        limit = self._max
        while end - pos >= 2:
            (path_len,) = _U16.unpack_from(buf, pos)
            hdr_at = pos + 2 + path_len
            if hdr_at + 2 > end:
                if 8 + path_len > limit:
                    raise FrameTooLarge(8 + path_len, limit)
                break
            (hdr_len,) = _U16.unpack_from(buf, hdr_at)
            len_at = hdr_at + 2 + hdr_len
            if len_at + 4 > end:
                if 8 + path_len + hdr_len > limit:
                    raise FrameTooLarge(8 + path_len + hdr_len, limit)
                break
            (payload_len,) = _U32.unpack_from(buf, len_at)
            total = 8 + path_len + hdr_len + payload_len
            if total > limit:
                raise FrameTooLarge(total, limit)
            stop = len_at + 4 + payload_len
            if stop > end:
                break
            path = bytes(buf[pos + 2 : hdr_at]).decode(errors="replace")
            out.append(
                RequestFrame(path, bytes(buf[hdr_at + 2 : len_at]), bytes(buf[len_at + 4 : stop]))
            )
            pos = stop
        return pos


def encode_reply(text: str | bytes = b"") -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return _U32.pack(len(raw)) + raw


def overloaded_reply(detail: str) -> bytes:
    return encode_reply(OVERLOADED_PREFIX + detail)


def unavailable_reply(detail: str) -> bytes:
    return encode_reply(UNAVAILABLE_PREFIX + detail)


def unknown_endpoint_reply(path: str) -> bytes:
    return unavailable_reply(f"unknown endpoint {path}")


def too_large_reply(size: int, limit: int) -> bytes:
    return encode_reply(f"Read error: message too large: {size} bytes (max: {limit} bytes)")


class ReplyDecoder:
    """Client side: splits the worker's reply stream into reply texts."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_message_size

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = _U32.unpack_from(buf, pos)
            if size > self._max:
                raise FrameTooLarge(size, self._max)
            if pos + 4 + size > len(buf):
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out
