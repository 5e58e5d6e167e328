"""The model deployment card: what the frontend needs to serve a model.

The card names the model (``display_name`` is the served name), points at
the Hugging Face files the frontend loads to tokenize, template and
detokenize (``config.json``, ``tokenizer.json``, ``tokenizer_config.json``,
optionally ``generation_config.json``), each with its size and BLAKE3
checksum, and carries the registration metadata from ``EngineConfig``. The
frontend copies each file into its cache, verifies the checksum and groups
workers whose cards hash alike into one worker set.

File locations are absolute local paths (frontend on the same host or a
shared filesystem) or, when the worker self-hosts them, URLs it serves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .card_fields import chat_template_file, structural_tag_fields
from .checksum import file_checksum
from .config import DisaggregationMode, ModelInput, WorkerConfig
from .engine import EngineConfig, LlmRegistration

DEFAULT_KV_BLOCK_SIZE = 16
DEFAULT_CONTEXT_LENGTH = 8192

# (card field, variant key, file name, required)
CARD_FILES: tuple[tuple[str, str, str, bool], ...] = (
    ("model_info", "hf_config_json", "config.json", True),
    ("tokenizer", "hf_tokenizer_json", "tokenizer.json", True),
    ("prompt_formatter", "hf_tokenizer_config_json", "tokenizer_config.json", False),
    ("gen_config", "hf_generation_config_json", "generation_config.json", False),
)

# Bit order of the stock ModelType flags, which decides the serialised order.
_MODEL_TYPE_ORDER = (
    "Chat",
    "Completions",
    "Embedding",
    "TensorBased",
    "Prefill",
    "Images",
    "Audios",
    "Videos",
    "Realtime",
    "Classify",
    "Pooling",
    "Rerank",
)
_ENDPOINT_TYPES = {
    "chat": "Chat",
    "completions": "Completions",
    "completion": "Completions",
    "embedding": "Embedding",
    "embeddings": "Embedding",
    "tensor": "TensorBased",
    "images": "Images",
    "audios": "Audios",
    "videos": "Videos",
    "realtime": "Realtime",
    "classify": "Classify",
    "pooling": "Pooling",
    "rerank": "Rerank",
}


class ModelCardError(ValueError):
    """The model directory cannot produce a card the frontend would accept."""


def slugify(name: str) -> str:
    """The stock slug rule: lower-case, ``[a-z0-9_-]`` kept, others → ``_``,
    leading ``_`` removed."""
    out = "".join(
        c if (c.isascii() and (c.islower() or c.isdigit())) or c in "-_" else "_"
        for c in name.lower()
    )
    return out.lstrip("_") or "model"


def model_type_string(endpoint_types: str, mode: DisaggregationMode) -> str:
    if mode is DisaggregationMode.PREFILL:
        return "Prefill"
    if mode is DisaggregationMode.ENCODE:
        return ""
    flags: set[str] = set()
    for raw in endpoint_types.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name not in _ENDPOINT_TYPES:
            raise ModelCardError(f"unknown endpoint type {raw.strip()!r}")
        flags.add(_ENDPOINT_TYPES[name])
    if not flags:
        raise ModelCardError("endpoint_types names no endpoint")
    return " | ".join(f for f in _MODEL_TYPE_ORDER if f in flags)


_WORKER_TYPE = {
    DisaggregationMode.AGGREGATED: "aggregated",
    DisaggregationMode.PREFILL: "prefill",
    DisaggregationMode.DECODE: "decode",
    DisaggregationMode.ENCODE: "encode",
}


def worker_type(mode: DisaggregationMode) -> str:
    """The card's ``worker_type`` for a role."""
    return _WORKER_TYPE[mode]


def needs(mode: DisaggregationMode, route_to_encoder: bool = False) -> list[list[str]]:
    """The peer roles a worker needs before the frontend serves it (any one inner
    list, all of its roles), as stock registers them."""
    encoder = ["encode"] if route_to_encoder else []
    if mode is DisaggregationMode.PREFILL:
        return [["decode", *encoder]]
    if mode is DisaggregationMode.DECODE:
        return [["prefill"]]
    if mode is DisaggregationMode.ENCODE:
        return [["prefill", "decode"], ["aggregated"]]
    return [encoder] if encoder else []


@dataclass(frozen=True)
class ModelFiles:
    """The checksummed files of a local model directory."""

    directory: Path
    files: dict[str, tuple[Path, str, int]]  # file name → (path, checksum, size)
    max_position_embeddings: int | None

    @classmethod
    def scan(cls, directory: str | Path, *, tokens: bool = True) -> ModelFiles:
        """Checksum the card files of ``directory``.

        Token engines need ``config.json`` and ``tokenizer.json``; raw engines
        (``tokens=False``) have no token pipeline, so every file is optional and
        a model name that is not a local directory gives a card without files.
        """
        root = Path(directory).expanduser()
        if not root.is_dir():
            if not tokens:
                return cls(root, {}, None)
            raise ModelCardError(
                f"model {str(directory)!r} is not a local directory; dynamo_lite builds the card "
                "from local files (config.json, tokenizer.json, tokenizer_config.json) and does "
                "not download from a hub"
            )
        root = root.resolve()
        files: dict[str, tuple[Path, str, int]] = {}
        for _field, _variant, name, required in CARD_FILES:
            path = root / name
            if not path.is_file():
                if required and tokens:
                    raise ModelCardError(f"model directory {root} has no {name}")
                continue
            checksum, size = file_checksum(path)
            files[name] = (path, checksum, size)
        max_pos: int | None = None
        if "config.json" in files:
            try:
                cfg = json.loads(files["config.json"][0].read_text())
                for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
                    if isinstance(cfg.get(key), int):
                        max_pos = cfg[key]
                        break
            except (OSError, ValueError, AttributeError):
                raise ModelCardError(f"{root / 'config.json'} is not a JSON object") from None
        return cls(root, files, max_pos)


def served_model_name(worker: WorkerConfig, engine: EngineConfig | None) -> str:
    """The name clients ask for: the card's ``display_name``.

    ``WorkerConfig.served_model_name`` > ``EngineConfig.served_model_name`` >
    ``EngineConfig.model`` > ``WorkerConfig.model_name`` (stock precedence).
    """
    if engine is None:
        return worker.served_model_name or worker.model_name
    return worker.served_model_name or engine.served_model_name or engine.model or worker.model_name


def build_card(
    files: ModelFiles,
    worker: WorkerConfig,
    engine: EngineConfig,
    *,
    url_for: Callable[[str], str] | None = None,
    enable_local_indexer: bool = False,
) -> dict[str, Any]:
    """The ``card_json`` object for ``v1/mdc/...``.

    ``url_for(file_name)`` switches file locations from local paths to URLs
    (self-hosted metadata). The role decides ``model_type``, ``worker_type``
    and ``needs`` as in the stock captures (``tests/vectors/discovery/
    stock_mdc_modes``): prefill registers the legacy ``Prefill`` model type
    (not listed in ``/v1/models``), encode an empty one. ``enable_local_indexer``
    is off unless asked for (dynamo_lite serves no KV query endpoint), and
    always off for encode.
    """
    display = served_model_name(worker, engine)
    llm = engine.llm or LlmRegistration()
    mode = worker.disaggregation_mode
    model_type = model_type_string(worker.endpoint_types, mode)
    if "Chat" in model_type.split(" | ") and "tokenizer_config.json" not in files.files:
        raise ModelCardError(
            f"model directory {files.directory} has no tokenizer_config.json (chat template), "
            "which chat needs; use --endpoint-types completions or add one"
        )
    card: dict[str, Any] = {
        "display_name": display,
        "slug": slugify(display),
        "source_path": worker.model_name or display,
    }
    for field_name, variant, name, _required in CARD_FILES:
        if name not in files.files:
            continue
        path, checksum, size = files.files[name]
        location = url_for(name) if url_for is not None else str(path)
        card[field_name] = {variant: {"path": location, "checksum": checksum, "size": size}}
    if worker.custom_jinja_template:
        try:
            template = chat_template_file(worker.custom_jinja_template)
        except ValueError as exc:
            raise ModelCardError(str(exc)) from None
        # Stock's place for it: right after prompt_formatter, before gen_config.
        gen = card.pop("gen_config", None)
        card["chat_template_file"] = template
        if gen is not None:
            card["gen_config"] = gen
    context_length = llm.context_length or files.max_position_embeddings or DEFAULT_CONTEXT_LENGTH
    runtime_data = dict(engine.runtime_data or {})
    if worker.route_to_encoder:
        runtime_data["encoder_result_handoff"] = True
    if worker.default_thinking_mode is not None:
        runtime_data["default_thinking_mode"] = worker.default_thinking_mode
    if files.max_position_embeddings is not None:
        card["architectural_max_context_length"] = files.max_position_embeddings
    card.update(
        {
            "context_length": context_length,
            "kv_cache_block_size": llm.kv_cache_block_size or DEFAULT_KV_BLOCK_SIZE,
            "migration_limit": 0,
            "model_type": model_type,
            "model_input": (
                worker.model_input.value
                if isinstance(worker.model_input, ModelInput)
                else str(worker.model_input)
            ),
            "worker_type": worker_type(mode),
            "needs": needs(mode, worker.route_to_encoder),
            "runtime_config": {
                "context_length": context_length,
                "total_kv_blocks": llm.total_kv_blocks,
                "max_num_seqs": llm.max_num_seqs,
                "max_num_batched_tokens": llm.max_num_batched_tokens,
                "tool_call_parser": worker.tool_call_parser,
                "reasoning_parser": worker.reasoning_parser,
                "tool_call_arguments_format": "json_string",
                **structural_tag_fields(worker.structural_tag),
                "exclude_tools_when_tool_choice_none": worker.exclude_tools_when_tool_choice_none,
                "data_parallel_start_rank": llm.data_parallel_start_rank or 0,
                "data_parallel_size": llm.data_parallel_size or 1,
                "enable_local_indexer": (
                    enable_local_indexer and mode is not DisaggregationMode.ENCODE
                ),
            },
            "media_decoder": None,
            "media_fetcher": None,
        }
    )
    runtime = card["runtime_config"]
    # Stock order: runtime_data, then the bootstrap address, then enable_eagle.
    if runtime_data:
        runtime["runtime_data"] = runtime_data
    if llm.bootstrap_host and llm.bootstrap_port is not None:
        runtime["disaggregated_endpoint"] = {
            "bootstrap_host": llm.bootstrap_host,
            "bootstrap_port": llm.bootstrap_port,
        }
    runtime["enable_eagle"] = llm.enable_eagle
    if llm.max_gpu_lora_count is not None:
        runtime["max_gpu_lora_count"] = llm.max_gpu_lora_count
    if engine.model_aliases:
        card["aliases"] = list(engine.model_aliases)
    return card
