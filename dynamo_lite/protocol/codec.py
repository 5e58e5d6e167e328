"""Body codecs: the request body and response items travel as msgpack or JSON.

The instance record advertises ``request_plane_codec``; the frontend then
names the codec in each request's ``payload_codec`` and expects response items
in the same one. msgpack maps have string keys; ``None`` is ``nil``.

``msgpack`` is used through its public API only, so setting
``MSGPACK_PUREPYTHON=1`` before import runs it on its pure-Python fallback.
"""

from __future__ import annotations

import json
import sys
from array import array
from typing import TYPE_CHECKING, Any, Literal

from .errors import MalformedFrame

if TYPE_CHECKING:
    from collections.abc import Callable

Codec = Literal["msgpack", "json"]
CODECS: tuple[Codec, ...] = ("msgpack", "json")

_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

# msgpack (its C extension and ``datetime``, about 1 MiB) is imported by the
# first request, not at startup: an idle worker never needs it. Until then the
# three names below are stand-ins that load it and rebind themselves, so after
# the first call every call goes straight to msgpack.

#: True when msgpack runs on its pure-Python fallback (no C extension, or
#: ``MSGPACK_PUREPYTHON=1``); then the faster pure encoder packs. Known once loaded.
PURE_MSGPACK: bool | None = None
#: What a malformed msgpack body raises (msgpack's own errors added once loaded).
_msgpack_errors: tuple[type[Exception], ...] = (ValueError, TypeError, UnicodeDecodeError)


def _load_msgpack() -> None:
    global PURE_MSGPACK, _msgpack, msgpack_encode, _unpackb, _msgpack_errors
    import msgpack

    packer = msgpack.Packer(use_bin_type=True)
    PURE_MSGPACK = type(packer).__module__ == "msgpack.fallback"
    encode: Callable[[Any], bytes]
    if PURE_MSGPACK:
        from ._msgpack_pure import packb as encode
    else:
        encode = packer.pack
    unpackb = msgpack.unpackb

    def decode(data: bytes) -> Any:
        return unpackb(data, raw=False, strict_map_key=False)

    _msgpack_errors = (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException)
    _unpackb = decode
    _msgpack = msgpack_encode = encode


def _load_then_encode(obj: Any) -> bytes:
    _load_msgpack()
    return _msgpack(obj)


def _load_then_decode(data: bytes) -> Any:
    _load_msgpack()
    return _unpackb(data)


_msgpack: Callable[[Any], bytes] = _load_then_encode
_unpackb: Callable[[bytes], Any] = _load_then_decode
#: Public name for the fastest available msgpack encoder.
msgpack_encode: Callable[[Any], bytes] = _load_then_encode


def check_codec(name: str) -> Codec:
    if name == "msgpack":
        return "msgpack"
    if name == "json":
        return "json"
    raise MalformedFrame(f"unsupported payload codec {name!r}")


def encode(codec: Codec, obj: Any) -> bytes:
    if codec == "msgpack":
        return _msgpack(obj)
    return _json_encoder.encode(obj).encode()


def json_encode(obj: Any) -> bytes:
    return _json_encoder.encode(obj).encode()


def decode(codec: Codec, data: bytes) -> Any:
    try:
        if codec == "msgpack":
            return _unpackb(data)
        return json.loads(data)
    except _msgpack_errors as exc:
        raise MalformedFrame(f"body is not valid {codec}: {exc}") from None
    except RecursionError:
        raise MalformedFrame(f"body nests too deeply to decode as {codec}") from None


def token_ids_from_wire(value: Any) -> list[int]:
    """Accept both token-id encodings the frontend uses.

    With ``DYN_TOKEN_IDS_AS_BYTES=1`` the frontend sends a msgpack ``bin`` of
    little-endian int32s instead of an array.
    """
    if isinstance(value, list):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) % 4:
            raise MalformedFrame("token_ids bytes are not a whole number of int32s")
        ids = array("i")
        ids.frombytes(raw)
        if sys.byteorder != "little":
            ids.byteswap()
        return ids.tolist()
    if value is None:
        return []
    raise MalformedFrame(f"token_ids has unexpected type {type(value).__name__}")
