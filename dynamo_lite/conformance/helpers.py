"""Contexts, the kit's requests, and a stream reader that never raises engine errors.

Everything here is engine-agnostic plumbing shared by the checks:

* :func:`mock_context` / :func:`cancelling_context` — the stock helpers.
* :func:`smoke_request`, :func:`long_request`, :func:`encode_request`,
  :func:`raw_request` — the exact requests the Rust kit sends.
* :class:`Stream` — drives an engine's async generator one item at a time,
  turning an exception raised mid-stream into a :class:`StreamError` item
  (the 1.6.1 bridge surfaces it as an ``Err`` item, not as a failed call).
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dynamo_lite import Context

__all__ = [
    "CONCURRENT_STREAMS",
    "DEFAULT_CANCEL_DEADLINE",
    "LONG_MAX_TOKENS",
    "LONG_RAW_STEPS",
    "SMOKE_MAX_TOKENS",
    "GenerateSetupError",
    "Stream",
    "StreamError",
    "SyntheticMetrics",
    "cancelling_context",
    "chunk_get",
    "describe",
    "encode_request",
    "finish_reason",
    "is_cancelled_reason",
    "is_terminal",
    "long_request",
    "maybe_await",
    "mock_context",
    "open_stream",
    "raw_request",
    "smoke_request",
    "token_count",
]

#: Seconds a cancelled stream has to end (the Rust kit's ``DEFAULT_CANCEL_DEADLINE``).
DEFAULT_CANCEL_DEADLINE = 2.0
#: ``max_tokens`` of the smoke requests; keeps real engines' smoke runs short.
SMOKE_MAX_TOKENS = 8
#: ``max_tokens`` of the cancellation request: an engine ignoring the stop
#: cannot finish naturally before the deadline.
LONG_MAX_TOKENS = 10_000
#: ``steps`` of the raw cancellation request.
LONG_RAW_STEPS = 100_000
#: Streams driven together by the concurrency checks.
CONCURRENT_STREAMS = 8

_ENCODE_IMAGE_URL = "data:image/png;base64,AA=="


# --- contexts ---------------------------------------------------------------------------


def mock_context() -> Context:
    """A fresh, un-cancelled request context with a random id."""
    return Context()


def cancelling_context(after: float | datetime.timedelta) -> Context:
    """A fresh context whose ``stop_generating()`` fires ``after`` seconds from now.

    Must be called inside a running event loop (the stock helper spawns a
    tokio task; this schedules a loop timer). Raises ``RuntimeError`` otherwise.
    """
    delay = after.total_seconds() if isinstance(after, datetime.timedelta) else float(after)
    loop = asyncio.get_running_loop()
    ctx = Context()
    loop.call_later(max(delay, 0.0), ctx.stop_generating)
    return ctx


# --- requests ---------------------------------------------------------------------------


def _token_request(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "token_ids": [1, 2, 3],
        "stop_conditions": {"max_tokens": max_tokens},
        "sampling_options": {},
        "output_options": {},
    }


def smoke_request(model: str) -> dict[str, Any]:
    """The single/concurrent generate request: 3 prompt tokens, at most 8 new ones."""
    return _token_request(model, SMOKE_MAX_TOKENS)


def long_request(model: str) -> dict[str, Any]:
    """The cancellation request: asks for 10 000 tokens."""
    return _token_request(model, LONG_MAX_TOKENS)


def encode_request(model: str) -> dict[str, Any]:
    """The Encode-role request: one image plus ``mm_processor_kwargs``.

    The Rust kit builds the image as ``MultimodalData::RawUrl``; the dict a
    Python engine receives for that variant is not pinned down (source-only),
    so this uses the shape the shipped 1.6.1 Python tests use.
    """
    request = _token_request(model, SMOKE_MAX_TOKENS)
    request["multi_modal_data"] = {"image": [{"url": _ENCODE_IMAGE_URL}]}
    request["mm_processor_kwargs"] = {"min_pixels": 64}
    return request


def raw_request(steps: int | None = None) -> dict[str, Any]:
    """The raw-engine request; ``steps`` asks for a long stream (cancellation check)."""
    return {"prompt": "ping"} if steps is None else {"prompt": "ping", "steps": steps}


# --- metrics handle -----------------------------------------------------------------------


@dataclass
class SyntheticMetrics:
    """Stands in for 1.6.1's ``EngineMetrics`` handle given to ``register_prometheus``.

    The stock kit passes a real handle backed by a throw-away hierarchy, so
    every method an engine may call on it works. This one accepts any method
    call as a no-op and records it in :attr:`calls`.
    """

    model: str = "test-model"
    component: str = "test"
    model_load_time_seconds: float = 0.0
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return record


# --- chunk accessors -------------------------------------------------------------------------


def chunk_get(chunk: object, key: str) -> Any:
    """``chunk[key]`` for dict-like chunks, else None.

    The Rust kit only ever sees typed chunks, so it has no rule for a
    malformed one; stock mode reads what is there and leaves judging shape
    to strict mode's chunk_schema check.
    """
    return chunk.get(key) if isinstance(chunk, Mapping) else None


def finish_reason(chunk: object) -> Any:
    return chunk_get(chunk, "finish_reason")


def is_terminal(item: object) -> bool:
    """A terminal is a chunk (not an error item) with a truthy ``finish_reason``."""
    return not isinstance(item, StreamError) and bool(finish_reason(item))


def is_cancelled_reason(reason: object) -> bool:
    # "abort" is 1.6.1's alias for Cancelled; parsing is exact and case-sensitive.
    return reason in ("cancelled", "abort")


def token_count(chunk: object) -> int:
    ids = chunk_get(chunk, "token_ids")
    return len(ids) if isinstance(ids, list | tuple) else 0


def describe(exc: BaseException) -> str:
    """``"Type: text"`` (or just ``"Type"``) for an exception raised by engine code."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def maybe_await(value: Any) -> Any:
    """Await ``value`` if it is awaitable: engine hooks may be sync or async."""
    if inspect.isawaitable(value):
        return await value
    return value


# --- streams -------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamError:
    """An exception the engine's stream raised: the Python form of an ``Err`` item."""

    exc: BaseException

    def __str__(self) -> str:
        return describe(self.exc)


class GenerateSetupError(Exception):
    """Calling ``generate()`` itself failed (before any item): the kit's GenerateFailed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


class Stream:
    """Reads one engine stream item by item.

    ``items`` holds everything read so far (chunks and :class:`StreamError`);
    ``stopped_at_receipt[i]`` records whether the request's context was
    already stopped when item ``i`` arrived, so a check can tell a natural
    end from one that raced a cancellation.

    After every item the reader yields to the event loop once, as the
    framework's response writer does; otherwise an engine that never awaits
    could not be interrupted by a timer or a deadline.
    """

    def __init__(self, iterator: AsyncIterator[Any], context: Context | None = None) -> None:
        self._it = iterator
        self.context = context
        self.items: list[Any] = []
        self.stopped_at_receipt: list[bool] = []
        self.ended = False

    @property
    def last(self) -> Any:
        return self.items[-1]

    async def next(self) -> bool:
        """Read one item; False once the stream has ended (an error item ends it)."""
        if self.ended:
            return False
        try:
            item: Any = await self._it.__anext__()
        except StopAsyncIteration:
            self.ended = True
            return False
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our own deadline, not the engine's doing
            self.ended = True
            item = StreamError(exc)
        except Exception as exc:
            self.ended = True
            item = StreamError(exc)
        self.items.append(item)
        self.stopped_at_receipt.append(self.context is not None and self.context.is_stopped())
        await asyncio.sleep(0)
        return True

    async def read(self, count: int) -> bool:
        """Read until ``count`` items have arrived; False if the stream ended first."""
        while len(self.items) < count:
            if not await self.next():
                return False
        return True

    async def drain(self) -> list[Any]:
        """Read to the end and return every item."""
        while await self.next():
            pass
        return self.items

    async def close(self, timeout: float) -> None:
        """Best-effort ``aclose()`` of the engine's generator, bounded by ``timeout``."""
        aclose: Callable[[], Awaitable[Any]] | None = getattr(self._it, "aclose", None)
        self.ended = True
        if aclose is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await aclose()
        except (Exception, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    async def aclose_strict(self) -> None:
        """``aclose()`` the generator, letting its exceptions through (drop-safety check)."""
        aclose: Callable[[], Awaitable[Any]] | None = getattr(self._it, "aclose", None)
        self.ended = True
        if aclose is not None:
            await aclose()


async def open_stream(engine: Any, request: Any, context: Context) -> Stream:
    """Call ``engine.generate(request, context)`` and wrap the result.

    Raises :class:`GenerateSetupError` when the call itself fails: it raises
    synchronously, returns an awaitable that raises, or returns something
    that is not an async iterator. Errors while iterating become items.
    """
    try:
        result = engine.generate(request, context)
        if inspect.isawaitable(result) and not hasattr(result, "__aiter__"):
            # A coroutine that returns the stream: awaiting it is the setup
            # step the Rust trait's `generate(..).await` performs.
            result = await result
    except Exception as exc:
        raise GenerateSetupError(exc) from exc
    if not hasattr(result, "__aiter__"):
        raise GenerateSetupError(
            TypeError(f"generate() returned {type(result).__name__}, not an async iterator")
        )
    return Stream(result.__aiter__(), context)
