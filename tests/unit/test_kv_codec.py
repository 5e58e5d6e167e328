"""KV event plane codecs against the captured stock traffic (tests/vectors/kv/),
the pure-Python XXH3 against the compiled one, and the ZMTP codec fuzzed."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo_lite.kv import xxh3
from dynamo_lite.protocol import kv_events as kve
from dynamo_lite.protocol import zmtp
from dynamo_lite.protocol.errors import ProtocolError

VECTORS = Path(__file__).parents[1] / "vectors" / "kv"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (VECTORS / name).read_text().splitlines()]


def _streams() -> dict[tuple[int, str, str], bytes]:
    """The captured TCP bytes per (connection, target, direction)."""
    out: dict[tuple[int, str, str], bytes] = {}
    for row in _rows("file_tcp_capture.jsonl"):
        if "hex" in row:
            key = (row["conn"], row["target"], row["dir"])
            out[key] = out.get(key, b"") + bytes.fromhex(row["hex"])
    return out


def _zmq_messages() -> Iterator[tuple[str, list[bytes]]]:
    for (_conn, target, direction), data in _streams().items():
        if target == "rpc" or direction != "worker->frontend":
            continue
        sub = zmtp.ZmtpConnection(b"SUB")
        for ev in sub.feed(data):
            if isinstance(ev, zmtp.Message):
                yield target, ev.parts


def _nats_bodies() -> list[tuple[str, bytes]]:
    return [(r["subject"], bytes.fromhex(r["hex"])) for r in _rows("nats_capture.jsonl")]


# --- block hash ---------------------------------------------------------------


def _captured_stored_blocks() -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for _subject, body in _nats_bodies():
        env = kve.decode_envelope(body)
        if env.topic != kve.KV_EVENTS:
            continue
        for rev in env.value():
            data = rev["event"]["data"]
            if isinstance(data, dict) and "stored" in data:
                blocks.extend(data["stored"]["blocks"])
    return blocks


def test_tokens_hash_matches_the_stock_publisher() -> None:
    # The stock sample announces token_ids = range(n * 16): block i holds
    # tokens 16i .. 16i+15, so position in the stored list gives the tokens.
    by_position: dict[int, int] = {}
    for _subject, body in _nats_bodies():
        env = kve.decode_envelope(body)
        if env.topic != kve.KV_EVENTS:
            continue
        for rev in env.value():
            data = rev["event"]["data"]
            if isinstance(data, dict) and "stored" in data:
                for i, block in enumerate(data["stored"]["blocks"]):
                    by_position.setdefault(i, block["tokens_hash"])
    assert len(by_position) >= 13
    for i, want in by_position.items():
        tokens = list(range(16 * i, 16 * i + 16))
        raw = struct.pack("<16I", *tokens)
        assert xxh3.xxh3_64_pure(raw, 1337) == want
        assert xxh3.block_tokens_hash(tokens) == want


def test_pure_xxh3_known_values() -> None:
    # Values from the reference implementation (xxhash 0.8, XXH3_64bits_withSeed).
    assert xxh3.xxh3_64_pure(b"abc", 1337) == 4555145769527694000
    assert xxh3.xxh3_64_pure(b"", 0) == 0x2D06800538D394C2


@FUZZ
@given(data=st.binary(max_size=2100), seed=st.integers(0, 2**64 - 1))
def test_pure_xxh3_matches_the_compiled_package(data: bytes, seed: int) -> None:
    xxhash = pytest.importorskip("xxhash")
    assert xxh3.xxh3_64_pure(data, seed) == xxhash.xxh3_64_intdigest(data, seed=seed)


@pytest.mark.parametrize("n", [0, 1, 3, 4, 8, 9, 16, 17, 64, 128, 129, 240, 241, 1024, 1025, 4096])
def test_pure_xxh3_lengths(n: int) -> None:
    xxhash = pytest.importorskip("xxhash")
    data = bytes((i * 7 + 3) & 0xFF for i in range(n))
    for seed in (0, 1337, 2**63 + 5):
        assert xxh3.xxh3_64_pure(data, seed) == xxhash.xxh3_64_intdigest(data, seed=seed)


# --- envelopes and events ----------------------------------------------------------


def _reencode(env: kve.Envelope) -> bytes:
    return kve.encode_envelope(
        env.publisher_id, env.sequence, env.published_at, env.topic, env.value()
    )


def test_nats_envelopes_reencode_byte_for_byte() -> None:
    bodies = _nats_bodies()
    topics = set()
    for subject, body in bodies:
        env = kve.decode_envelope(body)
        topics.add(env.topic)
        assert subject == f"namespace.dynamo.component.sample.endpoint.generate.{env.topic}"
        assert _reencode(env) == body
    assert topics == set(kve.TOPICS)


def test_zmq_messages_reencode_byte_for_byte() -> None:
    seen = set()
    for _target, parts in _zmq_messages():
        env = kve.decode_zmq_message(parts)
        seen.add(env.topic)
        again = kve.encode_zmq_message(env.topic, env.publisher_id, env.sequence, _reencode(env))
        assert again == parts
        assert zmtp.encode_message(again) == zmtp.encode_message(parts)
    assert seen == set(kve.TOPICS)


def test_router_events_rebuild_from_the_builders() -> None:
    for _subject, body in _nats_bodies():
        env = kve.decode_envelope(body)
        if env.topic == kve.KV_EVENTS:
            for rev in env.value():
                ev = rev["event"]
                data = ev["data"]
                if "stored" in data:
                    st_ = data["stored"]
                    blocks = [
                        kve.stored_block(b["block_hash"], b["tokens_hash"]) for b in st_["blocks"]
                    ]
                    rebuilt = kve.stored_data(blocks, st_["parent_hash"])
                else:
                    rebuilt = kve.removed_data(data["removed"]["block_hashes"])
                assert kve.router_event(rev["worker_id"], ev["event_id"], rebuilt) == rev
                assert msgpack.packb(
                    kve.router_event(rev["worker_id"], ev["event_id"], rebuilt)
                ) == msgpack.packb(rev)
        elif env.topic == kve.KV_METRICS:
            p = env.value()
            assert kve.kv_metrics_payload(p["worker_id"], p["dp_rank"], p["kv_used_blocks"]) == p


def test_query_source_answers_match_the_builder() -> None:
    from dynamo_lite.protocol.twopart import TwoPartDecoder

    answers = json.loads((VECTORS / "file_query_source.json").read_text())
    kinds = []
    for answer in answers:
        dec = TwoPartDecoder()
        frames = [f for h in answer["raw_hex"] for f in dec.feed(bytes.fromhex(h))]
        bodies = [f.body for f in frames if f.body]
        item = msgpack.unpackb(bodies[0], raw=False)
        ((kind, value),) = item["data"].items()
        kinds.append(kind)
        rebuilt = kve.query_response_item(kind, value["events"], value["last_event_id"])
        assert msgpack.packb(rebuilt) == bodies[0]
        assert msgpack.unpackb(bodies[1]) == {"complete_final": True}
    assert kinds == ["TreeDump", "Events"]


def test_garbage_envelopes_raise_protocol_errors() -> None:
    for junk in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"topic": "x"})):
        with pytest.raises(ProtocolError):
            kve.decode_envelope(junk)
    with pytest.raises(ProtocolError):
        kve.decode_zmq_message([b"kv-events", b"1", b"2"])


# --- ZMTP ---------------------------------------------------------------------


def test_captured_frontend_subscribes_with_the_command_form() -> None:
    subs = {}
    for (_conn, target, direction), data in _streams().items():
        if target == "rpc" or direction != "frontend->worker":
            continue
        pub = zmtp.ZmtpConnection(b"PUB")
        events = pub.feed(data)
        ready = [e for e in events if isinstance(e, zmtp.Ready)]
        assert ready and ready[0].socket_type == b"SUB" and ready[0].minor == 1
        subs[target] = [e.topic for e in events if isinstance(e, zmtp.Subscribe)]
        # Our READY back is what the stock PUB sent.
        reply = pub.data_to_send()
        assert reply == bytes.fromhex("04190552454144590b536f636b65742d5479706500000003505542")
    assert subs["kv-events"] == [b"kv-events"]
    assert subs["active"] == [b"active_sequences_events"]


def test_greeting_matches_the_stock_one() -> None:
    streams = _streams()
    stock = next(
        d for (c, t, dr), d in streams.items() if t == "kv-events" and dr == "worker->frontend"
    )
    assert zmtp.encode_greeting() == stock[: zmtp.GREETING_LEN]


def _pair() -> tuple[zmtp.ZmtpConnection, zmtp.ZmtpConnection]:
    pub, sub = zmtp.ZmtpConnection(b"PUB"), zmtp.ZmtpConnection(b"SUB")
    a, b = pub.start(), sub.start()
    assert [type(e) for e in sub.feed(a)] == []
    assert pub.feed(b) == []
    ev_sub = sub.feed(pub.data_to_send())
    ev_pub = pub.feed(sub.data_to_send())
    assert isinstance(ev_sub[0], zmtp.Ready) and isinstance(ev_pub[0], zmtp.Ready)
    return pub, sub


def _chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    pos = 0
    for c in sorted(set(x % (len(data) + 1) for x in cuts)):
        yield data[pos:c]
        pos = c
    yield data[pos:]


@FUZZ
@given(
    messages=st.lists(st.lists(st.binary(max_size=600), min_size=1, max_size=4), max_size=5),
    topic=st.binary(max_size=40),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_zmtp_round_trip_any_chunking(
    messages: list[list[bytes]], topic: bytes, cuts: list[int]
) -> None:
    pub, sub = _pair()
    got = []
    for chunk in _chunks(sub.send_subscribe(topic), cuts):
        got += pub.feed(chunk)
    assert got == [zmtp.Subscribe(topic)]
    wire = b"".join(pub.send_message(m) for m in messages)
    out = []
    for chunk in _chunks(wire, cuts):
        out += sub.feed(chunk)
    assert out == [zmtp.Message(m) for m in messages]
    cancel = pub.feed(sub.send_cancel(topic))
    assert cancel == [zmtp.Cancel(topic)]


def test_zmtp_old_style_subscription_and_ping() -> None:
    pub, _sub = _pair()
    assert pub.feed(zmtp.encode_message([b"\x01abc"])) == [zmtp.Subscribe(b"abc")]
    assert pub.feed(zmtp.encode_message([b"\x00abc"])) == [zmtp.Cancel(b"abc")]
    pub.feed(zmtp.encode_command(b"PING", b"\x00\x0actx"))
    assert pub.data_to_send() == zmtp.encode_command(b"PONG", b"ctx")


def test_zmtp_long_frames() -> None:
    pub, sub = _pair()
    body = b"x" * 70_000
    wire = pub.send_message([b"t", body])
    assert wire[3] & zmtp.FLAG_LONG
    assert sub.feed(wire) == [zmtp.Message([b"t", body])]


@FUZZ
@given(junk=st.binary(max_size=300), after_handshake=st.booleans())
def test_zmtp_garbage_raises_only_protocol_errors(junk: bytes, after_handshake: bool) -> None:
    if after_handshake:
        pub, _sub = _pair()
        conn = pub
    else:
        conn = zmtp.ZmtpConnection(b"PUB", max_message=1 << 16)
    with contextlib.suppress(ProtocolError):
        conn.feed(junk)


def test_zmtp_rejects_incompatible_peers() -> None:
    a, b = zmtp.ZmtpConnection(b"PUB"), zmtp.ZmtpConnection(b"PUB")
    b.feed(a.start())
    a.feed(b.start())
    with pytest.raises(ProtocolError):
        b.feed(a.data_to_send())
    with pytest.raises(ProtocolError):
        zmtp.ZmtpConnection(b"SUB").feed(b"\x00" * 64)
    curve = bytearray(zmtp.encode_greeting())
    curve[12:32] = b"CURVE".ljust(20, b"\x00")
    with pytest.raises(ProtocolError):
        zmtp.ZmtpConnection(b"SUB").feed(bytes(curve))


def test_relay_matches_the_stock_relay() -> None:
    """The same vLLM-style batches through the stock 1.6.1 relay (captured) and ours."""
    import asyncio

    from dynamo_lite.kv.publisher import KvEventPublisher
    from dynamo_lite.kv.relay import apply_batch

    inputs = json.loads((VECTORS / "relay_inputs.json").read_text())
    stock = json.loads((VECTORS / "relay_outputs.json").read_text())

    async def run() -> list[list[dict[str, Any]]]:
        messages: list[list[dict[str, Any]]] = []
        pub = KvEventPublisher(
            worker_id=0, kv_block_size=16, dp_rank=0, emit=messages.append,
            loop=asyncio.get_running_loop(),
        )  # fmt: skip
        for batch in inputs:
            # A batch stock refuses (no dp_rank) is refused here too.
            with contextlib.suppress(ValueError):
                apply_batch(pub, batch, 16)
            pub.flush()
        return messages

    ours = asyncio.run(run())
    for msg in ours:
        for rev in msg:
            rev["worker_id"] = "<worker_id>"
    assert ours == [m["payload"] for m in stock]


def test_publisher_matches_the_stock_publisher() -> None:
    """The same publish_* calls on the stock 1.6.1 publisher (captured) and ours:
    short and odd-sized blocks dropped, batches coalesced, LoRA / cache-salt seeds,
    negative hashes, empty removals skipped."""
    import asyncio

    from dynamo_lite.kv.publisher import KvEventPublisher

    calls = json.loads((VECTORS / "push_inputs.json").read_text())
    stock = json.loads((VECTORS / "push_outputs.json").read_text())

    async def run() -> list[list[dict[str, Any]]]:
        messages: list[list[dict[str, Any]]] = []
        pub = KvEventPublisher(
            worker_id=0, kv_block_size=16, dp_rank=0, emit=messages.append,
            loop=asyncio.get_running_loop(),
        )  # fmt: skip
        for call in calls:
            getattr(pub, call["call"])(**call["kwargs"])
            pub.flush()
        return messages

    ours = asyncio.run(run())
    for msg in ours:
        for rev in msg:
            rev["worker_id"] = "<worker_id>"
    assert ours == [m["payload"] for m in stock]


def _active_sequence_payloads() -> list[tuple[str, bytes]]:
    """(plane, payload bytes) of every captured ``active_sequences_events`` message."""
    out = [
        ("nats", env.payload)
        for _s, body in _nats_bodies()
        if (env := kve.decode_envelope(body)).topic == kve.ACTIVE_SEQUENCES
    ]
    for _target, parts in _zmq_messages():
        env = kve.decode_zmq_message(parts)
        if env.topic == kve.ACTIVE_SEQUENCES:
            out.append(("zmq", env.payload))
    return out


def test_active_sequence_marks_rebuild_byte_for_byte() -> None:
    import msgpack

    payloads = _active_sequence_payloads()
    assert {plane for plane, _ in payloads} == {"nats", "zmq"}
    for plane, payload in payloads:
        value = msgpack.unpackb(payload)
        event = value if plane == "nats" else value["events"][0]
        assert event["data"] == kve.MARK_PREFILL_COMPLETED
        rebuilt = kve.active_sequence_event(event["request_id"], event["worker"]["worker_id"])
        wrapped = rebuilt if plane == "nats" else {"events": [rebuilt]}
        assert kve._packb(wrapped) == payload
