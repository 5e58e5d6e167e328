"""Health-check payload (stock module); canary.py sends it, system_server.HealthStatus is /health.

Canary payload helpers, with the names and behaviour of ``dynamo.common.backend.health_check``.
Three modules deal with health, one concept each: this one builds the
*payload*; :mod:`dynamo_lite.canary` *sends* it when the endpoint is idle
and judges the answer; :class:`dynamo_lite.system_server.HealthStatus` is
the *served status* that verdict sets.

Producer side: an engine's ``health_check_payload()`` returns
:func:`build_health_check_payload` (a one-token request plus backend
extras); an operator overrides it with ``DYN_HEALTH_CHECK_PAYLOAD`` (a JSON
object or ``@/path/to/file.json``) or the engine's ``--health-check-payload``
flag (:func:`parse_health_check_payload_cli`). Every payload carries
``"_HEALTH_CHECK": true``.

Consumer side: ``generate()`` calls :func:`is_probe` to recognise a canary
request (for example to skip cross-worker coordination for it).

How the worker picks the payload it actually sends is in
:func:`dynamo_lite.canary.resolve_payload`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "HEALTH_CHECK_ENV",
    "HEALTH_CHECK_KEY",
    "bos_token_id_or",
    "build_health_check_payload",
    "build_raw_health_check_payload",
    "is_probe",
    "load_health_check_from_env",
    "parse_health_check_payload_cli",
    "stamp_marker",
]

#: The marker every canary request carries (stock: ``dynamo._core.backend.HEALTH_CHECK_KEY``).
HEALTH_CHECK_KEY = "_HEALTH_CHECK"
HEALTH_CHECK_ENV = "DYN_HEALTH_CHECK_PAYLOAD"


def is_probe(request: Mapping[str, Any]) -> bool:
    """True for a canary request: the marker must be the boolean ``True`` itself."""
    return request.get(HEALTH_CHECK_KEY) is True


def stamp_marker(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``payload`` with the marker set (an explicit ``false`` is overwritten)."""
    out = dict(payload)
    out[HEALTH_CHECK_KEY] = True
    return out


def _read_json(text: str) -> Any:
    """``text`` as JSON, or the JSON in the file ``text[1:]`` names when it starts with ``@``."""
    if text.startswith("@"):
        return json.loads(Path(text[1:]).read_text())
    return json.loads(text)


def load_health_check_from_env(
    env_var: str = HEALTH_CHECK_ENV, env: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The payload in ``env_var`` (JSON object or ``@file``), unmarked; None if unset.

    Unparsable JSON, a missing file or a non-object are logged at WARNING and
    give None, so the next source in the precedence order applies. ``env``
    defaults to the process environment, as stock's helper (engines call it
    from their own code); the configuration layer hands it over.
    """
    if env is None:
        from .config import process_environ

        env = process_environ()
    return parse_health_check_value(env.get(env_var), env_var)


def parse_health_check_value(
    value: str | None, source: str = HEALTH_CHECK_ENV
) -> dict[str, Any] | None:
    """A health-check payload given as ``source``'s value (JSON object or
    ``@file``), unmarked; None if empty. Problems are warned about (naming
    ``source``) and give None."""
    if not value:
        return None
    try:
        parsed = _read_json(value)
    except (OSError, ValueError) as exc:
        logger.warning("Failed to parse %s: %s", source, exc)
        return None
    if not isinstance(parsed, dict):
        logger.warning("%s must be a JSON object (dict). Got: %s", source, type(parsed).__name__)
        return None
    return parsed


def build_health_check_payload(
    bos_token_id: int, *, extras: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The token-engine canary: one BOS token, ``max_tokens`` 1, greedy.

    ``extras`` are merged on top; ``DYN_HEALTH_CHECK_PAYLOAD``, when set to
    a valid object (even ``{}``), replaces the whole result. The marker is
    always stamped.
    """
    payload: dict[str, Any] = {
        "token_ids": [bos_token_id],
        "stop_conditions": {"max_tokens": 1, "ignore_eos": True},
        "sampling_options": {"temperature": 0.0},
    }
    if extras:
        payload.update(extras)
    return _finalize(payload)


def build_raw_health_check_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The raw-engine canary: ``payload`` as given, same env override and marker."""
    return _finalize(dict(payload))


def _finalize(payload: dict[str, Any]) -> dict[str, Any]:
    override = load_health_check_from_env()
    return stamp_marker(override if override is not None else payload)


def bos_token_id_or(tokenizer: Any, default: int = 1) -> int:
    """``tokenizer.bos_token_id``, else ``tokenizer.tokenizer.bos_token_id``, else ``default``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        bos = getattr(getattr(tokenizer, "tokenizer", None), "bos_token_id", None)
    return int(bos) if bos is not None else default


def parse_health_check_payload_cli(value: Any) -> dict[str, Any] | None:
    """``--health-check-payload``: a JSON object or ``@file`` (or a dict), marked.

    Invalid input is logged at WARNING and gives None so the next source
    (the environment, then the engine's default) still applies.
    """
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return stamp_marker(value)
    try:
        parsed = _read_json(str(value))
    except (OSError, ValueError) as exc:
        logger.warning("Failed to parse --health-check-payload value: %s", exc)
        return None
    if not isinstance(parsed, dict):
        logger.warning(
            "--health-check-payload must be a JSON object; got %s", type(parsed).__name__
        )
        return None
    return stamp_marker(parsed)
