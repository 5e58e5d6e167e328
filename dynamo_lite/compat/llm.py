"""``dynamo.llm``: the names backend engines take from it, in pure Python.

``ModelInput`` is dynamo_lite's. A ``KvEventPublisher`` an engine builds
itself accepts and counts events; the publisher a ``PushSource`` receives
from the worker (:mod:`dynamo_lite.kv.publisher`) is the one that
publishes. ``ModelRuntimeConfig``, ``MediaDecoder`` and ``MediaFetcher`` hold
the options engines set on them.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelInput
from ..model_cards import ModelType, register_model, unregister_model

__all__ = [
    "KvEventPublisher",
    "MediaDecoder",
    "MediaFetcher",
    "ModelInput",
    "ModelRuntimeConfig",
    "ModelType",
    "register_llm",
    "register_model",
    "unregister_llm",
    "unregister_model",
]

register_llm = register_model
unregister_llm = unregister_model


class KvEventPublisher:
    """Takes ``publish_stored`` / ``publish_removed`` / ``publish_batch`` calls and counts them."""

    def __init__(self, endpoint: Any = None, worker_id: int | None = None, **kwargs: Any) -> None:
        self.endpoint = endpoint
        self.worker_id = worker_id
        self.options = dict(kwargs)
        self.events = 0

    def publish_stored(self, token_ids: list[int], num_block_tokens: list[int],
                       block_hashes: list[int], **kwargs: Any) -> None:  # fmt: skip
        del token_ids, num_block_tokens, block_hashes, kwargs
        self.events += 1

    def publish_removed(self, block_hashes: list[int]) -> None:
        del block_hashes
        self.events += 1

    def publish_batch(self, events: list[Any]) -> None:
        self.events += len(events)


class ModelRuntimeConfig:
    """Runtime facts a worker advertises; engine-specific values under their own keys."""

    def __init__(self) -> None:
        self.context_length: int | None = None
        self.total_kv_blocks: int | None = None
        self.max_num_seqs: int | None = None
        self.max_num_batched_tokens: int | None = None
        self.tool_call_parser: str | None = None
        self.reasoning_parser: str | None = None
        self.tokenizer_backend: str | None = None
        self.structural_tag: dict[str, Any] | None = None
        self.exclude_tools_when_tool_choice_none = True
        self.data_parallel_start_rank = 0
        self.data_parallel_size = 1
        self.enable_local_indexer = False
        self.enable_eagle = False
        self.bootstrap_host: str | None = None
        self.bootstrap_port: int | None = None
        self.runtime_data: dict[str, Any] = {}

    def set_engine_specific(self, key: str, value: Any) -> None:
        self.runtime_data[key] = value

    def get_engine_specific(self, key: str) -> Any | None:
        return self.runtime_data.get(key)

    def set_structural_tag(self, structural_tag: dict[str, Any] | None) -> None:
        self.structural_tag = structural_tag

    def set_disaggregated_endpoint(
        self, bootstrap_host: str | None = None, bootstrap_port: int | None = None
    ) -> None:
        self.bootstrap_host = bootstrap_host
        self.bootstrap_port = bootstrap_port


class MediaDecoder:
    """Image/video decoding options (recorded; dynamo_lite decodes no media)."""

    def __init__(self) -> None:
        self.image_options: dict[str, Any] | None = None

    def enable_image(self, decoder_options: dict[str, Any]) -> None:
        self.image_options = dict(decoder_options)


class MediaFetcher:
    """Remote media fetch options (recorded; dynamo_lite fetches no media)."""

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}

    def user_agent(self, user_agent: str) -> None:
        self.options["user_agent"] = user_agent

    def allow_direct_ip(self, allow: bool) -> None:
        self.options["allow_direct_ip"] = allow

    def allow_direct_port(self, allow: bool) -> None:
        self.options["allow_direct_port"] = allow

    def allowed_media_domains(self, domains: list[str]) -> None:
        self.options["allowed_media_domains"] = list(domains)

    def timeout_ms(self, timeout_ms: int) -> None:
        self.options["timeout_ms"] = timeout_ms
