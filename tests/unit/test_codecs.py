"""Sans-IO codecs against the captured 1.6.1 frames, plus hypothesis properties."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo_lite.protocol import codec, control, items, twopart
from dynamo_lite.protocol import request_plane as rp
from dynamo_lite.protocol.errors import FrameTooLarge, MalformedFrame, ProtocolError

VEC = Path(__file__).parents[1] / "vectors" / "tcp"


def vec(name: str) -> bytes:
    return (VEC / name).read_bytes()


def split_twoparts(data: bytes) -> list[twopart.TwoPart]:
    dec = twopart.TwoPartDecoder()
    out = dec.feed(data)
    assert dec.buffered == 0
    return out


# --- request frames ---------------------------------------------------------------

REQUESTS = [
    "stock_req_chat_nonstream.bin",
    "stock_req_chat_stream.bin",
    "stock_req_chat_cancel.bin",
    "stock_req_chat_sampling_params.bin",
    "stock_req_chat_json_codec.bin",
    "stock_req_chat_token_ids_as_bytes.bin",
]


@pytest.mark.parametrize("name", REQUESTS)
def test_stock_request_frames_decode(name: str) -> None:
    data = vec(name)
    frames = rp.RequestFrameDecoder().feed(data)
    assert len(frames) == 1
    frame = frames[0]
    headers = frame.headers()
    assert frame.path == headers["x-endpoint-path"]
    assert frame.path.startswith("390da20963411")
    assert frame.path.endswith("/generate")
    msg = twopart.decode(frame.payload)
    ctl = control.parse_request_control(msg.header)
    assert ctl.id == headers["request-id"] == ctl.info.context
    assert ctl.transport == "tcp_server"
    assert ctl.info.stream_type == "response"
    assert ctl.info.host_port()[0] == "127.0.0.1"
    body = codec.decode(codec.check_codec(ctl.payload_codec), msg.body)
    assert body["model"] == "tiny-model"
    ids = codec.token_ids_from_wire(body["token_ids"])
    assert ids[:4] == [1, 87, 85, 266]
    assert len(ids) == 17
    # Re-encoding what we decoded gives the captured bytes back.
    again = rp.encode_frame(frame.path, json.loads(frame.raw_headers), frame.payload)
    assert again == data


def test_request_frame_layout_nonstream() -> None:
    data = vec("stock_req_chat_nonstream.bin")
    assert struct.unpack(">H", data[:2])[0] == 39
    frame = rp.RequestFrameDecoder().feed(data)[0]
    assert len(frame.raw_headers) == 159
    assert len(frame.payload) == 1026
    msg = twopart.decode(frame.payload)
    assert (len(msg.header), len(msg.body)) == (348, 654)
    body = msgpack.unpackb(msg.body)
    assert list(body) == [
        "model",
        "token_ids",
        "stop_conditions",
        "sampling_options",
        "output_options",
        "eos_token_ids",
        "mdc_sum",
        "annotations",
        "routing",
        "router_config_override",
    ]
    assert body["stop_conditions"]["max_tokens"] == 4


def test_json_codec_request() -> None:
    frame = rp.RequestFrameDecoder().feed(vec("stock_req_chat_json_codec.bin"))[0]
    msg = twopart.decode(frame.payload)
    ctl = control.parse_request_control(msg.header)
    assert ctl.payload_codec == "json"
    assert json.loads(msg.body)["model"] == "tiny-model"


def test_token_ids_as_bytes() -> None:
    frame = rp.RequestFrameDecoder().feed(vec("stock_req_chat_token_ids_as_bytes.bin"))[0]
    body = codec.decode("msgpack", twopart.decode(frame.payload).body)
    assert isinstance(body["token_ids"], bytes)
    nonstream = rp.RequestFrameDecoder().feed(vec("stock_req_chat_nonstream.bin"))[0]
    expected = codec.decode("msgpack", twopart.decode(nonstream.payload).body)["token_ids"]
    assert codec.token_ids_from_wire(body["token_ids"]) == expected


def test_float32_sampling_options() -> None:
    frame = rp.RequestFrameDecoder().feed(vec("stock_req_chat_sampling_params.bin"))[0]
    body = codec.decode("msgpack", twopart.decode(frame.payload).body)
    assert body["sampling_options"]["temperature"] == 0.5
    assert abs(body["sampling_options"]["top_p"] - 0.9) < 1e-6
    assert body["sampling_options"]["seed"] == 7
    assert body["stop_conditions"]["stop"] == ["#"]


def test_control_round_trip_matches_stock_order() -> None:
    frame = rp.RequestFrameDecoder().feed(vec("stock_req_chat_nonstream.bin"))[0]
    header = twopart.decode(frame.payload).header
    ctl = control.parse_request_control(header)
    assert control.encode_request_control(ctl) == header


# --- replies ------------------------------------------------------------------------


def test_replies_match_stock_bytes() -> None:
    assert rp.ACK == vec("stock_ack_ok.bin") == rp.encode_reply()
    assert rp.unknown_endpoint_reply("wrong/path/x") == vec("stock_ack_unknown_endpoint.bin")
    assert rp.too_large_reply(41_943_089, 33_554_432) == vec("stock_reply_too_large.bin")
    # No capture of a stock overload reply exists; its text is a string in the stock
    # 1.6.1 runtime (dynamo/_core.abi3.so), framed as every stock reply above is.
    overloaded = b"Server overloaded: worker at capacity"
    assert rp.overloaded_reply("worker at capacity") == struct.pack(">I", 37) + overloaded
    dec = rp.ReplyDecoder()
    stream = vec("stock_ack_ok.bin") + vec("stock_ack_unknown_endpoint.bin")
    assert dec.feed(stream + rp.overloaded_reply("worker at capacity")) == [
        b"",
        vec("stock_ack_unknown_endpoint.bin")[4:],
        overloaded,
    ]


# --- response stream ------------------------------------------------------------------


def test_control_frames_match_stock_bytes() -> None:
    assert vec("stock_ctrl_kill.bin") == control.KILL_FRAME
    assert vec("stock_frame_sentinel.bin") == control.SENTINEL_FRAME
    assert control.prologue_frame() == vec("stock_frame_prologue_ok.bin")
    assert items.COMPLETE_FINAL_FRAME["msgpack"] == vec("stock_frame_complete_final.bin")
    hs = twopart.decode(vec("stock_frame_handshake.bin"))
    parsed = control.parse_header_frame(hs.header)
    assert isinstance(parsed, control.Handshake)
    assert control.handshake_frame(parsed.subject) == vec("stock_frame_handshake.bin")
    assert control.parse_header_frame(twopart.decode(vec("stock_ctrl_kill.bin")).header) is (
        control.StreamControl.KILL
    )


@pytest.mark.parametrize(
    "name",
    [
        "stock_frame_item_1.bin",
        "stock_frame_item_2.bin",
        "stock_frame_item_3.bin",
        "stock_frame_item_last_length_usage.bin",
    ],
)
def test_stock_items_round_trip(name: str) -> None:
    data = vec(name)
    msg = twopart.decode(data)
    item = items.parse_item("msgpack", msg.body)
    assert item.output is not None and not item.complete_final
    # Our encoder reproduces the stock bytes given the same output map.
    assert items.output_frame("msgpack", item.output) == data


def test_stock_error_items() -> None:
    inv = items.parse_item(
        "msgpack", twopart.decode(vec("stock_frame_error_invalid_argument.bin")).body
    )
    assert inv.error is not None
    assert inv.error["class"] == "InvalidRequest"
    assert inv.error["public"]["message"] == "ref: invalid argument before first token"
    from dynamo_lite.errors import InvalidArgument, to_wire_error

    ours = items.error_frame(
        "msgpack", to_wire_error(InvalidArgument("ref: invalid argument before first token"))
    )
    assert ours == vec("stock_frame_error_invalid_argument.bin")
    ours_ve = items.error_frame("msgpack", to_wire_error(ValueError("ref: plain value error")))
    assert ours_ve == vec("stock_frame_error_valueerror.bin")


@pytest.mark.parametrize(
    "name",
    [
        "stock_respstream_nonstream.bin",
        "stock_respstream_stream.bin",
        "stock_respstream_error_invalid_argument.bin",
    ],
)
def test_whole_streams(name: str) -> None:
    msgs = split_twoparts(vec(name))
    assert isinstance(control.parse_header_frame(msgs[0].header), control.Handshake)
    assert control.parse_header_frame(msgs[1].header) == control.Prologue(None)
    assert control.parse_header_frame(msgs[-1].header) is control.StreamControl.SENTINEL
    assert items.parse_item("msgpack", msgs[-2].body).complete_final
    for m in msgs[2:-2]:
        assert not m.header and m.body


def test_json_stream() -> None:
    # The stock worker with DYN_REQUEST_PLANE_CODEC=json (engines/capture_stock_json_stream.py).
    data = vec("stock_respstream_json_codec.bin")
    msgs = split_twoparts(data)
    assert isinstance(control.parse_header_frame(msgs[0].header), control.Handshake)
    assert control.parse_header_frame(msgs[1].header) == control.Prologue(None)
    outs = [items.parse_item("json", m.body) for m in msgs[2:-2]]
    assert [o.output["token_ids"] for o in outs if o.output] == [[1], [2], [3]]
    # Our JSON encoder gives the stock bytes back for the same outputs.
    for m, o in zip(msgs[2:-2], outs, strict=True):
        assert o.output is not None
        assert items.output_frame("json", o.output) == twopart.encode_body_only(m.body)
    assert items.COMPLETE_FINAL_FRAME["json"] == twopart.encode_body_only(msgs[-2].body)
    assert control.parse_header_frame(msgs[-1].header) is control.StreamControl.SENTINEL


def test_cancel_partial_stream_has_no_end() -> None:
    msgs = split_twoparts(vec("stock_respstream_cancel_partial.bin"))
    assert len(msgs) == 30
    assert all(m.body for m in msgs[2:])


def test_prologue_error() -> None:
    msgs = split_twoparts(vec("proto_respstream_prologue_error.bin"))
    assert control.parse_header_frame(msgs[1].header) == control.Prologue(
        "proto: generate() failed before streaming"
    )


# --- limits -----------------------------------------------------------------------------


def test_too_large_is_detected_before_the_body() -> None:
    dec = rp.RequestFrameDecoder(max_message_size=1000)
    header = struct.pack(">H", 3) + b"a/b" + struct.pack(">H", 2) + b"{}" + struct.pack(">I", 5000)
    with pytest.raises(FrameTooLarge) as err:
        dec.feed(header)
    assert err.value.size == 8 + 3 + 2 + 5000
    assert dec.buffered <= len(header)


def test_frames_before_an_oversized_one_are_returned() -> None:
    ok = rp.encode_frame("a", {}, b"x")
    big = struct.pack(">H", 1) + b"a" + struct.pack(">H", 0) + struct.pack(">I", 10_000)
    dec = rp.RequestFrameDecoder(max_message_size=100)
    assert [f.path for f in dec.feed(ok + big)] == ["a"]
    with pytest.raises(FrameTooLarge):
        dec.feed(b"")


def test_garbled_headers_keep_the_stream_in_sync() -> None:
    bad = struct.pack(">H", 1) + b"p" + struct.pack(">H", 3) + b"{{{" + struct.pack(">I", 0)
    good = rp.encode_frame("q", {"a": "b"}, b"")
    frames = rp.RequestFrameDecoder().feed(bad + good)
    assert [f.path for f in frames] == ["p", "q"]
    with pytest.raises(MalformedFrame):
        frames[0].headers()


# --- hypothesis ------------------------------------------------------------------------

text = st.text(max_size=40)
header_maps = st.dictionaries(st.text(min_size=1, max_size=10), text, max_size=4)


@given(
    path=text,
    headers=header_maps,
    payload=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_request_frame_round_trip_any_chunking(
    path: str, headers: dict[str, str], payload: bytes, cuts: list[int]
) -> None:
    frame = rp.encode_frame(path, headers, payload)
    stream = frame * 2
    dec = rp.RequestFrameDecoder()
    out: list[rp.RequestFrame] = []
    pos = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        out += dec.feed(stream[pos:cut])
        pos = max(pos, cut)
    assert len(out) == 2
    for f in out:
        assert f.path == path and f.payload == payload and f.headers() == headers


@given(
    header=st.binary(max_size=200),
    body=st.binary(max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=8),
)
def test_twopart_round_trip_any_chunking(header: bytes, body: bytes, cuts: list[int]) -> None:
    msg = twopart.encode(header, body)
    assert twopart.decode(msg) == (header, body)
    stream = msg * 3
    dec = twopart.TwoPartDecoder()
    out: list[twopart.TwoPart] = []
    pos = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        out += dec.feed(stream[pos:cut])
        pos = max(pos, cut)
    assert out == [(header, body)] * 3


@given(st.binary(max_size=400))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    for fn in (
        lambda: rp.RequestFrameDecoder(max_message_size=4096).feed(data),
        lambda: twopart.TwoPartDecoder(max_message_size=4096).feed(data),
        lambda: twopart.decode(data),
        lambda: control.parse_request_control(data),
        lambda: control.parse_header_frame(data),
        lambda: items.parse_item("msgpack", data),
        lambda: items.parse_item("json", data),
        lambda: codec.token_ids_from_wire(data),
        lambda: rp.ReplyDecoder(max_message_size=4096).feed(data),
    ):
        with contextlib.suppress(ProtocolError):
            fn()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_body_codecs_round_trip(value: object) -> None:
    for c in codec.CODECS:
        assert codec.decode(c, codec.encode(c, value)) == value


@given(st.lists(st.integers(0, 2**31 - 1), max_size=50))
def test_token_ids_bytes_round_trip(ids: list[int]) -> None:
    raw = b"".join(struct.pack("<i", i) for i in ids)
    assert codec.token_ids_from_wire(raw) == ids


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
    | st.binary(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=40), inner, max_size=20)
    ),
    max_leaves=40,
)


@given(msgpack_values)
def test_pure_msgpack_encoder_is_byte_identical(value: object) -> None:
    from msgpack import fallback

    from dynamo_lite.protocol._msgpack_pure import packb

    assert packb(value) == fallback.Packer(use_bin_type=True).pack(value)
    assert packb(value) == msgpack.packb(value, use_bin_type=True)


def test_pure_msgpack_encoder_large_containers() -> None:
    from msgpack import fallback

    from dynamo_lite.protocol._msgpack_pure import packb

    for value in (
        list(range(70_000)),
        {str(i): i for i in range(70_000)},
        "x" * 70_000,
        b"y" * 70_000,
        -(2**63),
        2**64 - 1,
    ):
        assert packb(value) == fallback.Packer(use_bin_type=True).pack(value)
    with pytest.raises(OverflowError):
        packb(2**64)
    with pytest.raises(TypeError):
        packb(object())


@given(st.dictionaries(st.text(max_size=12), msgpack_values, max_size=8))
def test_output_frame_equals_the_generic_encoding(output: dict[str, object]) -> None:
    generic = twopart.encode_body_only(
        msgpack.packb({"data": {"data": output}, "complete_final": False}, use_bin_type=True)
    )
    assert items.output_frame("msgpack", output) == generic
