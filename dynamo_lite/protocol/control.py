"""Control JSON: the request envelope and the response-stream control frames.

The request payload's TwoPart header is the *control message*::

    {"id":…, "request_type":"single_in", "response_type":"many_out",
     "payload_codec":"msgpack", "connection_info":{"transport":"tcp_server",
     "info":"<JSON string: address, subject, context, stream_type>"}}

``info`` is JSON inside a JSON string and is parsed twice. A missing
``payload_codec`` means JSON.

On the response stream the worker sends header-only frames: the handshake
``{"subject":…,"stream_type":"response"}``, the prologue ``{"error":null}``
and finally the JSON string ``"sentinel"``. The frontend may send the JSON
strings ``"kill"`` or ``"stop"`` on the same connection to cancel.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from . import twopart
from .errors import MalformedFrame

TCP_TRANSPORT = "tcp_server"


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Where the worker dials back to stream the response (the call-home address)."""

    address: str
    subject: str
    context: str
    stream_type: str = "response"

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.address.rpartition(":")
        if not sep or not port.isdigit():
            raise MalformedFrame(f"call-home address {self.address!r} is not HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return host, int(port)


@dataclass(frozen=True, slots=True)
class RequestControl:
    """The control message in front of every request frame."""

    id: str
    payload_codec: str
    transport: str
    info: ConnectionInfo
    request_type: str = "single_in"
    response_type: str = "many_out"
    metadata: dict[str, str] = field(default_factory=dict)


def _loads(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedFrame(f"{what} is not JSON: {exc}") from None


def _str_field(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedFrame(f"{what} lacks string field {key!r}")
    return value


def parse_request_control(header: bytes) -> RequestControl:
    obj = _loads(header, "request control header")
    if not isinstance(obj, dict):
        raise MalformedFrame("request control header is not a JSON object")
    request_id = _str_field(obj, "id", "request control header")
    codec = obj.get("payload_codec") or "json"
    if not isinstance(codec, str):
        raise MalformedFrame("payload_codec is not a string")
    conn = obj.get("connection_info")
    if not isinstance(conn, dict):
        raise MalformedFrame("request control header lacks connection_info")
    transport = _str_field(conn, "transport", "connection_info")
    raw_info = conn.get("info")
    info_obj = _loads(raw_info, "connection_info.info") if isinstance(raw_info, str) else raw_info
    if not isinstance(info_obj, dict):
        raise MalformedFrame("connection_info.info is not a JSON object")
    info = ConnectionInfo(
        address=_str_field(info_obj, "address", "connection_info.info"),
        subject=_str_field(info_obj, "subject", "connection_info.info"),
        context=str(info_obj.get("context", request_id)),
        stream_type=str(info_obj.get("stream_type", "response")),
    )
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise MalformedFrame("metadata is not a JSON object")
    return RequestControl(
        id=request_id,
        payload_codec=codec,
        transport=transport,
        info=info,
        request_type=str(obj.get("request_type", "single_in")),
        response_type=str(obj.get("response_type", "many_out")),
        metadata={str(k): str(v) for k, v in metadata.items()},
    )


def encode_request_control(control: RequestControl) -> bytes:
    """Compact JSON in the stock field order (the client side of the plane)."""
    info = json.dumps(
        {
            "address": control.info.address,
            "subject": control.info.subject,
            "context": control.info.context,
            "stream_type": control.info.stream_type,
        },
        separators=(",", ":"),
    )
    obj: dict[str, Any] = {
        "id": control.id,
        "request_type": control.request_type,
        "response_type": control.response_type,
        "payload_codec": control.payload_codec,
        "connection_info": {"transport": control.transport, "info": info},
    }
    if control.metadata:
        obj["metadata"] = control.metadata
    return json.dumps(obj, separators=(",", ":")).encode()


# --- response stream ---------------------------------------------------------


class StreamControl(enum.Enum):
    """Header-only JSON-string frames on the response stream."""

    KILL = "kill"
    STOP = "stop"
    SENTINEL = "sentinel"


def _control_frame(value: StreamControl) -> bytes:
    return twopart.encode(json.dumps(value.value).encode())


KILL_FRAME = _control_frame(StreamControl.KILL)
STOP_FRAME = _control_frame(StreamControl.STOP)
SENTINEL_FRAME = _control_frame(StreamControl.SENTINEL)
PROLOGUE_OK_FRAME = twopart.encode(b'{"error":null}')


def handshake_frame(subject: str) -> bytes:
    return twopart.encode(
        json.dumps({"subject": subject, "stream_type": "response"}, separators=(",", ":")).encode()
    )


def prologue_frame(error: str | None = None) -> bytes:
    if error is None:
        return PROLOGUE_OK_FRAME
    return twopart.encode(json.dumps({"error": error}, separators=(",", ":")).encode())


@dataclass(frozen=True, slots=True)
class Handshake:
    """The response stream's first header: which request it carries."""

    subject: str
    stream_type: str


@dataclass(frozen=True, slots=True)
class Prologue:
    """The response stream's prologue: ``error`` set when the request failed before streaming."""

    error: str | None


def parse_header_frame(header: bytes) -> StreamControl | Handshake | Prologue:
    """Classify a header-only response-stream frame."""
    obj = _loads(header, "response-stream control frame")
    if isinstance(obj, str):
        try:
            return StreamControl(obj)
        except ValueError:
            raise MalformedFrame(f"unknown response-stream control {obj!r}") from None
    if isinstance(obj, dict):
        if "subject" in obj:
            return Handshake(str(obj["subject"]), str(obj.get("stream_type", "response")))
        if "error" in obj:
            err = obj["error"]
            return Prologue(None if err is None else str(err))
    raise MalformedFrame("unrecognised response-stream control frame")
