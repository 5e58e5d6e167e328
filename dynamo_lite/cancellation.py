"""When a request's context stops: the stream ends, ``engine.abort()`` runs once.

Theory of operation (as the stock 1.6.1 worker behaves, checked side by side
in ``tests/interop/test_parity_open.py``):

* A stop from upstream (the frontend's ``kill``/``stop``, or the frontend
  vanishing) and the engine's own ``context.stop_generating()`` both end the
  response stream at once: nothing more is written and the connection is
  closed, without waiting for the engine's next yield. The generator itself is
  closed later (its next yield; after an upstream kill, cancelled once
  ``KILL_GRACE`` runs out).
* ``engine.abort(ctx)`` is awaited once per request. An :class:`AbortGate`
  decides when: at once, except on decode workers, where it waits for the
  first non-empty chunk (or ``Context.notify_first_token()``): a decode
  engine still waiting for its KV transfer has nothing to abort yet. If the
  stream ends first, abort is never called.
* An upstream ``kill`` or ``stop`` is logged at INFO, ``request cancellation
  received``, with stock's field names (``request_id``,
  ``cancellation.signal``, ``cancellation.source``); a frontend that just
  goes away, and an engine's own stop, are not (stock logs neither at INFO).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["AbortGate", "log_cancellation"]

logger = logging.getLogger("dynamo_lite.endpoint")


def log_cancellation(request_id: str, signal: str) -> None:
    """The INFO line stock writes when the frontend cancels a request."""
    if signal not in ("kill", "stop"):
        logger.debug("request cancellation observed request_id=%s signal=%s", request_id, signal)
        return
    logger.info(
        "request cancellation received",
        extra={
            "request_id": request_id,
            "cancellation.signal": signal,
            "cancellation.source": "upstream",
        },
    )


class AbortGate:
    """Calls ``fire`` at most once: when asked to, or — on decode workers —
    when asked to and a first token has been seen, whichever is later."""

    __slots__ = ("_fire", "done", "pending", "waiting")

    def __init__(self, fire: Callable[[], None], *, defer: bool) -> None:
        self._fire = fire
        #: True while the abort would still wait for a first token.
        self.waiting = defer
        self.pending = False
        self.done = False

    def request(self) -> None:
        """A cancellation was observed: abort now, or once the first token shows."""
        if self.done:
            return
        if self.waiting:
            if not self.pending:
                self.pending = True
                logger.debug("deferring engine.abort() until first-token observed")
            return
        self.done = True
        self._fire()

    def first_token(self) -> None:
        """The engine produced its first non-empty chunk (or said so itself)."""
        if not self.waiting:
            return
        self.waiting = False
        if self.pending:
            self.request()

    def close(self) -> None:
        """The request is over: a deferred abort is dropped, never called."""
        self.pending = False
        self.done = True
