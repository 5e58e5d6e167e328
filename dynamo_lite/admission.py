"""The engine request limit: how many requests are inside the engine at once.

Theory of operation (stock 1.6.1's ``DYN_ENGINE_REQUEST_LIMIT`` /
``DYN_DYNAMO_REQUEST_QUEUE_LIMIT``, observed side by side with the stock
worker in ``tests/interop/test_engine_request_limit.py``):

* Unset (or ``0``): no limit; every admitted request goes straight to the engine.
* ``DYN_ENGINE_REQUEST_LIMIT=N``: at most N requests are in the engine; the
  others are acknowledged and wait, first come first served, until one leaves.
  The wait queue holds ``DYN_DYNAMO_REQUEST_QUEUE_LIMIT`` requests (stock's
  default with a limit: 15) on top of the one stock's dispatcher already holds
  while it waits for a slot; a request beyond ``N + 1 + queue limit`` is
  refused at admission with ``Server overloaded: worker at capacity`` (the
  frontend's 529) and counted in ``dynamo_rejection_request_total``. (Stock
  refuses one earlier when requests arrive faster than its dispatcher picks
  them up; spaced arrivals see ``N + 1 + queue limit`` there too.)
* Gauges, as stock reports them: ``dynamo_engine_request`` (in the engine),
  ``dynamo_request_queue`` and ``dynamo_work_handler_queue_depth`` (waiting,
  less the one the dispatcher holds), ``dynamo_work_handler_queue_capacity``
  (the queue limit; 40000 without an engine limit).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from .envparse import parse_int

__all__ = ["DEFAULT_QUEUE_LIMIT", "UNLIMITED_QUEUE_CAPACITY", "EngineGate", "GateLimits"]

logger = logging.getLogger(__name__)

#: Stock's queue capacity when an engine limit is set and the queue limit is not.
DEFAULT_QUEUE_LIMIT = 15
#: Stock's work-queue capacity without an engine limit.
UNLIMITED_QUEUE_CAPACITY = 40_000


def _limit(env: Mapping[str, str], name: str) -> int | None:
    value = parse_int(env, name, None)
    return value if value is not None and value > 0 else None


@dataclass(frozen=True)
class GateLimits:
    """``DYN_ENGINE_REQUEST_LIMIT`` / ``DYN_DYNAMO_REQUEST_QUEUE_LIMIT`` (None: unset)."""

    limit: int | None = None
    queue_limit: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GateLimits:
        return cls(
            _limit(env, "DYN_ENGINE_REQUEST_LIMIT"), _limit(env, "DYN_DYNAMO_REQUEST_QUEUE_LIMIT")
        )


class EngineGate:
    """Counts requests in the engine and queues the rest (see the module docstring)."""

    __slots__ = ("_waiting", "admitted", "in_engine", "limit", "queue_limit")

    def __init__(self, limit: int | None = None, queue_limit: int | None = None) -> None:
        self.limit = limit
        self.queue_limit = queue_limit if queue_limit is not None else DEFAULT_QUEUE_LIMIT
        self.in_engine = 0
        #: Accepted at admission, not yet at :meth:`enter` (their tasks have not run yet).
        self.admitted = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EngineGate:
        return cls.from_limits(GateLimits.from_env(env))

    @classmethod
    def from_limits(cls, limits: GateLimits) -> EngineGate:
        return cls(limits.limit, limits.queue_limit)

    # --- what the metrics read -------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def queue_depth(self) -> int:
        """Waiting requests as stock's queue gauges count them."""
        return max(0, len(self._waiting) - 1)

    @property
    def queue_capacity(self) -> int:
        return UNLIMITED_QUEUE_CAPACITY if self.limit is None else self.queue_limit

    # --- admission -------------------------------------------------------------
    def admit(self) -> bool:
        """Admission, synchronous: False when the request must be refused
        (engine and queue both full); otherwise its place is counted."""
        limit = self.limit
        if limit is None:
            return True
        # + 1: the request stock's dispatcher holds while it waits for a slot.
        if self.in_engine + len(self._waiting) + self.admitted >= limit + 1 + self.queue_limit:
            return False
        self.admitted += 1
        return True

    def try_enter(self) -> bool:
        """Take a slot at once if there is one (always, without a limit): the
        per-request path then awaits nothing."""
        limit = self.limit
        if limit is None:
            self.in_engine += 1
            return True
        if self.in_engine < limit and not self._waiting:
            self.admitted -= 1
            self.in_engine += 1
            return True
        return False

    async def enter(self) -> None:
        """Wait for a slot in the engine (at once without a limit)."""
        limit = self.limit
        if limit is None:
            self.in_engine += 1
            return
        self.admitted -= 1
        if self.in_engine < limit and not self._waiting:
            self.in_engine += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a slot just as we were cancelled: pass it on
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            raise

    def leave(self) -> None:
        """A request left the engine: its slot goes to the longest waiter."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves over; in_engine is unchanged
                return
        self.in_engine -= 1
