"""Log-probability helpers (``dynamo.common.backend.logprobs``).

The wire format on a :class:`~dynamo_lite.GenerateChunk`: ``log_probs`` is a
``list[float]`` aligned with the chunk's ``token_ids``; ``top_logprobs`` is,
per position, a list of ``{"rank", "token_id", "token", "logprob"}`` entries
(plus ``"bytes"`` in the OpenAI/vLLM shape). The frontend zips both lists
against ``token_ids`` by position, so a chunk whose selected-token logprobs
are incomplete carries none at all rather than a shorter list.

Two engine shapes are read:

* vLLM / TRT-LLM ``CompletionOutput``: cumulative ``token_ids`` and
  ``logprobs`` (one ``{token_id: info}`` dict per position, ``info`` having
  ``logprob``, optionally ``rank`` and ``decoded_token``);
* SGLang ``meta_info``: incremental ``output_token_logprobs`` tuples
  ``(logprob, token_id, text)`` and ``output_top_logprobs`` lists of them.

Prompt logprobs go in ``engine_data["prompt_logprobs"]``: one entry per prompt
position, None for the first, else ``{str(token_id): {"logprob", "rank"?,
"decoded_token"?}}`` (string keys survive the JSON round trip).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "build_sglang_logprob_kwargs",
    "extract_from_completion_output",
    "extract_from_sglang_meta",
    "extract_prompt_logprobs_from_completion_output",
    "extract_prompt_logprobs_from_sglang_meta",
    "parse_logprob_options",
]

logger = logging.getLogger(__name__)

LogProbs = list[float]
TopLogProbs = list[list[dict[str, Any]]]
PromptLogProbs = list[dict[str, dict[str, Any]] | None]


def _count(value: Any, name: str) -> int | None:
    """A non-negative int from ``value``; None (with a warning for bad input) otherwise."""
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        logger.warning("Invalid %s value: %r (must be integer), ignoring", name, value)
        return None
    if number >= 0:
        return number
    logger.warning("Invalid %s value: %r (must be non-negative), ignoring", name, value)
    return None


def parse_logprob_options(output_options: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(logprobs, prompt_logprobs)`` from ``output_options``; None when unset or bad."""
    if not output_options:
        return None, None
    top_k = _count(output_options.get("logprobs"), "logprobs")
    return top_k, _count(output_options.get("prompt_logprobs"), "prompt_logprobs")


def _decoder(tokenizer: Any) -> Callable[[int, Any], str | None]:
    """The text of a token: the engine's ``decoded_token``, else the tokenizer's, else None."""

    def text(token_id: int, info: Any) -> str | None:
        decoded = getattr(info, "decoded_token", None)
        if decoded or tokenizer is None:
            return decoded or None
        try:
            return str(tokenizer.decode([token_id]))
        except Exception:
            logger.debug("tokenizer.decode failed for token_id=%s", token_id, exc_info=True)
            return None

    return text


def extract_from_completion_output(
    output: Any,
    num_output_tokens_so_far: int,
    tokenizer: Any = None,
    *,
    fallback_to_first_on_missing: bool = False,
    include_bytes: bool = False,
) -> tuple[LogProbs | None, TopLogProbs | None]:
    """The logprobs of the tokens after ``num_output_tokens_so_far`` in a cumulative output.

    ``(None, None)`` when there are none, or when any position lacks the
    selected token's logprob (unless ``fallback_to_first_on_missing``: then
    the position's first entry stands in, as TRT-LLM needs). A flat list of
    floats (another TRT-LLM shape) gives the selected logprobs and no top-k.
    """
    all_logprobs = getattr(output, "logprobs", None)
    if not all_logprobs:  # None, or TRT-LLM's [] for "not requested"
        return None, None
    token_ids = list(getattr(output, "token_ids", None) or ())
    new_ids = token_ids[num_output_tokens_so_far:]
    window = list(all_logprobs[num_output_tokens_so_far:][: len(new_ids)])
    if not new_ids or not window:
        return None, None
    if isinstance(window[0], float):
        return [float(v) for v in window], None

    text = _decoder(tokenizer)
    selected_lps: LogProbs = []
    top: TopLogProbs = []
    for token_id, candidates in zip(new_ids, window, strict=False):
        if candidates is None:
            return None, None
        chosen = candidates.get(token_id)
        if chosen is None and fallback_to_first_on_missing:
            chosen = next(iter(candidates.values()), None)
        if chosen is None:
            return None, None
        selected_lps.append(float(chosen.logprob))
        position = []
        for cand_id, info in candidates.items():
            token = text(cand_id, info)
            entry: dict[str, Any] = {
                "rank": getattr(info, "rank", 0),
                "token_id": cand_id,
                "token": token,
                "logprob": float(info.logprob),
            }
            if include_bytes:
                entry["bytes"] = list(token.encode()) if token else None
            position.append(entry)
        top.append(position)
    return selected_lps or None, top or None


def extract_prompt_logprobs_from_completion_output(
    output: Any, tokenizer: Any = None
) -> PromptLogProbs | None:
    """``output.prompt_logprobs`` in the wire shape, or None when the engine computed none."""
    positions = getattr(output, "prompt_logprobs", None)
    if not positions:
        return None
    text = _decoder(tokenizer)
    result: PromptLogProbs = []
    for candidates in positions:
        if candidates is None:
            result.append(None)
            continue
        by_id: dict[str, dict[str, Any]] = {}
        for cand_id, info in candidates.items():
            entry: dict[str, Any] = {"logprob": float(info.logprob)}
            rank = getattr(info, "rank", None)
            if rank is not None:
                entry["rank"] = int(rank)
            token = text(cand_id, info)
            if token is not None:
                entry["decoded_token"] = token
            by_id[str(cand_id)] = entry
        result.append(by_id)
    return result


def _sglang_entry(logprob: Any, decoded: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"logprob": float(logprob)}
    if decoded is not None:
        entry["decoded_token"] = decoded
    return entry


def extract_prompt_logprobs_from_sglang_meta(meta: Mapping[str, Any]) -> PromptLogProbs | None:
    """SGLang's ``input_token_logprobs`` (+ ``input_top_logprobs`` alternatives) in the wire shape.

    A position whose logprob is None (SGLang's first prompt token) stays None;
    the selected token wins over an alternative with the same id.
    """
    selected: list[Any] = list(meta.get("input_token_logprobs") or ())
    if not selected:
        return None
    alternatives: list[Any] = list(meta.get("input_top_logprobs") or ())
    result: PromptLogProbs = []
    for pos, (logprob, token_id, decoded) in enumerate(selected):
        if logprob is None:
            result.append(None)
            continue
        by_id = {str(token_id): _sglang_entry(logprob, decoded)}
        extra: Iterable[Any] = (alternatives[pos] if pos < len(alternatives) else None) or ()
        for alt_lp, alt_id, alt_decoded in extra:
            by_id.setdefault(str(alt_id), _sglang_entry(alt_lp, alt_decoded))
        result.append(by_id)
    return result


def build_sglang_logprob_kwargs(output_options: Mapping[str, Any]) -> dict[str, Any]:
    """SGLang's ``return_logprob`` / ``top_logprobs_num`` / ``logprob_start_len`` for the options.

    Prompt logprobs start at position 0 (SGLang's default covers only the
    output) and widen ``top_logprobs_num`` to the larger of the two counts.
    """
    if not output_options:
        return {}
    kwargs: dict[str, Any] = {}
    top_k = (
        _count(output_options["logprobs"], "logprobs")
        if output_options.get("logprobs") is not None
        else None
    )
    if top_k is not None:
        kwargs.update(return_logprob=True, top_logprobs_num=top_k)
    prompt_k = (
        _count(output_options["prompt_logprobs"], "prompt_logprobs")
        if output_options.get("prompt_logprobs") is not None
        else None
    )
    if prompt_k is not None:
        kwargs["return_logprob"] = True
        kwargs["top_logprobs_num"] = max(kwargs.get("top_logprobs_num", 0), prompt_k)
        kwargs["logprob_start_len"] = 0
    return kwargs


def extract_from_sglang_meta(
    meta_info: Mapping[str, Any], *, return_tokens_as_token_ids: bool = False
) -> tuple[LogProbs | None, TopLogProbs | None]:
    """The chunk's logprobs from SGLang's incremental ``meta_info`` (already chunk-aligned)."""
    selected = meta_info.get("output_token_logprobs")
    if not selected:
        return None, None
    log_probs = [float(item[0]) for item in selected]
    per_position = meta_info.get("output_top_logprobs")
    if not per_position:
        return log_probs, None
    top: TopLogProbs = []
    for items in per_position:
        top.append(
            [
                {
                    "rank": rank,
                    "token_id": item[1],
                    "token": f"token_id:{item[1]}" if return_tokens_as_token_ids else item[2],
                    "logprob": float(item[0]),
                }
                for rank, item in enumerate(items or (), start=1)
            ]
        )
    return log_probs, top
