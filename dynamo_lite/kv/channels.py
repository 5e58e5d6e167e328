"""Event-plane channels: one publisher per topic, on ZMQ or NATS.

A channel owns a random 53-bit ``publisher_id`` (the stock ids are below
2**53) and a ``sequence`` counter from 0; :meth:`EventChannel.publish` wraps
a payload in the envelope (:mod:`dynamo_lite.protocol.kv_events`) and hands it
to the transport without blocking. Every channel is advertised in
``v1/event_channels/namespace/{ns}/component/{c}/endpoint/{e}/topic/{topic}/{id:x}``.

All methods run on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from typing import Any, Protocol

from ..discovery import EndpointId
from ..protocol import kv_events as kve
from ..transport.zmq_plane import ZmqPubServer

logger = logging.getLogger(__name__)

__all__ = [
    "EventChannel",
    "NatsEventTransport",
    "ZmqEventTransport",
    "channel_key",
    "channel_record",
    "new_publisher_id",
    "scope",
    "subject_prefix",
]


def new_publisher_id() -> int:
    # os.urandom, not secrets (which loads hmac and OpenSSL's hashlib).
    return (int.from_bytes(os.urandom(7), "big") >> 3) or 1


def scope(ep: EndpointId) -> dict[str, Any]:
    return {
        "kind": "endpoint",
        "endpoint": {"namespace": ep.namespace, "component": ep.component, "name": ep.endpoint},
    }


def scope_path(ep: EndpointId, topic: str) -> str:
    return f"namespace/{ep.namespace}/component/{ep.component}/endpoint/{ep.endpoint}/topic/{topic}"


def channel_key(ep: EndpointId, topic: str, publisher_id: int) -> str:
    return f"v1/event_channels/{scope_path(ep, topic)}/{publisher_id:x}"


def source_key(ep: EndpointId, topic: str, publisher_id: int) -> str:
    return f"v1/event_sources/{scope_path(ep, topic)}/{publisher_id:x}"


def subject_prefix(ep: EndpointId) -> str:
    return f"namespace.{ep.namespace}.component.{ep.component}.endpoint.{ep.endpoint}"


class EventTransport(Protocol):
    def send(self, topic: str, publisher_id: int, sequence: int, envelope: bytes) -> None: ...

    def wants(self, topic: str) -> bool:
        """False when nobody would receive ``topic`` now (a message may be skipped)."""
        ...

    def descriptor(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def channel_record(
    ep: EndpointId, topic: str, publisher_id: int, transport: EventTransport
) -> dict[str, Any]:
    return {
        "type": "EventChannel",
        "scope": scope(ep),
        "topic": topic,
        "instance_id": publisher_id,
        "transport": transport.descriptor(),
    }


class ZmqEventTransport:
    """One bound PUB socket per channel, as stock."""

    def __init__(self, bind_host: str, advertise_host: str) -> None:
        self.server = ZmqPubServer(bind_host)
        self.advertise_host = advertise_host

    async def start(self) -> None:
        await self.server.start()

    def send(self, topic: str, publisher_id: int, sequence: int, envelope: bytes) -> None:
        self.server.send(kve.encode_zmq_message(topic, publisher_id, sequence, envelope))

    def wants(self, topic: str) -> bool:
        # A PUB socket drops what no subscriber asked for: such a message need
        # not even be encoded.
        raw = topic.encode()
        return any(sub.wants(raw) for sub in self.server.subscribers)

    def descriptor(self) -> dict[str, Any]:
        host = self.advertise_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return {"kind": "Zmq", "config": {"endpoint": f"tcp://{host}:{self.server.port}"}}

    async def close(self) -> None:
        await self.server.close()


class NatsEventTransport:
    """Publishes envelopes on ``{subject_prefix}.{topic}`` from a sender task,
    so a slow NATS connection never blocks the caller; the backlog is bounded."""

    def __init__(self, nc: Any, prefix: str, max_backlog: int = 10_000) -> None:
        self.nc = nc
        self.prefix = prefix
        self.dropped = 0
        self._backlog: collections.deque[tuple[str, bytes]] = collections.deque()
        self._max = max_backlog
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kv-nats-sender")

    def wants(self, topic: str) -> bool:
        return True  # the NATS server knows the interest; always publish

    def send(self, topic: str, publisher_id: int, sequence: int, envelope: bytes) -> None:
        if len(self._backlog) >= self._max:
            self.dropped += 1
            return
        self._backlog.append((f"{self.prefix}.{topic}", envelope))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._backlog:
                subject, body = self._backlog.popleft()
                try:
                    await self.nc.publish(subject, body)
                except Exception as exc:
                    self.dropped += 1
                    logger.debug("NATS event publish failed: %r", exc)

    def descriptor(self) -> dict[str, Any]:
        return {"kind": "Nats", "config": {"subject_prefix": self.prefix}}

    async def close(self) -> None:
        # Flush what is queued, briefly, then stop.
        for _ in range(100):
            if not self._backlog:
                break
            await asyncio.sleep(0.01)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class EventChannel:
    """One topic's publisher: envelope, sequence, transport."""

    def __init__(
        self, ep: EndpointId, topic: str, transport: EventTransport, publisher_id: int | None = None
    ) -> None:
        self.ep = ep
        self.topic = topic
        self.transport = transport
        self.publisher_id = publisher_id if publisher_id is not None else new_publisher_id()
        self.sequence = 0

    @property
    def key(self) -> str:
        return channel_key(self.ep, self.topic, self.publisher_id)

    def record(self) -> dict[str, Any]:
        return channel_record(self.ep, self.topic, self.publisher_id, self.transport)

    def publish(self, payload: Any) -> None:
        seq = self.sequence
        self.sequence += 1
        if not self.transport.wants(self.topic):
            return  # dropped unread anyway; the sequence still counts it, as stock's does
        env = kve.encode_envelope(
            self.publisher_id, seq, int(time.time() * 1000), self.topic, payload
        )
        self.transport.send(self.topic, self.publisher_id, seq, env)
