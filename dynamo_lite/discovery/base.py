"""The small interface every discovery backend implements.

A :class:`KvStore` owns one *instance id* and the records written under it.
Records live as long as the store keeps them alive (an etcd lease, file
mtimes, process memory) and vanish when it is closed or its owner dies.
Backends map their foreign exceptions to :class:`DiscoveryError` at this
boundary so the worker handles one error type.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

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
        """Connect, obtain the instance id, start keeping records alive."""

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
        """Stop keepalive and remove every record this store still owns."""
