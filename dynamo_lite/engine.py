"""The engine contract: what an engine author implements.

Lifecycle, driven by :class:`dynamo_lite.worker.Worker`::

    from_args(argv) -> (engine, WorkerConfig)   parse CLI, construct, no heavy work
    start(worker_id) -> EngineConfig            load; afterwards generate() must work
    generate(request, context)                  async generator of chunks, concurrent
    abort(context)                              client went away: release its resources
    drain()                                     once, after the grace period
    cleanup()                                   once, release everything; null-safe

The names and signatures follow ``dynamo.common.backend`` 1.6.1 so an engine
written for it runs here after changing its import lines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import TYPE_CHECKING, Any, Required, TypedDict

from .context import Context
from .logits import (
    ForcedTokenSequenceSpec,
    LogitsProcessorEntry,
    LogitsProcessorSpec,
    PythonProcessorSpec,
    deserialize_logits_processor_entries,
    is_generation_stage,
    logits_processors_for_request,
    serialize_logits_processor_entries,
)

if TYPE_CHECKING:
    from .config import WorkerConfig

__all__ = [
    "BaseEngine",
    "ComponentSnapshot",
    "DiffusionEngine",
    "EngineConfig",
    "ForcedTokenSequenceSpec",
    "GenerateChunk",
    "GenerateRequest",
    "KvEventSource",
    "LLMEngine",
    "LlmRegistration",
    "LogitsProcessorEntry",
    "LogitsProcessorSpec",
    "PushSource",
    "PythonProcessorSpec",
    "RawEngine",
    "RawRequest",
    "RawResponseChunk",
    "ZmqSource",
    "deserialize_logits_processor_entries",
    "is_generation_stage",
    "logits_processors_for_request",
    "serialize_logits_processor_entries",
]


class GenerateRequest(TypedDict, total=False):
    """The preprocessed request handed to :meth:`LLMEngine.generate`.

    ``token_ids`` is always present. Everything else is optional; read it
    with ``request.get(key) or {}``. Unknown keys from newer frontends pass
    through untouched.
    """

    token_ids: Required[list[int]]
    model: str
    sampling_options: dict[str, Any]
    stop_conditions: dict[str, Any]
    output_options: dict[str, Any]
    eos_token_ids: list[int]
    mdc_sum: str | None
    annotations: list[str]
    routing: dict[str, Any]
    router_config_override: dict[str, Any] | None
    require_reasoning: bool
    prefill_result: dict[str, Any]
    bootstrap_info: dict[str, Any]
    multi_modal_data: dict[str, Any]
    mm_processor_kwargs: dict[str, Any]
    mm_routing_info: dict[str, Any]
    encoder_result: dict[str, Any]
    extra_args: dict[str, Any]


class GenerateChunk(TypedDict, total=False):
    """One item yielded by :meth:`LLMEngine.generate`.

    Every chunk carries ``token_ids`` (possibly empty) and ``index`` (0 for a
    single choice). The last chunk carries ``finish_reason``;
    ``completion_usage`` on it is optional.
    """

    token_ids: Required[list[int]]
    index: Required[int]
    finish_reason: str
    completion_usage: dict[str, Any]
    disaggregated_params: dict[str, Any]
    encoder_result: dict[str, Any]
    log_probs: list[float]
    top_logprobs: list[list[dict[str, Any]]]
    engine_data: dict[str, Any]


RawRequest = dict[str, Any]
RawResponseChunk = dict[str, Any]


@dataclass
class LlmRegistration:
    """Token-pipeline registration metadata; ``None`` fields are not advertised."""

    context_length: int | None = None
    kv_cache_block_size: int | None = None
    total_kv_blocks: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    data_parallel_size: int | None = None
    data_parallel_start_rank: int | None = None
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None
    enable_eagle: bool = False
    max_gpu_lora_count: int | None = None


_FLAT_FIELDS = (
    "context_length",
    "kv_cache_block_size",
    "total_kv_blocks",
    "max_num_seqs",
    "max_num_batched_tokens",
    "data_parallel_size",
    "data_parallel_start_rank",
    "bootstrap_host",
    "bootstrap_port",
)


@dataclass
class EngineConfig:
    """Registration metadata returned by :meth:`BaseEngine.start`.

    A dataclass with 1.6.1's fields (``dataclasses.fields``/``asdict`` see
    exactly those). It also accepts the seed guide's flat keywords
    (``EngineConfig(model=…, context_length=8192, kv_cache_block_size=16)``)
    with one meaning: they fill :attr:`llm` (created when absent), and
    reading ``config.context_length`` reads ``config.llm.context_length``.
    Giving the same field both ways with different values is an error.
    """

    model: str
    served_model_name: str | None = None
    runtime_data: dict[str, Any] | None = None
    llm: LlmRegistration | None = None
    model_aliases: list[str] = field(default_factory=list)
    _: KW_ONLY
    context_length: InitVar[int | None] = None
    kv_cache_block_size: InitVar[int | None] = None
    total_kv_blocks: InitVar[int | None] = None
    max_num_seqs: InitVar[int | None] = None
    max_num_batched_tokens: InitVar[int | None] = None
    data_parallel_size: InitVar[int | None] = None
    data_parallel_start_rank: InitVar[int | None] = None
    bootstrap_host: InitVar[str | None] = None
    bootstrap_port: InitVar[int | None] = None

    def __post_init__(self, *flat_values: Any) -> None:
        self.model_aliases = list(self.model_aliases or [])
        given = {k: v for k, v in zip(_FLAT_FIELDS, flat_values, strict=True) if v is not None}
        if not given:
            return
        llm = self.llm if self.llm is not None else LlmRegistration()
        for key, value in given.items():
            current = getattr(llm, key)
            if current is not None and current != value:
                raise ValueError(
                    f"EngineConfig: {key}={value!r} conflicts with llm.{key}={current!r}"
                )
            setattr(llm, key, value)
        self.llm = llm


def _flat_property(name: str) -> property:
    def get(self: EngineConfig) -> Any:
        return None if self.llm is None else getattr(self.llm, name)

    def set_(self: EngineConfig, value: Any) -> None:
        if self.llm is None:
            if value is None:
                return
            self.llm = LlmRegistration()
        setattr(self.llm, name, value)

    return property(get, set_, doc=f"Shortcut for ``llm.{name}``.")


for _name in _FLAT_FIELDS:
    setattr(EngineConfig, _name, _flat_property(_name))
del _name


# --- KV-routing hooks (the worker side lives in dynamo_lite/kv/) ---


@dataclass(frozen=True)
class ZmqSource:
    """A KV event source the runtime subscribes to over ZMQ and relays (stock name)."""

    endpoint: str
    topic: str = ""
    dp_rank: int = 0


@dataclass(frozen=True)
class PushSource:
    """A KV event source the engine pushes into a publisher it is handed (stock name)."""

    on_ready: Callable[[Any], None]
    dp_rank: int = 0


KvEventSource = ZmqSource | PushSource


@dataclass
class ComponentSnapshot:
    """A load snapshot an engine reports per data-parallel rank (stock name)."""

    kv_used_blocks: int
    kv_total_blocks: int
    gpu_cache_usage: float
    dp_rank: int
    kv_cache_hit_rate: float | None = None


class BaseEngine(ABC):
    """The modality-agnostic lifecycle every engine implements."""

    @classmethod
    @abstractmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[BaseEngine, WorkerConfig]:
        """Parse CLI arguments and construct the engine, not yet started."""

    @abstractmethod
    async def start(self, worker_id: int) -> EngineConfig:
        """Start the engine; afterwards ``generate()`` must accept calls.

        ``worker_id`` is the discovery instance id, unique in the cluster.
        """

    async def abort(self, context: Context) -> None:  # noqa: B027 - optional hook
        """A request was cancelled or its client vanished. Default: nothing."""

    async def drain(self) -> None:  # noqa: B027 - optional hook
        """Runs once before cleanup, after the grace period. Default: nothing."""

    async def is_quiescent(self) -> bool | None:
        """Prefill workers: True once in-flight KV transfers are done."""
        return None

    @abstractmethod
    async def cleanup(self) -> None:
        """Release every resource; must be null-safe and idempotent."""

    async def register_prometheus(self, metrics: Any) -> None:  # noqa: B027 - optional hook
        """Bridge an engine-owned Prometheus registry into ``/metrics``."""

    def component_metrics_dp_ranks(self) -> list[int]:
        return []

    def attach_snapshot_publisher(self, publisher: Any) -> None:  # noqa: B027 - optional hook
        """Receives the per-rank snapshot publisher when ranks were declared."""

    async def health_check_payload(self) -> dict[str, Any] | None:
        """Canary payload sent through ``generate()`` when idle; None disables."""
        return None

    def supported_controls(self) -> set[str]:
        return set()

    async def engine_control(self, control: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"status": "error", "message": f"unsupported engine control: {control}"}

    def supported_updates(self) -> set[str]:
        return set()

    async def engine_update(self, update: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"status": "error", "message": f"unsupported engine update: {update}"}

    async def on_endpoint_ready(self, endpoint: Any) -> None:  # noqa: B027 - optional hook
        """Receives the serving endpoint once, before serving begins."""


class LLMEngine(BaseEngine):
    """Token-in, token-out engines: the frontend tokenizes and detokenizes."""

    @abstractmethod
    def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        """Yield chunks for one request; called concurrently."""

    async def kv_event_sources(self) -> list[KvEventSource]:
        return []

    async def logits_processor_spec(self) -> LogitsProcessorSpec | None:
        """Logits processors this engine activates (see :mod:`dynamo_lite.logits`); None: none."""
        return None


class RawEngine(BaseEngine):
    """Raw JSON engines (images, video, audio): no token pipeline."""

    @abstractmethod
    def generate(
        self, request: RawRequest, context: Context
    ) -> AsyncGenerator[RawResponseChunk, None]:
        """Yield response objects for one request; the last is terminal."""


class DiffusionEngine(RawEngine):
    """A :class:`RawEngine` for diffusion-family generation."""


GenerateFn = Callable[[GenerateRequest, Context], AsyncGenerator[GenerateChunk, None]]
