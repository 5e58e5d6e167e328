"""Who owns which task.

Every task a worker starts has an owner that waits for it:

* **Background services** (the request-plane sweeper, the system server and
  its connections, the discovery keepalive, the NATS subscription, the
  canary and the stall detector) run in the worker's root anyio task group,
  each under a :class:`Service` handle: a cancel scope of its own, so that
  the worker can stop them one by one in teardown order, and a done event,
  so that stopping waits (bounded) until the service really has ended.
* **Request tasks** (one per admitted request, and one per ``abort()``) live
  in a :class:`TaskSet` owned by the endpoint, which the worker joins and
  then cancels in teardown. They are spawned from the request plane's socket
  callback and are the hot path: a plain ``loop.create_task`` costs a fraction
  of ``TaskGroup.start_soon``, and requests are independent, so one failing
  request must not cancel its siblings as a task group would.

A service that raises is logged and ends; it does not take the worker down
(a bug in an auxiliary loop must not stop serving), but it is never silently
orphaned either.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.abc

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["Service", "TaskSet", "start_service"]


class Service:
    """Handle on one background service running in a task group."""

    __slots__ = ("_done", "_scope", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    async def stop(self, timeout: float = 2.0) -> bool:
        """Cancel the service and wait for it to end; False if it outlived ``timeout``.

        Shielded: a teardown step must complete even while the caller is
        being cancelled.
        """
        self._scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
            await self._done.wait()
        if self._done.is_set():
            return True
        logger.warning("%s did not stop within %.1fs", self.name, timeout)
        return False


async def start_service(
    tg: anyio.abc.TaskGroup,
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
    name: str,
) -> Service:
    """Run ``fn(*args, task_status=…)`` in ``tg`` under its own cancel scope.

    Returns once ``fn`` has called ``task_status.started()`` (a listener
    bound, a subscription confirmed); an exception before that is raised
    here, to the caller that wanted the service up.
    """
    service = Service(name)

    async def runner(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        status = _Status(task_status)
        try:
            with service._scope:
                await fn(*args, task_status=status)
        except Exception:
            if not status.reported:
                raise
            logger.exception("%s failed", name)
        finally:
            service._done.set()

    await tg.start(runner, name=name)
    return service


class _Status(anyio.abc.TaskStatus[None]):
    """Remembers whether the service reported readiness."""

    __slots__ = ("_inner", "reported")

    def __init__(self, inner: anyio.abc.TaskStatus[None]) -> None:
        self._inner = inner
        self.reported = False

    def started(self, value: None = None) -> None:
        self.reported = True
        self._inner.started(value)


class TaskSet:
    """A named bag of independent asyncio tasks (the per-request ones).

    Removes finished tasks itself, waits for the rest under a deadline and
    cancels what is left. Unlike a task group, one failing task does not
    cancel its siblings.
    """

    __slots__ = ("_name", "_tasks")

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("%s task %s failed", self._name, task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until every task finished; False if the deadline passed first."""
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while self._tasks:
                await asyncio.wait(list(self._tasks))
        return not self._tasks

    async def cancel(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait (bounded, shielded) for them to finish."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(list(self._tasks), timeout=timeout)
