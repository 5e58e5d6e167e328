"""Engines for the conformance-kit tests.

``GoodEngine`` / ``GoodEncodeEngine`` / ``GoodRawEngine`` are correct and
fast. Every other class breaks exactly one rule, and is otherwise correct up
to the check that rule belongs to: the stock kit stops at its first failure,
so an engine broken twice is reported for whichever check comes first.
``NEGATIVE_CASES`` maps each failure name to the engine that must trigger it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from dynamo_lite import (
    Context,
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    KvEventSource,
    LLMEngine,
    RawEngine,
    RawRequest,
    RawResponseChunk,
    WorkerConfig,
    ZmqSource,
)
from tests.engines.examples_loader import load_example


def load_sample_engine() -> Any:
    """``examples/sample_engine.py``'s ``SampleEngine(model_name, max_tokens, delay)``."""
    return load_example("sample_engine.py").SampleEngine


def load_my_backend() -> Any:
    """The seed guide's ``MyBackend(model_name, max_tokens=16)`` from ``examples/my_backend.py``."""
    return load_example("my_backend.py").MyBackend


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _max_tokens(request: GenerateRequest) -> int:
    return int((request.get("stop_conditions") or {}).get("max_tokens") or 16)


# --- token engines ---------------------------------------------------------------------------


class GoodEngine(LLMEngine):
    """A correct token engine; one token per chunk, a ``cancelled`` terminal on stop.

    ``active`` counts in-flight streams (the kit's drop-safety probe).
    Subclasses override one hook to break one rule.
    """

    model_name = "good-model"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.active = 0
        self._handle: dict[str, int] | None = None

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[GoodEngine, WorkerConfig]:
        return cls(), WorkerConfig(namespace="test", model_name=cls.model_name)

    async def start(self, worker_id: int) -> EngineConfig:
        self._handle = {"worker_id": worker_id}
        return EngineConfig(model=self.model_name)

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        prompt = len(request.get("token_ids") or [])
        n = _max_tokens(request)
        self.active += 1
        try:
            for i in range(n):
                if context.is_stopped():
                    yield self.cancelled_chunk(prompt, i)
                    return
                await self.pause()
                yield self.token_chunk(prompt, i, n)
        finally:
            self.active -= 1

    async def pause(self) -> None:
        # Always yield to the loop, like an engine waiting on its scheduler.
        await asyncio.sleep(self.delay)

    def token_chunk(self, prompt: int, i: int, n: int) -> GenerateChunk:
        chunk: GenerateChunk = {"token_ids": [i + 1], "index": 0}
        if i == n - 1:
            chunk["finish_reason"] = "length"
            chunk["completion_usage"] = _usage(prompt, n)
        return chunk

    def cancelled_chunk(self, prompt: int, streamed: int) -> GenerateChunk:
        return {
            "token_ids": [],
            "index": 0,
            "finish_reason": "cancelled",
            "completion_usage": _usage(prompt, streamed),
        }

    async def cleanup(self) -> None:
        self._handle = None


class RejectsRestart(GoodEngine):
    """GoodEngine that also refuses a second start(): no strict advisory."""

    async def start(self, worker_id: int) -> EngineConfig:
        if self._handle is not None:
            raise RuntimeError("engine already started")
        return await super().start(worker_id)


class AbortAlias(GoodEngine):
    """Ends cancelled streams with 1.6.1's alias ``abort``: still conformant."""

    def cancelled_chunk(self, prompt: int, streamed: int) -> GenerateChunk:
        chunk = super().cancelled_chunk(prompt, streamed)
        chunk["finish_reason"] = "abort"
        return chunk


class CoroutineGenerate(GoodEngine):
    """generate() is a coroutine returning the stream: accepted, like Rust's async generate."""

    async def generate(  # type: ignore[override]
        self, request: GenerateRequest, context: Context
    ) -> AsyncIterator[GenerateChunk]:
        return GoodEngine.generate(self, request, context)


# stock failures, in the order the kit meets them


class StartFails(GoodEngine):
    async def start(self, worker_id: int) -> EngineConfig:
        raise RuntimeError("no accelerator found")


class EmptyModel(GoodEngine):
    model_name = ""


class KvSourcesRaise(GoodEngine):
    async def kv_event_sources(self) -> list[KvEventSource]:
        raise RuntimeError("zmq socket not bound")


class KvSourcesUnstable(GoodEngine):
    """Declares one more dp rank on every call."""

    calls = 0

    async def kv_event_sources(self) -> list[KvEventSource]:
        self.calls += 1
        return [ZmqSource("tcp://127.0.0.1:5557", dp_rank=r) for r in range(self.calls)]


class MetricsRaise(GoodEngine):
    async def register_prometheus(self, metrics: Any) -> None:
        raise RuntimeError("registry already bridged")


class MetricsRanksUnstable(GoodEngine):
    calls = 0

    def component_metrics_dp_ranks(self) -> list[int]:
        self.calls += 1
        return list(range(self.calls))


class GenerateRaisesSynchronously(GoodEngine):
    """A plain function that raises before any stream exists."""

    def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        raise RuntimeError("scheduler rejected the request")


class EmptyStream(GoodEngine):
    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        return
        yield


class StreamRaises(GoodEngine):
    """Raises after the first token (the bridge turns that into an error item)."""

    def token_chunk(self, prompt: int, i: int, n: int) -> GenerateChunk:
        if i == 1:
            raise RuntimeError("device lost")
        return super().token_chunk(prompt, i, n)


class ChunkAfterTerminal(GoodEngine):
    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        async for chunk in super().generate(request, context):
            yield chunk
        yield {"token_ids": [], "index": 0}


class NoTerminal(GoodEngine):
    def token_chunk(self, prompt: int, i: int, n: int) -> GenerateChunk:
        return {"token_ids": [i + 1], "index": 0}


class UsageMismatch(GoodEngine):
    def token_chunk(self, prompt: int, i: int, n: int) -> GenerateChunk:
        chunk = super().token_chunk(prompt, i, n)
        if "completion_usage" in chunk:
            chunk["completion_usage"] = _usage(prompt, n + 1)
        return chunk


class ConcurrentEmpty(GoodEngine):
    """Shared-state bug: a request arriving while another is in flight gets nothing."""

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        if self.active:
            return
        async for chunk in super().generate(request, context):
            yield chunk


class ConcurrentRejected(GoodEngine):
    """Refuses, synchronously, a request arriving while another stream is open."""

    open_streams = 0

    def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        if self.open_streams:
            raise RuntimeError("engine busy")
        self.open_streams += 1
        return self._tracked(request, context)

    async def _tracked(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        try:
            async for chunk in GoodEngine.generate(self, request, context):
                yield chunk
        finally:
            self.open_streams -= 1


class IgnoresCancel(GoodEngine):
    """Never polls is_stopped(); slow enough that 10 000 tokens outlast any deadline."""

    def __init__(self, delay: float = 0.005) -> None:
        super().__init__(delay)

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        prompt = len(request.get("token_ids") or [])
        n = _max_tokens(request)
        for i in range(n):
            await self.pause()
            yield self.token_chunk(prompt, i, n)


class IgnoresCancelNeverTerminates(IgnoresCancel):
    """Ignores cancellation and never sends a terminal (conformance.md §9.1's example)."""

    def token_chunk(self, prompt: int, i: int, n: int) -> GenerateChunk:
        return {"token_ids": [i + 1], "index": 0}


class WrongCancelReason(GoodEngine):
    """Observes the stop but reports it as a normal ``stop``."""

    def cancelled_chunk(self, prompt: int, streamed: int) -> GenerateChunk:
        chunk = super().cancelled_chunk(prompt, streamed)
        chunk["finish_reason"] = "stop"
        return chunk


class CleanupRaises(GoodEngine):
    async def cleanup(self) -> None:
        raise RuntimeError("failed to free device memory")


class SecondCleanupRaises(GoodEngine):
    async def cleanup(self) -> None:
        if self._handle is None:
            raise RuntimeError("engine already shut down")
        self._handle = None


class CleanupNotNullSafe(GoodEngine):
    """Idempotent after start(), but touches the handle without a None check first."""

    _cleaned = False

    async def cleanup(self) -> None:
        if self._cleaned:
            return
        assert self._handle is not None, "cleanup() before start()"
        self._handle.clear()
        self._cleaned = True


class HangsBeforeFirstToken(GoodEngine):
    """Waits forever for a scheduler slot unless the request is stopped."""

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        await context.stopped()
        yield self.cancelled_chunk(len(request.get("token_ids") or []), 0)


# strict-only failures (stock mode passes all of these)


class OnlyChecksStopAtStart(GoodEngine):
    """Polls is_stopped() once, before the first token."""

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        prompt = len(request.get("token_ids") or [])
        if context.is_stopped():
            yield self.cancelled_chunk(prompt, 0)
            return
        n = _max_tokens(request)
        for i in range(n):
            await self.pause()
            yield self.token_chunk(prompt, i, n)


class CancelledUsageWrong(GoodEngine):
    """Reports the requested max_tokens as completed on a cancelled terminal."""

    def cancelled_chunk(self, prompt: int, streamed: int) -> GenerateChunk:
        chunk = super().cancelled_chunk(prompt, streamed)
        chunk["completion_usage"] = _usage(prompt, streamed + 5)
        return chunk


class TerminalOnlyWhenAlone(GoodEngine):
    """Shared-state bug: the terminal is dropped while other streams are in flight."""

    def token_chunk(self, prompt: int, i: int, n: int) -> GenerateChunk:
        chunk = super().token_chunk(prompt, i, n)
        if self.active > 1:
            chunk.pop("finish_reason", None)
            chunk.pop("completion_usage", None)
        return chunk


class NonStockFinishReason(GoodEngine):
    """Uses an OpenAI-style ``max_tokens`` instead of ``length`` (HTTP 400 in 1.6.1)."""

    def token_chunk(self, prompt: int, i: int, n: int) -> GenerateChunk:
        chunk = super().token_chunk(prompt, i, n)
        if "finish_reason" in chunk:
            chunk["finish_reason"] = "max_tokens"
        return chunk


class MissingIndex(GoodEngine):
    """Leaves out ``index`` (the 1.6.1 bridge defaults it; the contract requires it)."""

    def token_chunk(self, prompt: int, i: int, n: int) -> GenerateChunk:
        chunk = super().token_chunk(prompt, i, n)
        del chunk["index"]  # type: ignore[misc]
        return chunk


class AbortRaises(GoodEngine):
    async def abort(self, context: Context) -> None:
        raise RuntimeError("no such request in the scheduler")


class AbortTwiceRaises(GoodEngine):
    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay)
        self.aborted: set[str] = set()

    async def abort(self, context: Context) -> None:
        if context.id() in self.aborted:
            raise KeyError(context.id())
        self.aborted.add(context.id())


class LeaksOnDrop(GoodEngine):
    """Releases its slot only when a stream finishes, not when it is closed early."""

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        prompt = len(request.get("token_ids") or [])
        n = _max_tokens(request)
        self.active += 1
        for i in range(n):
            if context.is_stopped():
                self.active -= 1
                yield self.cancelled_chunk(prompt, i)
                return
            await self.pause()
            if i == n - 1:
                self.active -= 1
            yield self.token_chunk(prompt, i, n)


class CleanupStrandsStream(GoodEngine):
    """Tokens come from a scheduler task; cleanup() cancels it and strands open streams."""

    _scheduler: asyncio.Task[None] | None = None

    async def start(self, worker_id: int) -> EngineConfig:
        if self._scheduler is not None:
            self._scheduler.cancel()
        self._waiting: list[asyncio.Future[None]] = []
        self._scheduler = asyncio.get_running_loop().create_task(self._schedule())
        return await super().start(worker_id)

    async def _schedule(self) -> None:
        while True:
            await asyncio.sleep(0.001)
            waiting, self._waiting = self._waiting, []
            for future in waiting:
                if not future.done():
                    future.set_result(None)

    async def pause(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        await future

    async def cleanup(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            self._scheduler = None
        await super().cleanup()


class CleanupAfterPartialStartCrashes(GoodEngine):
    """start() allocates in two steps; cleanup() guards only the first."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay)
        self._pool: list[int] | None = None
        self._weights: dict[str, int] | None = None

    async def start(self, worker_id: int) -> EngineConfig:
        self._pool = [0] * 4
        await asyncio.sleep(0)  # e.g. loading weights
        self._weights = {"layers": 2}
        return await super().start(worker_id)

    async def cleanup(self) -> None:
        if self._pool is None:
            return
        assert self._weights is not None, "weights were never loaded"
        self._weights.clear()
        self._pool = self._weights = None
        await super().cleanup()


class HangsOnSecondStart(GoodEngine):
    """A second start() waits forever (strict mode bounds it with StepTimedOut)."""

    async def start(self, worker_id: int) -> EngineConfig:
        if self._handle is not None:
            await asyncio.Event().wait()
        return await super().start(worker_id)


# --- encode engines --------------------------------------------------------------------------


class GoodEncodeEngine(GoodEngine):
    """A correct Encode-role engine: one ``stop`` terminal with an object encoder_result."""

    model_name = "good-encoder"

    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        images = (request.get("multi_modal_data") or {}).get("image")
        if not images or request.get("mm_processor_kwargs") != {"min_pixels": 64}:
            raise ValueError("encode request without an image or mm_processor_kwargs")
        self.active += 1
        try:
            if context.is_stopped():
                yield {"token_ids": [], "index": 0, "finish_reason": "cancelled"}
                return
            await self.pause()
            yield self.encode_chunk(len(request.get("token_ids") or []))
        finally:
            self.active -= 1

    def encode_chunk(self, prompt: int) -> GenerateChunk:
        return {
            "token_ids": [],
            "index": 0,
            "finish_reason": "stop",
            "encoder_result": {"handle": "encoder:0", "items": 1},
            "completion_usage": _usage(prompt, 0),
        }


class EncodeTwoChunks(GoodEncodeEngine):
    async def generate(
        self, request: GenerateRequest, context: Context
    ) -> AsyncGenerator[GenerateChunk, None]:
        async for chunk in super().generate(request, context):
            yield chunk
            yield chunk


class EncodeLengthFinish(GoodEncodeEngine):
    def encode_chunk(self, prompt: int) -> GenerateChunk:
        return {**super().encode_chunk(prompt), "finish_reason": "length"}


class EncodeWithTokens(GoodEncodeEngine):
    def encode_chunk(self, prompt: int) -> GenerateChunk:
        return {**super().encode_chunk(prompt), "token_ids": [7]}


class EncodeResultNotObject(GoodEncodeEngine):
    def encode_chunk(self, prompt: int) -> GenerateChunk:
        chunk = super().encode_chunk(prompt)
        chunk["encoder_result"] = "encoder:0"  # type: ignore[typeddict-item]
        return chunk


class EncodeUsageWrong(GoodEncodeEngine):
    def encode_chunk(self, prompt: int) -> GenerateChunk:
        return {**super().encode_chunk(prompt), "completion_usage": _usage(prompt, 1)}


class EncodeMissingIndex(GoodEncodeEngine):
    def encode_chunk(self, prompt: int) -> GenerateChunk:
        chunk = super().encode_chunk(prompt)
        del chunk["index"]  # type: ignore[misc]
        return chunk


class EncodeAbortRaises(GoodEncodeEngine):
    async def abort(self, context: Context) -> None:
        raise RuntimeError("no such request in the encoder")


# --- raw engines ------------------------------------------------------------------------------


class GoodRawEngine(RawEngine):
    """A correct raw engine: ``steps`` progress objects (3 by default), ends on stop."""

    model_name = "good-raw"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.active = 0

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[GoodRawEngine, WorkerConfig]:
        return cls(), WorkerConfig(namespace="test", model_name=cls.model_name)

    async def start(self, worker_id: int) -> EngineConfig:
        return EngineConfig(model=self.model_name)

    async def generate(
        self, request: RawRequest, context: Context
    ) -> AsyncGenerator[RawResponseChunk, None]:
        self.active += 1
        try:
            for step in range(int(request.get("steps", 3))):
                if context.is_stopped():
                    return
                await asyncio.sleep(self.delay)
                yield {"step": step, "prompt": request.get("prompt")}
        finally:
            self.active -= 1

    async def cleanup(self) -> None:
        pass


class RawAdvertisesLlm(GoodRawEngine):
    async def start(self, worker_id: int) -> EngineConfig:
        return EngineConfig(model=self.model_name, context_length=4096)


class RawIgnoresCancel(GoodRawEngine):
    def __init__(self, delay: float = 0.005) -> None:
        super().__init__(delay)

    async def generate(
        self, request: RawRequest, context: Context
    ) -> AsyncGenerator[RawResponseChunk, None]:
        for step in range(int(request.get("steps", 3))):
            await asyncio.sleep(self.delay)
            yield {"step": step}


class RawLeaksOnDrop(GoodRawEngine):
    """Counts a request in, but only counts it out when it runs to completion."""

    async def generate(
        self, request: RawRequest, context: Context
    ) -> AsyncGenerator[RawResponseChunk, None]:
        self.active += 1
        for step in range(int(request.get("steps", 3))):
            if context.is_stopped():
                break
            await asyncio.sleep(self.delay)
            yield {"step": step}
        self.active -= 1


# --- the negative table -----------------------------------------------------------------------


def _raise_in_factory() -> GoodEngine:
    raise RuntimeError("model path does not exist")


@dataclass(frozen=True)
class NegativeCase:
    """``factory`` must make the ``suite`` kit report ``name`` in ``mode``."""

    name: str
    factory: Callable[[], Any]
    suite: str = "token"
    #: "stock": fails in stock mode (and strict); "strict": fails only in strict mode.
    mode: str = "stock"
    options: dict[str, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.suite}-{self.name}"


# Short deadlines keep the hang-type cases fast.
_QUICK_CANCEL = {"cancel_deadline": 0.2, "prompt_deadline": 0.2}
_QUICK_DROP = {"prompt_deadline": 0.2}
_QUICK_STEP = {"deadline": 0.2, "cancel_deadline": 0.15, "prompt_deadline": 0.15}

NEGATIVE_CASES: tuple[NegativeCase, ...] = (
    NegativeCase("FactoryFailed", _raise_in_factory),
    NegativeCase("StartFailed", StartFails),
    NegativeCase("EmptyModelInConfig", EmptyModel),
    NegativeCase("KvEventSourcesFailed", KvSourcesRaise),
    NegativeCase("KvEventSourcesNotIdempotent", KvSourcesUnstable),
    NegativeCase("SetupMetricsFailed", MetricsRaise),
    NegativeCase("ComponentMetricsNotIdempotent", MetricsRanksUnstable),
    NegativeCase("GenerateFailed", GenerateRaisesSynchronously),
    NegativeCase("NoChunksYielded", EmptyStream),
    NegativeCase("StreamYieldedError", StreamRaises),
    NegativeCase("ChunkAfterTerminal", ChunkAfterTerminal),
    NegativeCase("NoTerminalChunk", NoTerminal),
    NegativeCase("CompletionTokensMismatch", UsageMismatch),
    NegativeCase("ConcurrentGenerateFailed", ConcurrentEmpty),
    NegativeCase("ConcurrentGenerateFailed", ConcurrentRejected),
    NegativeCase("CancellationNotObserved", IgnoresCancel, options=_QUICK_CANCEL),
    NegativeCase("CancellationIgnored", WrongCancelReason),
    NegativeCase("CleanupFailed", CleanupRaises),
    NegativeCase("SecondCleanupFailed", SecondCleanupRaises),
    NegativeCase("CleanupWithoutStartFailed", CleanupNotNullSafe),
    NegativeCase("StepTimedOut", HangsBeforeFirstToken, options=_QUICK_STEP),
    NegativeCase("EncodeChunkCount", EncodeTwoChunks, suite="encode"),
    NegativeCase("EncodeTerminalExpected", EncodeLengthFinish, suite="encode"),
    NegativeCase("EncodeTokensNotEmpty", EncodeWithTokens, suite="encode"),
    NegativeCase("EncoderResultExpectedObject", EncodeResultNotObject, suite="encode"),
    NegativeCase("EncodeUsageMismatch", EncodeUsageWrong, suite="encode"),
    NegativeCase("RawEngineAdvertisedLlmRegistration", RawAdvertisesLlm, suite="raw"),
    NegativeCase("CancellationNotObserved", RawIgnoresCancel, suite="raw", options=_QUICK_CANCEL),
    # strict-only
    NegativeCase("MidStreamCancellationIgnored", OnlyChecksStopAtStart, mode="strict"),
    NegativeCase("CancelledTerminalMalformed", CancelledUsageWrong, mode="strict"),
    NegativeCase("ConcurrentStreamMalformed", TerminalOnlyWhenAlone, mode="strict"),
    NegativeCase("InvalidFinishReason", NonStockFinishReason, mode="strict"),
    NegativeCase("InvalidChunkShape", MissingIndex, mode="strict"),
    NegativeCase("AbortFailed", AbortRaises, mode="strict"),
    NegativeCase("AbortNotIdempotent", AbortTwiceRaises, mode="strict"),
    NegativeCase("LeakOnDrop", LeaksOnDrop, mode="strict", options=_QUICK_DROP),
    NegativeCase(
        "CleanupHangsStream",
        CleanupStrandsStream,
        mode="strict",
        options={"deadline": 0.5, "cancel_deadline": 0.3, "prompt_deadline": 0.2},
    ),
    NegativeCase("CleanupAfterFailedStartFailed", CleanupAfterPartialStartCrashes, mode="strict"),
    NegativeCase("StepTimedOut", HangsOnSecondStart, mode="strict", options=_QUICK_STEP),
    NegativeCase("InvalidChunkShape", EncodeMissingIndex, suite="encode", mode="strict"),
    NegativeCase("AbortFailed", EncodeAbortRaises, suite="encode", mode="strict"),
    NegativeCase("LeakOnDrop", RawLeaksOnDrop, suite="raw", mode="strict", options=_QUICK_DROP),
)
