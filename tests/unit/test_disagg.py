"""dynamo_lite.disagg: the prefill/decode, encode and canary helpers (stock 1.6.1 names)."""

from __future__ import annotations

from typing import Any

import pytest

from dynamo_lite import DisaggregationMode, GenerateRequest
from dynamo_lite.disagg import (
    HEALTH_CHECK_KEY,
    build_health_check_payload,
    encoder_terminal_chunk,
    enforce_prefill_max_tokens,
    extract_multimodal_kwargs,
    extract_prefill_result,
    is_probe,
    require_encoder_result,
    require_prefill_result,
)
from dynamo_lite.errors import classify
from dynamo_lite.stream import StreamValidator


def req(**fields: Any) -> GenerateRequest:
    out: dict[str, Any] = {"token_ids": [1, 2, 3], **fields}
    return out  # type: ignore[return-value]


# --- prefill / decode -----------------------------------------------------------------


def test_enforce_prefill_max_tokens_clamps_in_place() -> None:
    r = req(stop_conditions={"max_tokens": 50, "stop": ["x"]})
    assert enforce_prefill_max_tokens(r) is r
    assert r["stop_conditions"] == {"max_tokens": 1, "stop": ["x"]}


@pytest.mark.parametrize("stop", [None, "absent"])
def test_enforce_prefill_max_tokens_without_stop_conditions(stop: Any) -> None:
    r = req() if stop == "absent" else req(stop_conditions=stop)
    enforce_prefill_max_tokens(r)
    assert r["stop_conditions"] == {"max_tokens": 1}


def test_extract_prefill_result() -> None:
    handoff = {"disaggregated_params": {"handle": "h"}}
    assert extract_prefill_result(req(prefill_result=handoff)) is handoff
    assert extract_prefill_result(req()) is None


def test_require_prefill_result_names_the_role() -> None:
    handoff = {"disaggregated_params": {}}
    assert require_prefill_result(req(prefill_result=handoff), DisaggregationMode.DECODE) == {
        "disaggregated_params": {}
    }
    with pytest.raises(ValueError, match="decode worker") as info:
        require_prefill_result(req(), DisaggregationMode.DECODE)
    # A ValueError: the client sees 400 "Invalid request", as with stock.
    assert classify(info.value).kind == "InvalidArgument"


# --- encode ------------------------------------------------------------------------------


def test_extract_multimodal_kwargs() -> None:
    assert extract_multimodal_kwargs(req()) is None
    assert extract_multimodal_kwargs(req(multi_modal_data=None, mm_processor_kwargs=None)) is None
    data = {"image_url": [{"url": "x"}]}
    assert extract_multimodal_kwargs(req(multi_modal_data=data)) == {"multi_modal_data": data}
    assert extract_multimodal_kwargs(req(multi_modal_data={}, mm_processor_kwargs={"a": 1})) == {
        "multi_modal_data": {},
        "mm_processor_kwargs": {"a": 1},
    }


def test_require_encoder_result() -> None:
    result = {"handle": "enc:1"}
    assert require_encoder_result(req(encoder_result=result), DisaggregationMode.PREFILL) is result
    with pytest.raises(ValueError, match="prefill worker"):
        require_encoder_result(req(), DisaggregationMode.PREFILL)
    with pytest.raises(ValueError, match="JSON object"):
        require_encoder_result(req(encoder_result=["x"]), DisaggregationMode.AGGREGATED)


def test_encoder_terminal_chunk() -> None:
    result = {"handle": "enc:1"}
    chunk = encoder_terminal_chunk(result)
    assert chunk == {"token_ids": [], "index": 0, "finish_reason": "stop", "encoder_result": result}
    usage = {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
    assert encoder_terminal_chunk(result, completion_usage=usage)["completion_usage"] == usage
    with pytest.raises(TypeError):
        encoder_terminal_chunk("not a dict")  # type: ignore[arg-type]
    # It is a valid terminal for the stream validator, encoder_result forwarded.
    out = StreamValidator(strict=True).accept(dict(chunk))
    assert isinstance(out, dict) and out["encoder_result"] == result


# --- canary probes ------------------------------------------------------------------------


def test_canary_helpers_are_the_health_check_ones() -> None:
    from dynamo_lite import disagg, health_check

    for name in (
        "HEALTH_CHECK_KEY",
        "bos_token_id_or",
        "build_health_check_payload",
        "build_raw_health_check_payload",
        "is_probe",
        "load_health_check_from_env",
    ):
        assert getattr(disagg, name) is getattr(health_check, name)


def test_a_probe_skips_the_decode_precondition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYN_HEALTH_CHECK_PAYLOAD", raising=False)
    canary = build_health_check_payload(1)
    assert is_probe(canary) and not is_probe({HEALTH_CHECK_KEY: "true"})
    assert extract_prefill_result(canary) is None  # type: ignore[arg-type]
