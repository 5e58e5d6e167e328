"""In-memory discovery backend for in-process tests: one shared dict per name."""

from __future__ import annotations

from typing import ClassVar

from .base import KvStore
from .file import random_instance_id


class MemoryStore(KvStore):
    _spaces: ClassVar[dict[str, dict[str, bytes]]] = {}

    def __init__(self, space: str = "default", *, instance_id: int | None = None) -> None:
        self._data = self._spaces.setdefault(space, {})
        self._id = instance_id if instance_id is not None else random_instance_id()
        self._owned: set[str] = set()

    @property
    def instance_id(self) -> int:
        return self._id

    @property
    def backend(self) -> str:
        return "mem"

    async def open(self) -> int:
        return self._id

    async def put(self, key: str, value: bytes) -> None:
        self._data[key] = value
        self._owned.add(key)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)
        self._owned.discard(key)

    async def list(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self._data.items() if k.startswith(prefix)}

    async def close(self) -> None:
        for key in list(self._owned):
            await self.delete(key)
