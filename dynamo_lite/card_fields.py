"""Optional model-card fields, written as the stock 1.6.1 worker writes them.

Captured from stock cards (``tests/interop/test_card_fields.py`` compares both
runtimes' cards for the same engine):

* ``WorkerConfig.custom_jinja_template`` → a top-level ``chat_template_file``
  ``{"hf_chat_template": {"is_custom": true, "file": {path, checksum, size}}}``
  between ``prompt_formatter`` and ``gen_config``.
* ``WorkerConfig.structural_tag`` → ``runtime_config.structural_tag`` (the
  normalised config, all defaults filled in; ``exclude_special_tokens`` only
  when given) ahead of ``structural_tag_mode`` (``on``), ``…_scope`` and
  ``…_schema`` (mirroring the config). Without one: mode ``off``, the key
  absent. A bad config fails startup with stock's ``Invalid structural_tag
  config: …`` (serde's wording).
* ``WorkerConfig.default_thinking_mode`` → ``runtime_config.runtime_data``.
* ``LlmRegistration.max_gpu_lora_count`` → ``runtime_config.max_gpu_lora_count``
  after ``enable_eagle``, only when set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checksum import file_checksum

__all__ = ["InvalidStructuralTag", "chat_template_file", "structural_tag_fields"]

_ENUMS: dict[str, tuple[str, ...]] = {
    "scope": ("auto", "always"),
    "schema": ("auto", "strict"),
    "reasoning_boundary": ("auto", "structural_tag", "backend"),
}
_BOOLS = (
    "allow_tool_calls_with_structured_output",
    "exclude_special_tokens",
    "tool_arguments_any_order",
)
#: Field order of stock's serialised config.
_FIELDS = ("scope", "schema", *_BOOLS[:2], "reasoning_boundary", _BOOLS[2])


class InvalidStructuralTag(ValueError):
    """``structural_tag`` is not a config stock accepts."""


def _serde_type(value: Any) -> str:
    """How serde names the type of a value it did not expect."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{json.dumps(value)}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list | tuple):
        return "sequence"
    return "map"


def _one_of(allowed: tuple[str, ...]) -> str:
    quoted = [f"`{a}`" for a in allowed]
    return " or ".join(quoted) if len(quoted) == 2 else "one of " + ", ".join(quoted)


def _invalid(detail: str) -> InvalidStructuralTag:
    return InvalidStructuralTag(f"Invalid structural_tag config: {detail}")


def _variant(name: str, value: Any) -> str:
    allowed = _ENUMS[name]
    if isinstance(value, Mapping) and len(value) == 1:
        value = next(iter(value))  # serde's externally tagged form: {"variant": …}
    elif not isinstance(value, str):
        raise _invalid(f"invalid type: {_serde_type(value)}, expected string or map")
    if value not in allowed:
        raise _invalid(f"unknown variant `{value}`, expected {_one_of(allowed)}")
    return str(value)


def normalise_structural_tag(tag: Mapping[str, Any]) -> dict[str, Any]:
    """The config as stock stores it: defaults filled in, in stock's order."""
    if not isinstance(tag, Mapping):
        raise _invalid(f"invalid type: {_serde_type(tag)}, expected struct StructuralTagConfig")
    for key in tag:
        if key not in _FIELDS:
            expected = ", ".join(f"`{f}`" for f in _FIELDS)
            raise _invalid(f"unknown field `{key}`, expected one of {expected}")
    out: dict[str, Any] = {}
    for name in _FIELDS:
        if name in _ENUMS:
            out[name] = _variant(name, tag[name]) if name in tag else "auto"
            continue
        if name not in tag:
            if name != "exclude_special_tokens":  # optional: absent unless given
                out[name] = False
            continue
        value = tag[name]
        if not isinstance(value, bool):
            raise _invalid(f"invalid type: {_serde_type(value)}, expected a boolean")
        out[name] = value
    return out


def structural_tag_fields(tag: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``runtime_config`` entries for a worker's structural-tag setting."""
    if tag is None:
        return {
            "structural_tag_mode": "off",
            "structural_tag_scope": "auto",
            "structural_tag_schema": "auto",
        }
    config = normalise_structural_tag(tag)
    return {
        "structural_tag": config,
        "structural_tag_mode": "on",
        "structural_tag_scope": config["scope"],
        "structural_tag_schema": config["schema"],
    }


def chat_template_file(path: str | Path) -> dict[str, Any]:
    """The card's ``chat_template_file`` for a custom Jinja template."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"custom_jinja_template {str(path)!r} is not a file")
    file = file.resolve()
    checksum, size = file_checksum(file)
    return {
        "hf_chat_template": {
            "is_custom": True,
            "file": {"path": str(file), "checksum": checksum, "size": size},
        }
    }
