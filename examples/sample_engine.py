"""The sample engine: rotating token ids, no model, no dependencies.

Behaves like Dynamo's stock sample engine (``SampleLLMEngine``) so the two can
be compared side by side, in every disaggregation role:

* aggregated: ``max_tokens`` (request, else ``--max-tokens``) tokens
  ``1, 2, 3, …``, one every ``--delay`` seconds, the last with
  ``finish_reason: "length"`` and usage; multimodal inputs are "encoded"
  locally and echoed in the terminal's ``engine_data``;
* prefill: one token, whose terminal carries a synthetic
  ``disaggregated_params`` handle for the decode peer;
* decode: refuses a request without ``prefill_result`` (canary probes
  excepted) or with raw multimodal data;
* encode: one empty terminal chunk carrying a synthetic ``encoder_result``;
  with ``--route-to-encoder`` an aggregated/prefill worker requires one.

It checks ``context.is_stopped()`` before every token and, when stopped, ends
with a ``cancelled`` terminal. ``output_options.logprobs`` gets deterministic
synthetic logprobs. Each request's prompt blocks are announced stored, then
removed, through the KV-event publisher; a background thread pushes per-rank
load snapshots.

Run it beside the stock frontend (same flags as the stock sample worker)::

    python examples/sample_engine.py --model-name ./tiny-model --namespace dynamo \\
        --discovery-backend file
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import queue
import threading
from collections.abc import AsyncGenerator
from typing import Any

from dynamo_lite import (
    ComponentSnapshot,
    Context,
    DisaggregationMode,
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    KvEventSource,
    LLMEngine,
    LlmRegistration,
    PushSource,
    WorkerConfig,
    run,
    telemetry,
)
from dynamo_lite.disagg import (
    encoder_terminal_chunk,
    enforce_prefill_max_tokens,
    extract_multimodal_kwargs,
    require_encoder_result,
    require_prefill_result,
)
from dynamo_lite.health_check import build_health_check_payload, is_probe
from dynamo_lite.logprobs import parse_logprob_options
from dynamo_lite.token_ids import normalize_request_token_ids

logger = logging.getLogger(__name__)

VOCAB_WRAP = 32000
BLOCK_SIZE = 16
TOTAL_BLOCKS = 1000
#: Bound on requested top-k alternatives (the stock mocker's limit).
MAX_TOP_LOGPROBS = 20
ENCODER_HANDLE_PREFIX = "sample-encoder:"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _cancelled(prompt: int, completion: int) -> GenerateChunk:
    return {
        "token_ids": [],
        "index": 0,
        "finish_reason": "cancelled",
        "completion_usage": _usage(prompt, completion),
    }


def synthetic_logprobs(chunk: GenerateChunk, top_k: int) -> None:
    """Deterministic logprobs for the chunk's tokens; ``top_k`` > 0 adds alternatives."""
    top_k = min(top_k, MAX_TOP_LOGPROBS)
    selected: list[float] = []
    positions: list[list[dict[str, Any]]] = []
    for token in chunk["token_ids"]:
        logprob = -0.1 * (token % 10)
        selected.append(logprob)
        if top_k <= 0:
            continue
        ranked = [(token, logprob)] + [
            ((token + r) % VOCAB_WRAP, logprob - 0.1 * r) for r in range(1, top_k + 1)
        ]
        positions.append(
            [
                {"rank": rank, "token_id": tid, "token": f"token_id:{tid}", "logprob": lp}
                for rank, (tid, lp) in enumerate(ranked, start=1)
            ]
        )
    if selected:
        chunk["log_probs"] = selected
    if positions:
        chunk["top_logprobs"] = positions


class SampleLLMEngine(LLMEngine):
    def __init__(
        self,
        model_name: str = "sample-model",
        max_tokens: int = 16,
        delay: float = 0.01,
        disaggregation_mode: DisaggregationMode = DisaggregationMode.AGGREGATED,
        route_to_encoder: bool = False,
    ) -> None:
        self.model_name = model_name
        self.max_tokens = max_tokens
        self.delay = delay
        self.disaggregation_mode = disaggregation_mode
        self.route_to_encoder = route_to_encoder
        self.active = 0
        self._started = False
        # KV bookkeeping: events go straight to the publisher (thread-safe, and
        # cheapest from the loop's own thread); a thread pushes load snapshots.
        self._kv_used_blocks = 0
        self._block_ids = itertools.count(1)
        self._kv_publisher: Any = None
        #: Events queued for the thread (stock's seam; this engine publishes directly).
        self._publish_queue: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._publish_stop = threading.Event()
        self._publish_thread: threading.Thread | None = None
        self._snapshot_publisher: Any = None

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[SampleLLMEngine, WorkerConfig]:
        p = argparse.ArgumentParser(description="dynamo_lite sample engine")
        p.add_argument("--model-name", default="sample-model")
        p.add_argument("--namespace", default="dynamo")
        p.add_argument("--component", default="sample")
        p.add_argument("--endpoint", default="generate")
        p.add_argument("--max-tokens", type=int, default=16)
        p.add_argument("--delay", type=float, default=0.01)
        p.add_argument("--endpoint-types", default="chat,completions")
        p.add_argument("--discovery-backend", default="etcd")
        p.add_argument("--request-plane", default="tcp")
        p.add_argument(
            "--response-plane",
            choices=["tcp", "quic"],
            default=os.environ.get("DYN_RESPONSE_PLANE", "tcp"),
        )
        p.add_argument("--event-plane", default=None)
        p.add_argument(
            "--disaggregation-mode",
            choices=[m.value for m in DisaggregationMode],
            default=DisaggregationMode.AGGREGATED.value,
        )
        p.add_argument("--route-to-encoder", action="store_true")
        p.add_argument("--disable-kv-routing", action="store_true")
        args = p.parse_args(argv)
        mode = DisaggregationMode(args.disaggregation_mode)
        engine = cls(
            args.model_name,
            args.max_tokens,
            args.delay,
            disaggregation_mode=mode,
            route_to_encoder=args.route_to_encoder,
        )
        config = WorkerConfig(
            namespace=args.namespace,
            component=args.component,
            endpoint=args.endpoint,
            model_name=args.model_name,
            served_model_name=args.model_name,
            endpoint_types=args.endpoint_types,
            discovery_backend=args.discovery_backend,
            request_plane=args.request_plane,
            response_plane=args.response_plane,
            event_plane=args.event_plane,
            disaggregation_mode=mode,
            route_to_encoder=args.route_to_encoder,
            enable_kv_routing=not args.disable_kv_routing,
        )
        return engine, config

    async def start(self, worker_id: int) -> EngineConfig:
        if self._started:
            raise RuntimeError("SampleLLMEngine.start() called twice")
        self._started = True
        logger.info("sample engine ready (worker_id=%x)", worker_id)
        return EngineConfig(
            model=self.model_name,
            served_model_name=self.model_name,
            llm=LlmRegistration(
                context_length=2048,
                kv_cache_block_size=BLOCK_SIZE,
                total_kv_blocks=TOTAL_BLOCKS,
                max_num_seqs=64,
                max_num_batched_tokens=2048,
            ),
        )

    # --- KV events and per-rank snapshots (not for encode workers) ---------

    async def kv_event_sources(self) -> list[KvEventSource]:
        if self.disaggregation_mode is DisaggregationMode.ENCODE:
            return []
        return [PushSource(on_ready=self._start_publisher_thread, dp_rank=0)]

    def component_metrics_dp_ranks(self) -> list[int]:
        return [] if self.disaggregation_mode is DisaggregationMode.ENCODE else [0]

    def attach_snapshot_publisher(self, publisher: Any) -> None:
        self._snapshot_publisher = publisher

    def _start_publisher_thread(self, publisher: Any) -> None:
        self._kv_publisher = publisher
        self._publish_thread = threading.Thread(
            target=self._publish_loop, args=(publisher,), daemon=True, name="sample-kv-publisher"
        )
        self._publish_thread.start()

    def _publish_loop(self, publisher: Any) -> None:
        """Forward anything queued; on every idle tick (~10 Hz) push a load snapshot."""
        while not self._publish_stop.is_set():
            try:
                kind, event = self._publish_queue.get(timeout=0.1)
            except queue.Empty:
                self._push_snapshot()
                continue
            try:
                if kind == "stored":
                    publisher.publish_stored(**event)
                else:
                    publisher.publish_removed(**event)
            except Exception:
                logger.exception("sample publisher dropped a %s event", kind)

    def _push_snapshot(self) -> None:
        if self._snapshot_publisher is None:
            return
        used = self._kv_used_blocks
        self._snapshot_publisher.publish(
            0,
            ComponentSnapshot(
                kv_used_blocks=used,
                kv_total_blocks=TOTAL_BLOCKS,
                gpu_cache_usage=used / TOTAL_BLOCKS,
                dp_rank=0,
                kv_cache_hit_rate=None,
            ),
        )

    def _store_prompt_blocks(self, prompt_len: int) -> list[int]:
        count = max(1, prompt_len // BLOCK_SIZE)
        hashes = [next(self._block_ids) for _ in range(count)]
        try:
            self._kv_publisher.publish_stored(
                token_ids=list(range(count * BLOCK_SIZE)),
                num_block_tokens=[BLOCK_SIZE] * count,
                block_hashes=hashes,
            )
        except Exception:
            logger.exception("sample publisher dropped a stored event")
        self._kv_used_blocks += count
        return hashes

    def _remove_blocks(self, hashes: list[int]) -> None:
        try:
            self._kv_publisher.publish_removed(block_hashes=hashes)
        except Exception:
            logger.exception("sample publisher dropped a removed event")
        self._kv_used_blocks = max(0, self._kv_used_blocks - len(hashes))

    # --- canary --------------------------------------------------------------

    async def health_check_payload(self) -> dict[str, Any] | None:
        # Token 1 stands in for BOS; decode workers let probes through in generate().
        return build_health_check_payload(bos_token_id=1)

    # --- multimodal ------------------------------------------------------------

    async def _encode_multimodal(self, request: GenerateRequest) -> dict[str, Any]:
        """A synthetic encoder handoff: a fresh handle plus the multimodal inputs."""
        import uuid  # here, not at import: it loads platform

        await asyncio.sleep(self.delay)
        return {
            "handle": f"{ENCODER_HANDLE_PREFIX}{uuid.uuid4().hex}",
            "multimodal_kwargs": extract_multimodal_kwargs(request) or {},
        }

    def _checked_encoder_result(self, request: GenerateRequest) -> dict[str, Any]:
        result = require_encoder_result(request, self.disaggregation_mode)
        handle = result.get("handle")
        if not (isinstance(handle, str) and handle.startswith(ENCODER_HANDLE_PREFIX)):
            raise ValueError(
                f"encoder_result.handle must be a string starting with {ENCODER_HANDLE_PREFIX!r}"
            )
        return result

    # --- generation ------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        normalize_request_token_ids(request)
        mode = self.disaggregation_mode
        prompt_len = len(request.get("token_ids") or [])
        if mode is DisaggregationMode.ENCODE:
            async for chunk in self._encode(request, context, prompt_len):
                yield chunk
            return
        if mode is DisaggregationMode.DECODE and not is_probe(request):
            require_prefill_result(request, mode)
        if mode is DisaggregationMode.PREFILL:
            enforce_prefill_max_tokens(request)

        multimodal: dict[str, Any] | None = None
        if extract_multimodal_kwargs(request) is not None:
            if mode is DisaggregationMode.DECODE:
                raise ValueError(
                    "decode worker should not receive raw multimodal payloads; "
                    "the upstream prefill worker consumes the encoder inputs"
                )
            if self.route_to_encoder:
                multimodal = self._checked_encoder_result(request)
            else:
                multimodal = await self._encode_multimodal(request)

        stop: dict[str, Any] = request.get("stop_conditions") or {}
        max_new = stop.get("max_tokens") or self.max_tokens
        top_k, _ = parse_logprob_options(request.get("output_options") or {})

        # KV events only with a publisher (KV routing on).
        blocks = self._store_prompt_blocks(prompt_len) if self._kv_publisher else None
        self.active += 1
        # One generator per request, tokens yielded straight from this loop: a
        # nested generator would double the per-token cost the benchmarks measure.
        try:
            with telemetry.start_span(context, "sample.tokens", prompt_len=prompt_len):
                for i in range(max_new):
                    if context.is_stopped():
                        yield _cancelled(prompt_len, i)
                        return
                    # Like the stock engine, yield to the loop before every token,
                    # even with no delay: generation is never one blocking step.
                    await asyncio.sleep(self.delay)
                    token = (i + 1) % VOCAB_WRAP
                    chunk: GenerateChunk = {"token_ids": [token], "index": 0}
                    if top_k is not None:
                        synthetic_logprobs(chunk, top_k)
                    if i == max_new - 1:
                        self._finish(chunk, token, prompt_len, max_new, multimodal)
                    yield chunk
        finally:
            self.active -= 1
            if blocks is not None:
                self._remove_blocks(blocks)

    def _finish(
        self,
        chunk: GenerateChunk,
        token: int,
        prompt_len: int,
        max_new: int,
        multimodal: dict[str, Any] | None,
    ) -> None:
        """The terminal chunk's extras: finish reason, usage, role-specific fields."""
        chunk["finish_reason"] = "length"
        chunk["completion_usage"] = _usage(prompt_len, max_new)
        if self.disaggregation_mode is DisaggregationMode.PREFILL:
            import uuid

            chunk["disaggregated_params"] = {
                "sample_handle": uuid.uuid4().hex,
                "completed_tokens": [token],
            }
        if multimodal is not None:
            chunk["engine_data"] = {"sample_multimodal": multimodal}

    async def _encode(
        self, request: GenerateRequest, context: Context, prompt_len: int
    ) -> AsyncGenerator[GenerateChunk, None]:
        if context.is_stopped():
            yield _cancelled(prompt_len, 0)
            return
        result = await self._encode_multimodal(request)
        if context.is_stopped():
            yield _cancelled(prompt_len, 0)
            return
        yield encoder_terminal_chunk(result, completion_usage=_usage(prompt_len, 0))

    async def abort(self, context: Context) -> None:
        logger.debug("request %s aborted", context.id())

    async def cleanup(self) -> None:
        self._publish_stop.set()
        if self._publish_thread is not None:
            self._publish_thread.join(timeout=1.0)
        logger.info("sample engine stopped")


#: The name this repository's tests and guides have used.
SampleEngine = SampleLLMEngine


def main() -> None:
    run(SampleLLMEngine)


if __name__ == "__main__":
    main()
