"""The small interface every discovery backend implements.

A :class:`KvStore` owns one *instance id* and the records written under it.
Records live as long as the store keeps them alive (an etcd lease, file
mtimes, process memory) and vanish when it is closed or its owner dies.
Backends map their foreign exceptions to :class:`DiscoveryError` at this
boundary so the worker handles one error type.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.abc

logger = logging.getLogger(__name__)

LeaseCallback = Callable[[str], Awaitable[None]]


class DiscoveryError(Exception):
    """A discovery operation failed."""


class DiscoveryUnavailable(DiscoveryError):
    """The discovery service could not be reached."""


class KvStore(abc.ABC):
    """Key/value records bound to this process's liveness."""

    #: Called with a short reason when liveness was lost and then restored by
    #: re-writing every record (etcd lease expired while unreachable, files
    #: reaped). The instance id is kept, so routing resumes unchanged.
    on_recovered: LeaseCallback | None = None
    #: Called when liveness is lost for good (only when recovery is disabled).
    on_lost: LeaseCallback | None = None

    @property
    @abc.abstractmethod
    def instance_id(self) -> int:
        """The id every record is written under (an etcd lease id, or random)."""

    @property
    def backend(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    async def open(self) -> int:
        """Connect and obtain the instance id (idempotent). Starts no task:
        keeping the records alive is :meth:`keep_alive`, run by the owner."""

    async def keep_alive(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep this instance's records alive until cancelled (a lease keepalive,
        file touches). The default has nothing to do and returns at once."""
        task_status.started()

    @contextlib.asynccontextmanager
    async def alive(self) -> AsyncIterator[int]:
        """``open()``, keep alive in a task group of its own, ``close()`` on exit.

        For using a store on its own; the worker runs :meth:`keep_alive` in
        its root task group instead, to stop it in teardown order.
        """
        instance_id = await self.open()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.keep_alive)
                try:
                    yield instance_id
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    async def _notify(self, callback: LeaseCallback | None, reason: str) -> None:
        """Tell the owner about liveness, inline: a failing callback is logged."""
        if callback is None:
            return
        try:
            await callback(reason)
        except Exception:
            logger.exception("discovery liveness callback failed")

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Write ``key`` bound to this instance's liveness."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key`` now (missing keys are fine)."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> dict[str, bytes]:
        """Every live record whose key starts with ``prefix`` (any owner)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Remove every record this store still owns and release liveness
        (revoke the lease, delete the files). Idempotent."""
