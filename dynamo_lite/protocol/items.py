"""Response items: what the worker writes on the response stream per engine output.

Each item is a data-only TwoPart frame whose body, in the request's codec, is
a ``NetworkStreamWrapper``::

    {"data": <Annotated>, "complete_final": false}

``Annotated`` is ``{"data": <LLMEngineOutput>}`` for an output or
``{"event": "error", "error": <DynamoError>}`` for a typed error. The stream
ends with ``{"complete_final": true}`` (no ``data`` key) and then the
header-only sentinel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import codec as _codec
from . import twopart
from .codec import Codec
from .errors import MalformedFrame

# The wrapper around every output, pre-encoded: only the output itself is
# encoded per token. msgpack: fixmap(2) "data" fixmap(1) "data" <output>
# "complete_final" false; the JSON form is the same object, compact.
_MSGPACK_HEAD = b"\x82\xa4data\x81\xa4data"
_MSGPACK_TAIL = b"\xaecomplete_final\xc2"
_JSON_HEAD = b'{"data":{"data":'
_JSON_TAIL = b'},"complete_final":false}'
_MSGPACK_EXTRA = len(_MSGPACK_HEAD) + len(_MSGPACK_TAIL)
_JSON_EXTRA = len(_JSON_HEAD) + len(_JSON_TAIL)
_pack_prefix = twopart.PREFIX.pack


def output_frame(codec: Codec, output: dict[str, Any]) -> bytes:
    """One response item: ``{"data": {"data": output}, "complete_final": false}``."""
    if codec == "msgpack":
        body = _codec.msgpack_encode(output)
        return b"".join(
            (_pack_prefix(0, len(body) + _MSGPACK_EXTRA, 0), _MSGPACK_HEAD, body, _MSGPACK_TAIL)
        )
    body = _codec.json_encode(output)
    return b"".join((_pack_prefix(0, len(body) + _JSON_EXTRA, 0), _JSON_HEAD, body, _JSON_TAIL))


def error_frame(codec: Codec, error: dict[str, Any]) -> bytes:
    return twopart.encode_body_only(
        _codec.encode(codec, {"data": {"event": "error", "error": error}, "complete_final": False})
    )


#: ``{"complete_final": true}`` as msgpack (fixmap(1) "complete_final" true) and as
#: JSON, spelled out so that the module does not load msgpack at import.
COMPLETE_FINAL_FRAME: dict[Codec, bytes] = {
    "msgpack": twopart.encode_body_only(b"\x81\xaecomplete_final\xc3"),
    "json": twopart.encode_body_only(b'{"complete_final":true}'),
}


@dataclass(frozen=True, slots=True)
class StreamItem:
    """A decoded response item (the client side of the stream)."""

    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    complete_final: bool = False


def parse_item(codec: Codec, body: bytes) -> StreamItem:
    obj = _codec.decode(codec, body)
    if not isinstance(obj, dict):
        raise MalformedFrame("response item is not a map")
    if obj.get("complete_final") is True and "data" not in obj:
        return StreamItem(complete_final=True)
    annotated = obj.get("data")
    if not isinstance(annotated, dict):
        raise MalformedFrame("response item lacks its data map")
    if annotated.get("event") == "error":
        err = annotated.get("error")
        if not isinstance(err, dict):
            comment = annotated.get("comment") or []
            err = {"message": "; ".join(str(c) for c in comment), "class": "Internal"}
        return StreamItem(error=err, complete_final=bool(obj.get("complete_final")))
    output = annotated.get("data")
    if not isinstance(output, dict):
        raise MalformedFrame("response item carries neither output nor error")
    return StreamItem(output=output, complete_final=bool(obj.get("complete_final")))
