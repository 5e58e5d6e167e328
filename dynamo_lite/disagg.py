"""Helpers for engines that serve a disaggregated or multimodal role.

An engine reads its role (:class:`~dynamo_lite.DisaggregationMode`) from its
own configuration and branches on it in ``generate()``; these helpers are the
pieces that recur, with the names and behaviour of
``dynamo.common.backend.disagg``, ``.multimodal`` and ``.health_check`` 1.6.1:

* prefill / decode: :func:`enforce_prefill_max_tokens`,
  :func:`extract_prefill_result`, :func:`require_prefill_result`;
* encode: :func:`extract_multimodal_kwargs`, :func:`require_encoder_result`,
  :func:`encoder_terminal_chunk`;
* canary probes (re-exported from :mod:`dynamo_lite.health_check`):
  :func:`is_probe`, :func:`build_health_check_payload`,
  :func:`build_raw_health_check_payload`, :func:`bos_token_id_or`,
  :func:`load_health_check_from_env`.

A typical ``generate()``::

    if self.mode is DisaggregationMode.ENCODE:
        yield encoder_terminal_chunk(await self.encode(request))
        return
    if self.mode is DisaggregationMode.DECODE and not is_probe(request):
        handoff = require_prefill_result(request, self.mode)
    if self.mode is DisaggregationMode.PREFILL:
        enforce_prefill_max_tokens(request)
        ...  # the terminal chunk carries "disaggregated_params" for the decode peer

The ``require_*`` helpers raise ``ValueError`` as stock does: the client sees
400 "Invalid request", the message travels as the error's operator-only
diagnostic.
"""

from __future__ import annotations

from typing import Any

from .config import DisaggregationMode
from .engine import GenerateChunk, GenerateRequest
from .health_check import (
    HEALTH_CHECK_KEY,
    bos_token_id_or,
    build_health_check_payload,
    build_raw_health_check_payload,
    is_probe,
    load_health_check_from_env,
)

__all__ = [
    "HEALTH_CHECK_KEY",
    "bos_token_id_or",
    "build_health_check_payload",
    "build_raw_health_check_payload",
    "encoder_terminal_chunk",
    "enforce_prefill_max_tokens",
    "extract_multimodal_kwargs",
    "extract_prefill_result",
    "is_probe",
    "load_health_check_from_env",
    "require_encoder_result",
    "require_prefill_result",
]


# --- prefill / decode --------------------------------------------------------


def enforce_prefill_max_tokens(request: GenerateRequest) -> GenerateRequest:
    """Clamp ``stop_conditions.max_tokens`` to 1, in place; returns ``request``.

    A prefill worker only has to fill the KV cache for the prompt: one token
    is all the decode peer takes over. The caller decides that it is a
    prefill worker; this does not look at the mode.
    """
    stop = request.get("stop_conditions")
    if not isinstance(stop, dict):
        stop = {}
        request["stop_conditions"] = stop
    stop["max_tokens"] = 1
    return request


def extract_prefill_result(request: GenerateRequest) -> dict[str, Any] | None:
    """The ``prefill_result`` the frontend's prefill router attached, or None.

    Decode workers resume from it (its ``disaggregated_params`` say where the
    prefill peer left the KV cache); aggregated requests have none.
    """
    return request.get("prefill_result")


def require_prefill_result(request: GenerateRequest, mode: DisaggregationMode) -> dict[str, Any]:
    """:func:`extract_prefill_result`, raising ``ValueError`` when it is missing.

    ``mode`` only names the worker's role in the message.
    """
    result = extract_prefill_result(request)
    if result is None:
        raise ValueError(
            f"{mode.value} worker received request with no prefill_result: it did not come "
            "through the frontend's prefill router, so there is no prefilled KV cache to "
            "resume from"
        )
    return result


# --- encode ------------------------------------------------------------------

_MULTIMODAL_KEYS = ("multi_modal_data", "mm_processor_kwargs")


def extract_multimodal_kwargs(request: GenerateRequest) -> dict[str, Any] | None:
    """``multi_modal_data`` / ``mm_processor_kwargs`` as keyword arguments.

    Keys that are absent or None are left out, values pass through untouched
    (``{}`` included); None when neither is there, so
    ``engine.run(**(extract_multimodal_kwargs(req) or {}))`` needs no branch.
    """
    found = {key: request.get(key) for key in _MULTIMODAL_KEYS}
    kwargs = {key: value for key, value in found.items() if value is not None}
    return kwargs or None


def _object_only(value: Any, expected: str) -> str:
    # The stock wording ("must be a JSON object" / "must be a dict"), which
    # operators and the stock tests match on.
    return (
        f"encoder_result must be {expected}; got {type(value).__name__} ({value!r}): "
        "its wire shape is always an object"
    )


def require_encoder_result(request: GenerateRequest, mode: DisaggregationMode) -> dict[str, Any]:
    """The ``encoder_result`` an Encode peer produced for this request.

    Raises ``ValueError`` when it is missing (the request skipped encoder
    routing) or is not a dict. Its contents belong to the engine.
    """
    result: Any = request.get("encoder_result")
    if result is None:
        raise ValueError(
            f"{mode.value} worker received request with no encoder_result: the frontend "
            "did not route it through an Encode worker"
        )
    if not isinstance(result, dict):
        raise ValueError(_object_only(result, "a JSON object (dict)"))
    return result


def encoder_terminal_chunk(
    encoder_result: dict[str, Any], *, completion_usage: dict[str, int] | None = None
) -> GenerateChunk:
    """The single, terminal chunk an Encode worker yields.

    No tokens, ``index`` 0, ``finish_reason`` ``"stop"`` and the
    ``encoder_result`` unchanged; ``completion_usage`` only when given.
    Raises ``TypeError`` when ``encoder_result`` is not a dict.
    """
    if not isinstance(encoder_result, dict):
        raise TypeError(_object_only(encoder_result, "a dict"))
    chunk: GenerateChunk = {
        "token_ids": [],
        "index": 0,
        "finish_reason": "stop",
        "encoder_result": encoder_result,
    }
    if completion_usage is not None:
        chunk["completion_usage"] = completion_usage
    return chunk
