"""``await endpoint.client()``: a client for the endpoint an engine serves, with stock's API.

Stock's ``Client`` (checked side by side in ``tests/interop/test_model_cards.py``):
``instance_ids()`` (the last snapshot), ``await wait_for_instances()``,
``await generate(request)`` / ``round_robin`` / ``random`` /
``direct(request, instance_id)``, each an async iterator of the response
items, ``Annotated`` objects (``data()``, ``event()``, ``id()``,
``comments()``, ``is_error()`` — all methods) or, with ``annotated=False``,
the plain dicts. It is :class:`dynamo_lite.client.Client` underneath, sharing
the worker's discovery store; the worker closes it at shutdown.
"""

from __future__ import annotations

import asyncio
import random as _random
from collections.abc import AsyncIterator
from typing import Any

from .client import Client, Instance, NoInstances

__all__ = ["Annotated", "EndpointClient", "close_all", "open_client"]


class Annotated:
    """One response item, as stock's client yields it."""

    __slots__ = ("_data",)

    def __init__(self, data: Any) -> None:
        self._data = data

    def data(self) -> Any:
        return self._data

    def event(self) -> str | None:
        return None

    def id(self) -> str | None:
        return None

    def comments(self) -> list[str] | None:
        return None

    def is_error(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Annotated(data={self._data!r})"


class EndpointClient:
    """Stock's ``Client`` surface over :class:`dynamo_lite.client.Client`."""

    def __init__(self, inner: Client) -> None:
        self._inner = inner
        self._instances: list[Instance] = []
        self._next = 0

    def instance_ids(self) -> list[int]:
        return [i.instance_id for i in self._instances]

    async def _refresh(self) -> list[Instance]:
        self._instances = await self._inner.instances()
        return self._instances

    async def wait_for_instances(self) -> list[int]:
        while True:
            if await self._refresh():
                return self.instance_ids()
            await asyncio.sleep(0.05)  # polled: the stores have no watch to wait on

    async def _send(self, request: Any, instance: Instance, annotated: bool | None) -> Any:
        stream = await self._inner.generate(request, instance=instance)

        async def items() -> AsyncIterator[Any]:
            async for item in stream:
                yield Annotated(item) if annotated is not False else item

        return items()

    async def _pick(self, choose: str) -> Instance:
        found = await self._refresh()
        if not found:
            raise NoInstances(f"no instance of {self._inner.endpoint_id}")
        if choose == "random":
            return _random.choice(found)
        self._next += 1
        return found[(self._next - 1) % len(found)]

    async def generate(
        self, request: Any, annotated: bool | None = True, context: Any = None
    ) -> Any:
        return await self._send(request, await self._pick("round_robin"), annotated)

    async def round_robin(
        self, request: Any, annotated: bool | None = True, context: Any = None
    ) -> Any:
        return await self._send(request, await self._pick("round_robin"), annotated)

    async def random(self, request: Any, annotated: bool | None = True, context: Any = None) -> Any:
        return await self._send(request, await self._pick("random"), annotated)

    async def direct(
        self, request: Any, instance_id: int, annotated: bool | None = True, context: Any = None
    ) -> Any:
        for inst in await self._refresh():
            if inst.instance_id == instance_id:
                return await self._send(request, inst, annotated)
        raise NoInstances(f"instance {instance_id} of {self._inner.endpoint_id} not found")

    async def close(self) -> None:
        await self._inner.close()


async def open_client(worker: Any) -> EndpointClient:
    """A client for ``worker``'s endpoint, closed when the worker shuts down."""
    ep = worker.endpoint_id
    inner = Client(ep.namespace, ep.component, ep.endpoint, store=worker.store)
    await inner.start()
    client = EndpointClient(inner)
    clients: list[EndpointClient] | None = getattr(worker, "_endpoint_clients", None)
    if clients is None:
        clients = []
        worker._endpoint_clients = clients
    clients.append(client)
    return client


async def close_all(worker: Any) -> None:
    for client in getattr(worker, "_endpoint_clients", None) or ():
        await client.close()
