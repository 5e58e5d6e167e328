"""Model-card fields as the stock 1.6.1 worker writes them: ``chat_template_file``
(``custom_jinja_template``), ``structural_tag``, ``default_thinking_mode`` and
``max_gpu_lora_count`` — the same engine on both runtimes, cards compared."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dynamo_lite.card_fields import InvalidStructuralTag, structural_tag_fields
from tests.support.lite import REPO, worker_env
from tests.support.services import ManagedProcess

ENGINE = REPO / "tests" / "engines" / "card_engine.py"

# Captured from the stock worker (runtime_config of its card, or its startup error).
STRUCTURAL_TAGS: list[tuple[Any, Any]] = [
    ({}, {"structural_tag": {"scope": "auto", "schema": "auto",
                             "allow_tool_calls_with_structured_output": False,
                             "reasoning_boundary": "auto", "tool_arguments_any_order": False},
          "structural_tag_mode": "on", "structural_tag_scope": "auto",
          "structural_tag_schema": "auto"}),
    ({"exclude_special_tokens": False},
     {"structural_tag": {"scope": "auto", "schema": "auto",
                         "allow_tool_calls_with_structured_output": False,
                         "exclude_special_tokens": False, "reasoning_boundary": "auto",
                         "tool_arguments_any_order": False},
      "structural_tag_mode": "on", "structural_tag_scope": "auto",
      "structural_tag_schema": "auto"}),
    ({"mode": "on"}, "unknown field `mode`, expected one of `scope`, `schema`, "
     "`allow_tool_calls_with_structured_output`, `exclude_special_tokens`, "
     "`reasoning_boundary`, `tool_arguments_any_order`"),
    ({"scope": "bogus"}, "unknown variant `bogus`, expected `auto` or `always`"),
    ({"schema": "bogus"}, "unknown variant `bogus`, expected `auto` or `strict`"),
    ({"schema": {"type": "object"}}, "unknown variant `type`, expected `auto` or `strict`"),
    ({"schema": 3}, "invalid type: integer `3`, expected string or map"),
    ({"scope": None}, "invalid type: null, expected string or map"),
    ({"reasoning_boundary": "x"},
     "unknown variant `x`, expected one of `auto`, `structural_tag`, `backend`"),
    ({"allow_tool_calls_with_structured_output": "yes"},
     'invalid type: string "yes", expected a boolean'),
]  # fmt: skip
FULL_TAG = {
    "scope": "always",
    "schema": "strict",
    "allow_tool_calls_with_structured_output": True,
    "exclude_special_tokens": True,
    "reasoning_boundary": "backend",
    "tool_arguments_any_order": True,
}


@pytest.mark.parametrize(("tag", "expected"), STRUCTURAL_TAGS)
def test_structural_tag_as_stock_writes_or_refuses_it(tag: Any, expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(InvalidStructuralTag) as info:
            structural_tag_fields(tag)
        assert str(info.value) == f"Invalid structural_tag config: {expected}"
    else:
        assert structural_tag_fields(tag) == expected
        assert list(structural_tag_fields(tag)["structural_tag"]) == list(
            expected["structural_tag"]
        )


def test_no_structural_tag_is_mode_off() -> None:
    assert structural_tag_fields(None) == {
        "structural_tag_mode": "off",
        "structural_tag_scope": "auto",
        "structural_tag_schema": "auto",
    }


def _card(argv: list[str], tmp_path: Path, name: str, **env: Any) -> dict[str, Any]:
    kv = tmp_path / f"kv-{name}"
    kv.mkdir()
    proc = ManagedProcess(
        argv, env=worker_env(file_kv=kv, **env), name=name, log_path=tmp_path / f"{name}.log"
    ).start()
    try:
        deadline = time.monotonic() + 60  # a generous bound only catches a hang
        while True:
            found = [p for p in kv.rglob("*") if p.is_file() and p.parent.name == "mdc"]
            if found:
                text = found[0].read_text()
                if text:
                    card: dict[str, Any] = json.loads(text)["card_json"]
                    return card
            assert proc.running, proc.describe_log()
            assert time.monotonic() < deadline, proc.describe_log()
            time.sleep(0.05)
    finally:
        proc.close()


@pytest.mark.interop
def test_the_card_fields_match_the_stock_card(
    tmp_path: Path, tiny_model: Path, stock_python_path: Path
) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages }}\n")
    env = {
        "CARD_WORKER": json.dumps(
            {
                "custom_jinja_template": str(template),
                "default_thinking_mode": "on",
                "structural_tag": FULL_TAG,
            }
        ),
        "CARD_LLM": json.dumps({"max_gpu_lora_count": 4}),
    }
    args = [str(ENGINE), "--model-name", str(tiny_model), "--discovery-backend", "file",
            "--disable-kv-routing"]  # fmt: skip
    stock = _card([str(stock_python_path), *args], tmp_path, "stock", **env)
    lite = _card([sys.executable, "-m", "dynamo_lite.compat", *args], tmp_path, "lite", **env)
    # dynamo_lite serves no KV query endpoint, so it never advertises a local indexer.
    assert stock["runtime_config"].pop("enable_local_indexer") is True
    assert lite["runtime_config"].pop("enable_local_indexer") is False
    assert json.dumps(lite) == json.dumps(stock)  # same keys, same order, same values
    assert lite["chat_template_file"]["hf_chat_template"]["is_custom"] is True
    assert lite["runtime_config"]["max_gpu_lora_count"] == 4


@pytest.mark.interop
def test_a_bad_structural_tag_fails_startup_on_both(
    tmp_path: Path, tiny_model: Path, stock_python_path: Path
) -> None:
    args = [str(ENGINE), "--model-name", str(tiny_model), "--discovery-backend", "file"]
    env = worker_env(file_kv=tmp_path, CARD_WORKER=json.dumps({"structural_tag": {"mode": 1}}))
    for head in ([str(stock_python_path)], [sys.executable, "-m", "dynamo_lite.compat"]):
        r = subprocess.run([*head, *args], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stderr[-3000:]
        assert "Invalid structural_tag config: unknown field `mode`" in r.stderr, r.stderr[-3000:]
