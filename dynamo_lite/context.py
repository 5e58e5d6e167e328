"""Per-request context: identity, metadata and cancellation.

A context is *stopped* when generation should end gracefully and *killed*
when it must end now; a kill also stops. The frontend's ``kill``/``stop``
control frames, a vanished frontend and worker shutdown all end up here, and
engines observe them with :meth:`Context.is_stopped` between yields or by
awaiting :meth:`Context.stopped`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .telemetry import SpanProxy


class ContextMetadata(MutableMapping[str, str]):
    """String → string request metadata propagated with the request."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(data or {})

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __setitem__(self, key: str, value: str) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def copy(self) -> dict[str, str]:
        return dict(self._data)

    def __repr__(self) -> str:
        return f"ContextMetadata({self._data!r})"


_TRACE_KEYS = ("traceparent", "tracestate", "x-request-id", "request-id")


class Context:
    """Request context handed to ``generate()`` and ``abort()``.

    Compatible with ``dynamo._core.Context``: ``Context()`` makes a fresh
    context with a random uuid4 id.
    """

    __slots__ = (
        "_callbacks",
        "_ended",
        "_first_token_hook",
        "_id",
        "_killed",
        "_killed_event",
        "_metadata",
        "_stopped",
        "_stopped_event",
        "_trace_headers",
    )

    def __init__(
        self,
        id: str | None = None,
        metadata: dict[str, str] | None = None,
        *,
        trace_headers: dict[str, str] | None = None,
    ) -> None:
        if id is None:
            import uuid  # here: it loads platform and _uuid, unused by most workers

            id = str(uuid.uuid4())
        self._id = id
        self._metadata = ContextMetadata(metadata)
        self._stopped = False
        self._killed = False
        # Events are created on first await so a Context can be built outside
        # a running loop (tests, the conformance kit).
        self._stopped_event: asyncio.Event | None = None
        self._killed_event: asyncio.Event | None = None
        self._callbacks: list[Callable[[Context], None]] | None = None
        self._ended = False
        #: Set by the endpoint on decode workers: releases a deferred abort.
        self._first_token_hook: Callable[[], None] | None = None
        self._trace_headers = {k: v for k, v in (trace_headers or {}).items() if k in _TRACE_KEYS}

    # --- identity -------------------------------------------------------
    def id(self) -> str:
        return self._id

    @property
    def metadata(self) -> ContextMetadata:
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, str]) -> None:
        self._metadata = ContextMetadata(value)

    def trace_headers(self) -> dict[str, str] | None:
        """W3C trace headers to forward to an inference engine, if any."""
        return dict(self._trace_headers) if "traceparent" in self._trace_headers else None

    @property
    def trace_id(self) -> str | None:
        parts = self._trace_headers.get("traceparent", "").split("-")
        return parts[1] if len(parts) == 4 else None

    @property
    def span_id(self) -> str | None:
        parts = self._trace_headers.get("traceparent", "").split("-")
        return parts[2] if len(parts) == 4 else None

    @property
    def parent_span_id(self) -> str | None:
        """The span the request arrived under (the caller's, from ``traceparent``)."""
        return self.span_id

    def current_span(self) -> SpanProxy:
        """The ``engine.generate`` span (see :mod:`dynamo_lite.telemetry`); a no-op without one."""
        from . import telemetry

        return telemetry.current_span(self)

    def start_span(self, name: str, attrs: dict[str, Any] | None = None) -> SpanProxy:
        """A child span under ``engine.generate``, for use as a context manager."""
        from . import telemetry

        return telemetry.start_span(self, name, **(attrs or {}))

    def detached(self, id: str) -> Context:
        """A fresh, un-cancelled context with a new id and the same metadata."""
        return Context(id, self._metadata.copy(), trace_headers=self._trace_headers)

    # --- cancellation ---------------------------------------------------
    def is_stopped(self) -> bool:
        return self._stopped

    def is_killed(self) -> bool:
        return self._killed

    def stop_generating(self) -> None:
        """Ask generation to end gracefully. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._stopped_event is not None:
            self._stopped_event.set()
        self._fire()

    def kill(self) -> None:
        """End generation now; implies stopped. Idempotent."""
        if self._killed:
            return
        self._killed = True
        if self._killed_event is not None:
            self._killed_event.set()
        self.stop_generating()
        self._fire()

    async def stopped(self) -> None:
        """Wait until the context is stopped (or killed)."""
        if self._stopped:
            return
        if self._stopped_event is None:
            self._stopped_event = asyncio.Event()
        await self._stopped_event.wait()

    async def killed(self) -> None:
        """Wait until the context is killed."""
        if self._killed:
            return
        if self._killed_event is None:
            self._killed_event = asyncio.Event()
        await self._killed_event.wait()

    def async_killed_or_stopped(self) -> asyncio.Future[bool]:
        """``dynamo._core`` spelling: a future that resolves to True once the
        context is stopped (or killed), and to False when the request ended
        without that. A plain future, no task: nothing is left behind."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._stopped or self._ended:
            fut.set_result(self._stopped)
            return fut

        def resolve(ctx: Context) -> None:
            if not fut.done():
                fut.set_result(ctx._stopped)

        self.add_done_callback(resolve)
        return fut

    def notify_first_token(self) -> None:
        """Fire the first-token signal: releases an ``abort()`` a decode worker
        deferred. Idempotent; a no-op elsewhere (the framework also fires it
        on the first non-empty chunk)."""
        hook = self._first_token_hook
        if hook is not None:
            hook()

    def add_done_callback(self, callback: Callable[[Context], None]) -> None:
        """Call ``callback(ctx)`` once, when the context stops or its request
        ends, whichever comes first (framework use)."""
        if self._stopped or self._ended:
            callback(self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, None
        for cb in callbacks or ():
            cb(self)

    def _end(self) -> None:
        """The request is over: release whatever still waits on this context."""
        if not self._ended:
            self._ended = True
            if self._callbacks is not None:
                self._fire()

    def __repr__(self) -> str:
        state = "killed" if self._killed else "stopped" if self._stopped else "live"
        return f"Context(id={self._id!r}, {state})"
