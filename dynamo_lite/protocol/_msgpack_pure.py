"""A small msgpack encoder for the pure-Python path.

msgpack's own pure-Python fallback spends about 10 µs per response item,
most of it in generic dispatch. Items are small maps of strings, ints, lists
and floats, so a direct type switch with cached key encodings does the same
work several times faster. It produces exactly the bytes of
``msgpack.packb(obj, use_bin_type=True)`` (the tests compare both on random
values) and is only used when msgpack's C extension is not loaded.
"""

from __future__ import annotations

import struct
from typing import Any

_pack_d = struct.Struct(">d").pack
_B, _H, _I, _Q = (struct.Struct(f">{c}").pack for c in "BHIQ")
_b, _h, _i, _q = (struct.Struct(f">{c}").pack for c in "bhiq")

_NIL, _FALSE, _TRUE = b"\xc0", b"\xc2", b"\xc3"
_FIXINT = [bytes([i]) for i in range(128)]
_str_cache: dict[str, bytes] = {}


def _str(value: str) -> bytes:
    raw = value.encode()
    n = len(raw)
    if n < 32:
        return bytes([0xA0 | n]) + raw
    if n < 0x100:
        return b"\xd9" + _B(n) + raw
    if n < 0x10000:
        return b"\xda" + _H(n) + raw
    return b"\xdb" + _I(n) + raw


def _int(value: int) -> bytes:
    if value >= 0:
        if value < 0x80:
            return _FIXINT[value]
        if value < 0x100:
            return b"\xcc" + _B(value)
        if value < 0x10000:
            return b"\xcd" + _H(value)
        if value < 0x100000000:
            return b"\xce" + _I(value)
        if value < 0x10000000000000000:
            return b"\xcf" + _Q(value)
        raise OverflowError("Integer value out of range")
    if value >= -32:
        return bytes([value & 0xFF])
    if value >= -0x80:
        return b"\xd0" + _b(value)
    if value >= -0x8000:
        return b"\xd1" + _h(value)
    if value >= -0x80000000:
        return b"\xd2" + _i(value)
    if value >= -0x8000000000000000:
        return b"\xd3" + _q(value)
    raise OverflowError("Integer value out of range")


def _pack(obj: Any, out: list[bytes]) -> None:
    t = type(obj)
    if t is int:
        out.append(_int(obj))
    elif t is str:
        cached = _str_cache.get(obj)
        if cached is None:
            cached = _str(obj)
            if len(_str_cache) < 4096 and len(obj) < 64:
                _str_cache[obj] = cached
        out.append(cached)
    elif t is list or t is tuple:
        n = len(obj)
        out.append(
            bytes([0x90 | n]) if n < 16 else (b"\xdc" + _H(n) if n < 0x10000 else b"\xdd" + _I(n))
        )
        for item in obj:
            _pack(item, out)
    elif t is dict:
        n = len(obj)
        out.append(
            bytes([0x80 | n]) if n < 16 else (b"\xde" + _H(n) if n < 0x10000 else b"\xdf" + _I(n))
        )
        for key, value in obj.items():
            _pack(key, out)
            _pack(value, out)
    elif obj is None:
        out.append(_NIL)
    elif obj is True:
        out.append(_TRUE)
    elif obj is False:
        out.append(_FALSE)
    elif t is float:
        out.append(b"\xcb" + _pack_d(obj))
    elif t is bytes or t is bytearray or t is memoryview:
        raw = bytes(obj)
        n = len(raw)
        out.append(
            (b"\xc4" + _B(n))
            if n < 0x100
            else (b"\xc5" + _H(n) if n < 0x10000 else b"\xc6" + _I(n))
        )
        out.append(raw)
    elif isinstance(obj, int):  # bool handled above; int subclasses (IntEnum)
        out.append(_int(int(obj)))
    elif isinstance(obj, str):
        out.append(_str(str(obj)))
    elif isinstance(obj, float):
        out.append(b"\xcb" + _pack_d(float(obj)))
    else:
        raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def packb(obj: Any) -> bytes:
    out: list[bytes] = []
    _pack(obj, out)
    return b"".join(out)
