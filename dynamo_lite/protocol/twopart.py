"""TwoPart messages: ``u64 header_len | u64 body_len | u64 checksum | header | body``.

The request payload and every frame of the response stream use this layout.
Release builds of Dynamo always send checksum 0 and never verify it, so the
encoder writes 0 and the decoder ignores the field.

Kinds by which part is empty: header-only frames carry control JSON
(handshake, prologue, sentinel, kill, stop), data-only frames carry response
items, and only the request payload has both.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import FrameTooLarge, MalformedFrame

PREFIX = struct.Struct(">QQQ")
PREFIX_LEN = PREFIX.size  # 24

# Response-stream frames have no limit in stock; this bound only keeps a
# hostile peer from making us allocate without end.
DEFAULT_MAX_TWOPART = 1 << 32


class TwoPart(NamedTuple):
    header: bytes
    body: bytes


def encode(header: bytes = b"", body: bytes = b"") -> bytes:
    return PREFIX.pack(len(header), len(body), 0) + header + body


def encode_body_only(body: bytes) -> bytes:
    """Hot path for response items: one concatenation, no header copy."""
    return PREFIX.pack(0, len(body), 0) + body


def decode(data: bytes) -> TwoPart:
    """Decode exactly one TwoPart message occupying all of ``data``."""
    if len(data) < PREFIX_LEN:
        raise MalformedFrame(f"TwoPart message shorter than its {PREFIX_LEN}-byte prefix")
    header_len, body_len, _checksum = PREFIX.unpack_from(data)
    total = PREFIX_LEN + header_len + body_len
    if total != len(data):
        raise MalformedFrame(
            f"TwoPart lengths ({header_len}+{body_len}) disagree with the {len(data) - PREFIX_LEN}"
            " bytes present"
        )
    split = PREFIX_LEN + header_len
    return TwoPart(bytes(data[PREFIX_LEN:split]), bytes(data[split:]))


class TwoPartDecoder:
    """Incremental decoder for a stream of TwoPart messages.

    ``feed`` accepts any re-chunking of the byte stream and returns the
    messages completed so far; partial input stays buffered.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_message_size: int = DEFAULT_MAX_TWOPART) -> None:
        self._buf = bytearray()
        self._max = max_message_size

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[TwoPart]:
        buf = self._buf
        buf += data
        out: list[TwoPart] = []
        pos = 0
        end = len(buf)
        while end - pos >= PREFIX_LEN:
            header_len, body_len, _checksum = PREFIX.unpack_from(buf, pos)
            size = header_len + body_len
            if size > self._max:
                raise FrameTooLarge(size + PREFIX_LEN, self._max)
            stop = pos + PREFIX_LEN + size
            if stop > end:
                break
            split = pos + PREFIX_LEN + header_len
            out.append(TwoPart(bytes(buf[pos + PREFIX_LEN : split]), bytes(buf[split:stop])))
            pos = stop
        if pos:
            del buf[:pos]
        return out
