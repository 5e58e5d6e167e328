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
from typing import Any, Literal

import msgpack

from .errors import MalformedFrame

Codec = Literal["msgpack", "json"]
CODECS: tuple[Codec, ...] = ("msgpack", "json")

_packer = msgpack.Packer(use_bin_type=True)
_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

#: True when msgpack runs on its pure-Python fallback (no C extension, or
#: ``MSGPACK_PUREPYTHON=1``); then the faster pure encoder below packs.
PURE_MSGPACK = type(_packer).__module__ == "msgpack.fallback"
if PURE_MSGPACK:
    from ._msgpack_pure import packb as _pure_packb

    def _msgpack(obj: Any) -> bytes:
        return _pure_packb(obj)
else:

    def _msgpack(obj: Any) -> bytes:
        packed: bytes = _packer.pack(obj)
        return packed


#: Public name for the fastest available msgpack encoder.
msgpack_encode = _msgpack


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
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        return json.loads(data)
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as exc:
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
