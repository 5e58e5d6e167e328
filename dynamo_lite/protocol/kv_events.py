"""KV-routing messages of the Dynamo 1.6.1 event plane, sans-IO.

Theory of operation. A worker announces which KV blocks it holds so the
frontend's KV router can send a prompt to the worker that already has its
prefix. Three topics travel on the event plane, each from its own publisher
(a random 53-bit ``publisher_id``, its own ``sequence`` counter from 0):

* ``kv-events``: a list of *router events* ``{worker_id, storage_tier,
  residency_domain, event: {event_id, data, dp_rank}}``; ``data`` is
  ``{"stored": {parent_hash, start_position, blocks: [{block_hash, tokens_hash,
  mm_extra_info}]}}``, ``{"removed": {block_hashes}}`` or ``"cleared"``.
  ``event_id`` counts from 1 per worker rank; the frontend detects gaps with
  it and asks the worker's ``worker_kv_query_source_*`` endpoint to replay.
* ``kv_metrics``: ``{worker_id, dp_rank, active_decode_blocks,
  active_prefill_tokens, kv_used_blocks}`` (the router's load signal).
* ``active_sequences_events``: request lifecycle marks (not needed to route):
  ``MarkPrefillCompleted`` after each request's first token; on ZMQ wrapped
  as ``{events: [event]}``, on NATS the bare event.

Every message is wrapped in an envelope ``{publisher_id, sequence,
published_at (ms), topic, payload: bin(msgpack(payload))}``. On NATS the
message body is the msgpack envelope, on subject
``namespace.{ns}.component.{c}.endpoint.{e}.{topic}``. On ZMQ it is a
4-frame message: topic, publisher id (u64 BE), sequence (u64 BE), and
``01 | u32 BE length | envelope``. All of it verified against captured
traffic (``tests/vectors/kv/``).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import MalformedFrame

__all__ = [
    "ACTIVE_SEQUENCES",
    "KV_EVENTS",
    "KV_METRICS",
    "Envelope",
    "decode_envelope",
    "decode_zmq_message",
    "encode_envelope",
    "encode_zmq_message",
    "kv_metrics_payload",
    "query_response_item",
    "removed_data",
    "router_event",
    "stored_block",
    "stored_data",
]

KV_EVENTS = "kv-events"
KV_METRICS = "kv_metrics"
ACTIVE_SEQUENCES = "active_sequences_events"
TOPICS = (KV_EVENTS, KV_METRICS, ACTIVE_SEQUENCES)

_U64 = struct.Struct(">Q")
_FRAME_HEAD = struct.Struct(">BI")
#: The first byte of the ZMQ payload frame (every captured message carries 1).
ZMQ_PAYLOAD_VERSION = 1
_MASK64 = (1 << 64) - 1


_packers = threading.local()


def _packb(obj: Any) -> bytes:
    # One Packer per thread: building one per call costs more than the packing,
    # and a Packer is not safe to share between threads.
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    out = packer.pack(obj)
    assert isinstance(out, bytes)
    return out


def u64(value: int) -> int:
    """Engines pass block hashes as signed 64-bit ints; the wire carries u64."""
    return int(value) & _MASK64


def stored_block(block_hash: int, tokens_hash: int, mm_extra_info: Any = None) -> dict[str, Any]:
    return {
        "block_hash": u64(block_hash),
        "tokens_hash": u64(tokens_hash),
        "mm_extra_info": mm_extra_info,
    }


def stored_data(
    blocks: list[dict[str, Any]], parent_hash: int | None = None, start_position: int | None = None
) -> dict[str, Any]:
    return {
        "stored": {
            "parent_hash": None if parent_hash is None else u64(parent_hash),
            "start_position": start_position,
            "blocks": blocks,
        }
    }


def removed_data(block_hashes: list[int]) -> dict[str, Any]:
    return {"removed": {"block_hashes": [u64(h) for h in block_hashes]}}


#: ``data`` of an all-blocks-cleared event (a unit variant: a bare string).
CLEARED_DATA = "cleared"


def router_event(worker_id: int, event_id: int, data: Any, dp_rank: int = 0) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "storage_tier": "device",
        "residency_domain": "worker",
        "event": {"event_id": event_id, "data": data, "dp_rank": dp_rank},
    }


def kv_metrics_payload(worker_id: int, dp_rank: int, kv_used_blocks: int) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "dp_rank": dp_rank,
        "active_decode_blocks": None,
        "active_prefill_tokens": None,
        "kv_used_blocks": kv_used_blocks,
    }


#: The one request mark the stock worker publishes, after a request's first token.
MARK_PREFILL_COMPLETED = "MarkPrefillCompleted"


def active_sequence_event(
    request_id: str,
    worker_id: int,
    dp_rank: int = 0,
    data: str = MARK_PREFILL_COMPLETED,
    lora_name: str | None = None,
) -> dict[str, Any]:
    """One ``active_sequences_events`` event, keyed as stock writes it (the
    worker's own id stands in ``router_id`` too, as in the stock captures)."""
    return {
        "request_id": request_id,
        "worker": {"worker_id": worker_id, "dp_rank": dp_rank},
        "data": data,
        "router_id": worker_id,
        "lora_name": lora_name,
    }


def query_response_item(
    kind: str, events: list[dict[str, Any]], last_event_id: int
) -> dict[str, Any]:
    """The one ``data`` item a ``worker_kv_query_source`` answer carries.

    ``kind`` is ``"TreeDump"`` (full state, ``reset_scope: "all"``) or
    ``"Events"`` (a replay from the requested ``start_event_id``).
    """
    body: dict[str, Any] = {"events": events, "last_event_id": last_event_id}
    if kind == "TreeDump":
        body["reset_scope"] = "all"
    return {"data": {kind: body}, "complete_final": False}


@dataclass(frozen=True)
class Envelope:
    publisher_id: int
    sequence: int
    published_at: int
    topic: str
    payload: bytes

    def value(self) -> Any:
        return msgpack.unpackb(self.payload, raw=False, strict_map_key=False)


def encode_envelope(
    publisher_id: int, sequence: int, published_at_ms: int, topic: str, payload: Any
) -> bytes:
    """The msgpack envelope; ``payload`` is encoded here (bin inside the map)."""
    return _packb(
        {
            "publisher_id": publisher_id,
            "sequence": sequence,
            "published_at": published_at_ms,
            "topic": topic,
            "payload": _packb(payload),
        }
    )


def decode_envelope(data: bytes) -> Envelope:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise MalformedFrame(f"event envelope is not msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedFrame("event envelope is not a map")
    try:
        env = Envelope(
            int(obj["publisher_id"]),
            int(obj["sequence"]),
            int(obj["published_at"]),
            str(obj["topic"]),
            bytes(obj["payload"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedFrame(f"event envelope lacks a field: {exc}") from exc
    return env


def encode_zmq_message(
    topic: str, publisher_id: int, sequence: int, envelope: bytes
) -> list[bytes]:
    """The 4 ZMQ frames of one event (``envelope`` from :func:`encode_envelope`)."""
    return [
        topic.encode(),
        _U64.pack(publisher_id),
        _U64.pack(sequence),
        _FRAME_HEAD.pack(ZMQ_PAYLOAD_VERSION, len(envelope)) + envelope,
    ]


def decode_zmq_message(parts: list[bytes]) -> Envelope:
    if len(parts) != 4:
        raise MalformedFrame(f"a ZMQ event has 4 frames, got {len(parts)}")
    topic, pid, seq, body = parts
    if len(pid) != 8 or len(seq) != 8 or len(body) < _FRAME_HEAD.size:
        raise MalformedFrame("ZMQ event frame sizes are wrong")
    version, n = _FRAME_HEAD.unpack_from(body)
    if version != ZMQ_PAYLOAD_VERSION or n != len(body) - _FRAME_HEAD.size:
        raise MalformedFrame("ZMQ event payload frame header is wrong")
    env = decode_envelope(body[_FRAME_HEAD.size :])
    if env.topic.encode() != topic or env.publisher_id != _U64.unpack(pid)[0]:
        raise MalformedFrame("ZMQ event frames disagree with the envelope")
    if env.sequence != _U64.unpack(seq)[0]:
        raise MalformedFrame("ZMQ event sequence frame disagrees with the envelope")
    return env
