"""Read a worker's response-stream bytes as the frontend does (for assertions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamo_lite.protocol import control, items, twopart
from dynamo_lite.protocol import request_plane as rp

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "tcp"


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


@dataclass
class Frames:
    """A response stream split into its parts."""

    handshake: control.Handshake | None
    prologue: control.Prologue | None
    outputs: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    complete_final: bool
    sentinel: bool
    #: Every frame in order: handshake, prologue, output, error, complete_final, sentinel.
    kinds: list[str]


def read_stream(data: bytes, codec: str = "msgpack") -> Frames:
    out = Frames(None, None, [], [], False, False, [])
    decoder = twopart.TwoPartDecoder()
    for msg in decoder.feed(data):
        if msg.header and not msg.body:
            frame = control.parse_header_frame(msg.header)
            if isinstance(frame, control.Handshake):
                out.handshake = frame
                out.kinds.append("handshake")
            elif isinstance(frame, control.Prologue):
                out.prologue = frame
                out.kinds.append("prologue")
            elif frame is control.StreamControl.SENTINEL:
                out.sentinel = True
                out.kinds.append("sentinel")
            else:
                out.kinds.append(frame.value)
            continue
        item = items.parse_item(codec, msg.body)  # type: ignore[arg-type]
        if item.complete_final:
            out.complete_final = True
            out.kinds.append("complete_final")
        elif item.error is not None:
            out.errors.append(item.error)
            out.kinds.append("error")
        else:
            assert item.output is not None
            out.outputs.append(item.output)
            out.kinds.append("output")
    assert decoder.buffered == 0, "a partial frame at the end of the stream"
    return out


def replies(data: bytes) -> list[bytes]:
    """Split request-plane replies (``u32 len | text``)."""
    decoder = rp.ReplyDecoder()
    return [bytes(r) for r in decoder.feed(data)]
