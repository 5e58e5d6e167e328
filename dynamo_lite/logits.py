"""Backend-neutral logits-processor specifications (the ``dynamo.common.backend.engine`` family).

An engine that wants custom logits processing returns a
:class:`LogitsProcessorSpec` from ``LLMEngine.logits_processor_spec()`` at
start-up and, per request, asks :func:`logits_processors_for_request` which
entries apply to its role; realising an entry as its inference library's
processor (fresh per request: processors keep state) is the engine's job.
Only :class:`ForcedTokenSequenceSpec` has a serialised form (for crossing a
process boundary); :class:`PythonProcessorSpec` holds a live factory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import DisaggregationMode

__all__ = [
    "ForcedTokenSequenceSpec",
    "LogitsProcessorEntry",
    "LogitsProcessorSpec",
    "PythonProcessorSpec",
    "deserialize_logits_processor_entries",
    "is_generation_stage",
    "logits_processors_for_request",
    "serialize_logits_processor_entries",
]


@dataclass(frozen=True)
class ForcedTokenSequenceSpec:
    """Force ``token_ids`` one after another, then ``eos_token_id``."""

    token_ids: tuple[int, ...]
    eos_token_id: int


@dataclass(frozen=True)
class PythonProcessorSpec:
    """An in-process processor built by ``factory()``; not serialisable."""

    factory: Callable[[], Any]


LogitsProcessorEntry = ForcedTokenSequenceSpec | PythonProcessorSpec


@dataclass(frozen=True)
class LogitsProcessorSpec:
    """The entries an engine activates; ``generation_only`` skips prefill and encode roles."""

    entries: tuple[LogitsProcessorEntry, ...]
    generation_only: bool = True


def is_generation_stage(disaggregation_mode: DisaggregationMode) -> bool:
    """True for the roles that produce the tokens the client sees (aggregated, decode)."""
    return disaggregation_mode in (DisaggregationMode.AGGREGATED, DisaggregationMode.DECODE)


def logits_processors_for_request(
    spec: LogitsProcessorSpec | None, *, disaggregation_mode: DisaggregationMode
) -> list[LogitsProcessorEntry]:
    """The entries to realise for one request on a worker in ``disaggregation_mode``."""
    if spec is None or (spec.generation_only and not is_generation_stage(disaggregation_mode)):
        return []
    return list(spec.entries)


_FORCED = "forced_sequence"


def serialize_logits_processor_entries(
    entries: Sequence[LogitsProcessorEntry],
) -> list[dict[str, Any]]:
    """JSON-safe dicts for ``entries``; TypeError for an entry without a serialised form."""
    out: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, ForcedTokenSequenceSpec):
            raise TypeError(
                f"logits-processor entry of type {type(entry).__name__} is not serializable; "
                "only ForcedTokenSequenceSpec crosses a serialized request boundary"
            )
        out.append(
            {
                "kind": _FORCED,
                "token_ids": list(entry.token_ids),
                "eos_token_id": entry.eos_token_id,
            }
        )
    return out


def deserialize_logits_processor_entries(
    payload: Sequence[Mapping[str, Any]],
) -> list[LogitsProcessorEntry]:
    """The inverse of :func:`serialize_logits_processor_entries`; ValueError for an unknown kind."""
    out: list[LogitsProcessorEntry] = []
    for item in payload:
        kind = item.get("kind")
        if kind != _FORCED:
            raise ValueError(f"unknown logits-processor entry kind: {kind!r}")
        out.append(
            ForcedTokenSequenceSpec(
                token_ids=tuple(item["token_ids"]), eos_token_id=item["eos_token_id"]
            )
        )
    return out
