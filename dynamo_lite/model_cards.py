"""Model cards an engine publishes itself: dynamic LoRA adapters (``register_model``).

Stock engines call ``dynamo.llm.register_model(…, endpoint, …, lora_name=…,
base_model_path=…)`` with the endpoint ``on_endpoint_ready`` gave them, and
``unregister_model(endpoint, lora_name=…)`` to withdraw it. The record stock
writes (captured from the 1.6.1 worker, compared in
``tests/interop/test_model_cards.py``):

* key ``v1/mdc/<ns>/<component>/<endpoint>/<instance hex>/<lora name>``, the
  record the base card's plus ``"model_suffix": <lora name>``;
* the card built from the files at ``model_path`` like the base card, named
  after the adapter, with ``"lora": {"name": …}`` after ``needs`` and no
  ``runtime_config.context_length`` unless a runtime config is passed;
* with a system port, the files self-hosted under
  ``/v1/metadata/<ns>/<component>/<endpoint>/<slug>/<slug>/``.

dynamo_lite publishes LoRA cards only (it registers the base model itself);
the worker withdraws what is still published when it shuts down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
from typing import Any

from .card import ModelFiles, build_card, slugify
from .config import ModelInput
from .discovery import keys as dkeys
from .engine import EngineConfig
from .registration import serve_files

__all__ = ["ModelType", "WorkerType", "register_model", "unregister_model", "withdraw_all"]

logger = logging.getLogger(__name__)


class ModelType(enum.Flag):
    """``dynamo.llm.ModelType``: what a card serves (flags combine with ``|``)."""

    Empty = 0
    Chat = enum.auto()
    Completions = enum.auto()
    Embedding = enum.auto()
    TensorBased = enum.auto()
    Prefill = enum.auto()
    Images = enum.auto()
    Audios = enum.auto()
    Videos = enum.auto()
    Realtime = enum.auto()
    Classify = enum.auto()
    Pooling = enum.auto()
    Rerank = enum.auto()

    def card_string(self) -> str:
        """Stock's spelling in the card: ``Chat | Completions``."""
        return " | ".join(m.name for m in type(self) if m.value and m in self and m.name)


class WorkerType(enum.Enum):
    """``dynamo._core.WorkerType``: the processing stage a card's worker serves."""

    Aggregated = "aggregated"
    Prefill = "prefill"
    Decode = "decode"
    Encode = "encode"


def _worker(endpoint: Any) -> Any:
    switch = getattr(endpoint, "switch", None)
    worker = getattr(switch, "worker", None)
    if worker is None or worker.instance_id is None:
        raise ValueError("register_model needs the endpoint on_endpoint_ready received")
    return worker


def _published(worker: Any) -> dict[str, str]:
    """Keys this worker published for engines, by LoRA name (kept on the worker)."""
    published: dict[str, str] | None = getattr(worker, "_engine_cards", None)
    if published is None:
        published = {}
        worker._engine_cards = published
    return published


async def _self_host(worker: Any, files: ModelFiles, slug: str) -> Any:
    server = worker.system_server
    if server is None:
        return None
    cfg = worker.config
    prefix = f"/v1/metadata/{cfg.namespace}/{cfg.component}/{cfg.endpoint}/{slug}/{slug}/"
    # Ahead of the base model's /v1/metadata/ route, which would match first.
    return await serve_files(server, worker.settings.system_host, files, prefix, first=True)


async def register_model(
    model_input: Any,
    model_type: Any,
    endpoint: Any,
    model_path: str,
    model_name: str | None = None,
    *,
    worker_type: Any = WorkerType.Aggregated,
    lora_name: str | None = None,
    base_model_path: str | None = None,
    runtime_config: Any = None,
    needs: list[list[Any]] | None = None,
    model_aliases: list[str] | None = None,
    **_ignored: Any,
) -> None:
    """Publish a LoRA adapter's card for the endpoint's worker (stock's signature)."""
    if (lora_name is None) != (base_model_path is None):
        raise ValueError("lora_name and base_model_path must be provided together")
    if lora_name is None:
        raise NotImplementedError(
            "dynamo_lite registers the base model itself; register_model publishes LoRA cards"
        )
    worker = _worker(endpoint)
    files = await asyncio.to_thread(functools.partial(ModelFiles.scan, model_path))
    slug = slugify(lora_name)
    cfg = dataclasses.replace(
        worker.config,
        model_name=model_path,
        served_model_name=lora_name,
        model_input=model_input if isinstance(model_input, ModelInput) else ModelInput.Tokens,
    )
    url_for = await _self_host(worker, files, slug)
    card = build_card(files, cfg, EngineConfig(model=lora_name), url_for=url_for)
    if isinstance(model_type, ModelType):
        card["model_type"] = model_type.card_string()
    if isinstance(worker_type, WorkerType):
        card["worker_type"] = worker_type.value
    if needs is not None:
        card["needs"] = [[getattr(w, "value", w) for w in group] for group in needs]
    if runtime_config is None:
        card["runtime_config"].pop("context_length", None)
    # Stock's place for it: right after needs.
    rest = {k: card.pop(k) for k in list(card) if k not in _BEFORE_LORA}
    card["lora"] = {"name": lora_name}
    card.update(rest)
    if model_aliases:
        card["aliases"] = list(model_aliases)
    ep, instance_id = worker.endpoint_id, worker.instance_id
    key = f"{ep.mdc_key(instance_id)}/{lora_name}"
    record = {**dkeys.mdc_record(ep, instance_id, card), "model_suffix": lora_name}
    await worker.store.put(key, dkeys.dumps(record))
    _published(worker)[lora_name] = key
    logger.info("registered LoRA model card lora_name=%s base=%s", lora_name, base_model_path)


_BEFORE_LORA = frozenset(
    {
        "display_name",
        "slug",
        "source_path",
        "model_info",
        "tokenizer",
        "prompt_formatter",
        "chat_template_file",
        "gen_config",
        "architectural_max_context_length",
        "context_length",
        "kv_cache_block_size",
        "migration_limit",
        "model_type",
        "model_input",
        "worker_type",
        "needs",
    }
)


async def unregister_model(endpoint: Any, lora_name: str | None = None) -> None:
    """Withdraw a LoRA card this worker published."""
    if lora_name is None:
        raise NotImplementedError("dynamo_lite withdraws the base model card itself at shutdown")
    worker = _worker(endpoint)
    key = _published(worker).pop(lora_name, None)
    if key is None:
        raise ValueError(f"LoRA {lora_name!r} is not registered on this endpoint")
    await worker.store.delete(key)
    logger.info("unregistered LoRA model card lora_name=%s", lora_name)


async def withdraw_all(worker: Any) -> None:
    """At shutdown: delete every card engines published on this worker."""
    published = getattr(worker, "_engine_cards", None) or {}
    for name, key in list(published.items()):
        try:
            await worker.store.delete(key)
        except Exception as exc:  # shutdown goes on, as for the base card
            logger.warning("model card delete failed lora_name=%s error=%s", name, exc)
    published.clear()
