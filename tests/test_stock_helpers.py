"""Stock helpers the stock package's own tests leave uncovered: token ids, agent context,
the Prometheus multi-process directory, the EngineConfig dataclass."""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import pytest

from dynamo_lite import EngineConfig, LlmRegistration
from dynamo_lite.agent_context import agent_context_from_request, session_id_from_request
from dynamo_lite.metrics import ensure_prometheus_multiproc_dir
from dynamo_lite.token_ids import normalize_request_token_ids, token_ids_len, token_ids_to_list


def test_token_ids_in_every_shape() -> None:
    packed = struct.pack("<3i", 1, -2, 70000)
    assert token_ids_to_list(packed) == [1, -2, 70000]
    assert token_ids_to_list(bytearray(packed)) == [1, -2, 70000]
    assert token_ids_to_list(memoryview(packed)) == [1, -2, 70000]
    assert token_ids_to_list((4, 5)) == [4, 5]
    same = [1, 2]
    assert token_ids_to_list(same) is same and token_ids_to_list(None) is None
    with pytest.raises(ValueError, match="multiple of 4"):
        token_ids_to_list(b"\x00\x01\x02")
    assert token_ids_len(packed) == 3 and token_ids_len(None) == 0 and token_ids_len([1]) == 1
    request = {"token_ids": packed}
    assert normalize_request_token_ids(request) is request and request["token_ids"] == [
        1,
        -2,
        70000,
    ]
    assert normalize_request_token_ids({}) == {}


def test_agent_context() -> None:
    assert agent_context_from_request({"agent_context": {"session_id": " s1 "}}) == {
        "session_id": " s1 "
    }
    assert agent_context_from_request({"agent_context": "nope"}) is None
    assert session_id_from_request({"agent_context": {"session_id": " s1 "}}) == "s1"
    for ctx in ({"session_id": "  "}, {"session_id": 3}, {}, None):
        assert session_id_from_request({"agent_context": ctx}) is None


def test_ensure_prometheus_multiproc_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Set, then removed, so that monkeypatch restores the variable's absence afterwards.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unset-below")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    owned = ensure_prometheus_multiproc_dir("engine-")
    assert owned is not None
    try:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == owned.name
        assert Path(owned.name).name.startswith("engine-") and Path(owned.name).is_dir()
    finally:
        owned.cleanup()
    preset = tmp_path / "gone"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(preset))
    assert ensure_prometheus_multiproc_dir("engine-") is None
    assert preset.is_dir()  # an operator's directory is recreated, not replaced


def test_engine_config_is_the_stock_dataclass() -> None:
    assert [f.name for f in dataclasses.fields(EngineConfig)] == [
        "model",
        "served_model_name",
        "runtime_data",
        "llm",
        "model_aliases",
    ]
    cfg = EngineConfig(model="m", context_length=4096)
    assert dataclasses.asdict(cfg)["llm"]["context_length"] == 4096
    assert dataclasses.replace(cfg, model="n").llm == LlmRegistration(context_length=4096)
    assert EngineConfig("m").model_aliases == []
