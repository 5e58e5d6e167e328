"""Wiring KV-aware routing into a worker: one call at registration, one at teardown.

:func:`start_publishing` does what the stock worker does between
``component_metrics_dp_ranks()`` and the model card: asks the engine for its
KV event sources, builds a :class:`~dynamo_lite.kv.publisher.KvEventPublisher`
per ``PushSource`` and hands it over through ``on_ready`` (or, for a
``ZmqSource``, relays the engine's own ZMQ events into it), opens the event
plane (ZMQ PUB sockets by default, NATS with ``--event-plane nats`` /
``DYN_EVENT_PLANE=nats``), serves ``worker_kv_query_source_{id:x}`` for the
frontend's recovery queries and writes the discovery records the frontend
looks for: ``v1/event_channels/…/{kv-events,kv_metrics,active_sequences_events}/…``,
``v1/event_sources/…/kv-events/…`` and the query endpoint's instance record.
Load snapshots go out on ``kv_metrics`` when ``kv_used_blocks`` changes.

With ``enable_kv_routing=False`` nothing of this exists (as stock).
:meth:`KvRouting.close` removes the records and stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import DisaggregationMode
from ..discovery import DiscoveryError, EndpointId
from ..discovery import keys as dkeys
from ..engine import PushSource, ZmqSource

# The event plane (ZMQ/NATS transports, publisher, indexer, relay) is imported
# by start_publishing once KV routing is on: a worker with it off never loads it.
if TYPE_CHECKING:
    from ..transport.nats_plane import NatsSettings
    from .channels import EventChannel
    from .publisher import KvEventPublisher, LocalIndexer
    from .query import KvQueryEndpoint
    from .relay import ZmqRelay

logger = logging.getLogger(__name__)

__all__ = ["KvRouting", "event_plane_kind", "start_publishing"]

DEFAULT_BLOCK_SIZE = 16


def event_plane_kind(configured: str | None, from_env: str | None = None) -> str:
    """``--event-plane``, else ``DYN_EVENT_PLANE`` (``from_env``), else zmq."""
    plane = (configured or from_env or "zmq").strip().lower()
    if plane not in ("zmq", "nats"):
        raise ValueError(f"event plane {plane!r} is not supported (zmq or nats)")
    return plane


@dataclass
class _Source:
    """One KV event source with its publisher, local indexer, channel and query endpoint."""

    publisher: KvEventPublisher
    indexer: LocalIndexer
    channel: EventChannel
    query: KvQueryEndpoint
    relay: ZmqRelay | None = None


@dataclass
class KvRouting:
    """What :func:`start_publishing` set up; ``enabled`` False means nothing."""

    enabled: bool = False
    enable_local_indexer: bool = False
    sources: list[_Source] = field(default_factory=list)
    metrics_channel: EventChannel | None = None
    active_channel: EventChannel | None = None
    #: ``zmq`` or ``nats``: the two wrap ``active_sequences_events`` differently.
    plane: str = "zmq"
    channels: list[EventChannel] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    _worker: Any = None
    _nats: Any = None
    _loop: asyncio.AbstractEventLoop | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_used: dict[int, int] = field(default_factory=dict)
    _deferred: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def publishers(self) -> list[KvEventPublisher]:
        return [s.publisher for s in self.sources]

    def dropped_events(self) -> int:
        """KV events lost to a full queue or a slow event plane (a counter)."""
        n = sum(s.publisher.dropped for s in self.sources)
        for src in self.sources:
            transport: Any = src.channel.transport
            n += int(getattr(transport, "dropped", 0))
            server = getattr(transport, "server", None)
            n += int(getattr(server, "dropped", 0))
        return n

    def on_snapshot(self, rank: int, snapshot: Any) -> None:
        """Called from the engine's thread with each ``ComponentSnapshot``."""
        channel, loop = self.metrics_channel, self._loop
        if channel is None or loop is None or self._worker is None:
            return
        used = int(getattr(snapshot, "kv_used_blocks", 0) or 0)
        with self._lock:
            if self._last_used.get(rank) == used:
                return
            self._last_used[rank] = used
        from ..protocol import kv_events as kve

        payload = kve.kv_metrics_payload(self._worker.instance_id, rank, used)
        with contextlib.suppress(RuntimeError):  # loop closed: the worker is gone
            loop.call_soon_threadsafe(channel.publish, payload)

    def first_output(self, request_id: str) -> None:
        """A request streamed its first token: mark its prefill completed, as stock does."""
        channel = self.active_channel
        if channel is None or self._worker is None:
            return
        from ..protocol import kv_events as kve

        event = kve.active_sequence_event(request_id, self._worker.instance_id)
        channel.publish(event if self.plane == "nats" else {"events": [event]})

    async def register_recovery(self) -> None:
        """Write the query endpoint's instance and the ``event_sources`` record;
        stock writes them right after the model card."""
        deferred, self._deferred = self._deferred, []
        for key, record in deferred:
            await self._worker.store.put(key, dkeys.dumps(record))
            self.keys.append(key)

    async def close(self) -> None:
        """Stop publishing and remove every record (idempotent)."""
        if not self.enabled:
            return
        self.enabled = False
        worker = self._worker
        for src in self.sources:
            if src.relay is not None:
                await src.relay.close()
            src.publisher.shutdown()
            src.publisher.flush()
        for key in reversed(self.keys):
            try:
                await worker.store.delete(key)
            except (DiscoveryError, OSError) as exc:
                logger.debug("KV record delete failed key=%s error=%s", key, exc)
        self.keys.clear()
        # The request plane stops serving the query endpoints when it closes.
        for src in self.sources:
            await src.query.close()
        for ch in self.channels:
            await ch.transport.close()
        nc, self._nats = self._nats, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)


async def _connect_nats(settings: NatsSettings) -> Any:
    import nats

    from ..transport.nats_plane import NatsError

    async def on_error(exc: Exception) -> None:
        logger.warning("NATS (event plane): %s", exc)

    try:
        return await asyncio.wait_for(
            nats.connect(error_cb=on_error, **settings.connect_options()),
            settings.connect_timeout + 2,
        )
    except Exception as exc:
        raise NatsError(f"event plane: cannot connect to NATS: {exc!r}") from exc


async def start_publishing(worker: Any, ranks: list[int]) -> KvRouting:
    """Set up KV events, load metrics and the local indexer for ``worker``.

    ``worker`` is a :class:`dynamo_lite.worker.Worker` after ``start()``: its
    ``engine``, ``config``, ``instance_id``, ``engine_config``, ``store``,
    ``server``/``advertised`` (TCP request plane) or ``nats`` are used.
    """
    cfg = worker.config
    env = worker.env_settings
    engine = worker.engine
    routing = KvRouting(_worker=worker, _loop=asyncio.get_running_loop())
    if not cfg.enable_kv_routing:
        return routing
    sources = list(await engine.kv_event_sources()) if hasattr(engine, "kv_event_sources") else []
    if not sources and not ranks:
        return routing
    from ..netaddr import bind_and_advertise
    from ..protocol import kv_events as kve
    from .channels import (
        EventChannel,
        EventTransport,
        NatsEventTransport,
        ZmqEventTransport,
        scope,
        source_key,
        subject_prefix,
    )
    from .publisher import KvEventPublisher, LocalIndexer
    from .query import KvQueryEndpoint, query_endpoint_name
    from .relay import ZmqRelay

    routing.enabled = True
    plane = event_plane_kind(cfg.event_plane, env.event_plane)
    state_ep = EndpointId(cfg.namespace, cfg.component, cfg.kv_state_endpoint or cfg.endpoint)
    instance_id: int = worker.instance_id
    if plane == "nats":
        routing._nats = await _connect_nats(env.nats)
    # The same rule as the request plane: bound to, and advertised as, the chosen
    # address (an interface name or a wildcard in the variable work as there).
    bind_host, advertise = bind_and_advertise(env.event_plane_host, "DYN_EVENT_PLANE_HOST")

    async def new_channel(topic: str) -> EventChannel:
        transport: EventTransport
        if plane == "nats":
            transport = NatsEventTransport(routing._nats, subject_prefix(state_ep))
        else:
            zt = ZmqEventTransport(bind_host, advertise)
            await zt.start()
            transport = zt
        ch = EventChannel(state_ep, topic, transport)
        routing.channels.append(ch)
        return ch

    async def put(key: str, record: dict[str, Any]) -> None:
        await worker.store.put(key, dkeys.dumps(record))
        routing.keys.append(key)

    llm = getattr(worker.engine_config, "llm", None)
    block_size = int(getattr(llm, "kv_cache_block_size", None) or DEFAULT_BLOCK_SIZE)
    mode = cfg.disaggregation_mode
    # Stock cards say true for every role but encode (decode included).
    local_indexer = bool(cfg.enable_local_indexer) and mode is not DisaggregationMode.ENCODE
    loop = asyncio.get_running_loop()
    try:
        for source in sources:
            if not isinstance(source, (PushSource, ZmqSource)):
                continue
            channel = await new_channel(kve.KV_EVENTS)
            indexer = LocalIndexer()

            def emit(
                revs: list[dict[str, Any]], ch: EventChannel = channel, ix: LocalIndexer = indexer
            ) -> None:
                for rev in revs:
                    ix.record(rev)
                ch.publish(revs)

            publisher = KvEventPublisher(
                worker_id=instance_id,
                kv_block_size=block_size,
                dp_rank=source.dp_rank,
                emit=emit,
                loop=loop,
            )
            query = KvQueryEndpoint(
                indexer, instance_id, source.dp_rank, worker.endpoint.call_home_ssl
            )
            src = _Source(publisher, indexer, channel, query)
            routing.sources.append(src)
            await put(channel.key, channel.record())
            qep = EndpointId(
                state_ep.namespace, state_ep.component, query_endpoint_name(channel.publisher_id)
            )
            # Served on the worker's own request plane (TCP or NATS), like the endpoint.
            transport = await worker.plane.serve(worker._tg, qep, instance_id, query)
            qrecord = dkeys.instance_record(
                qep, instance_id, transport, worker.settings.request_codec
            )
            if local_indexer:
                routing._deferred.append((qep.instance_key(instance_id), qrecord))
                routing._deferred.append(
                    (
                        source_key(state_ep, kve.KV_EVENTS, channel.publisher_id),
                        {
                            "type": "EventSource",
                            "scope": scope(state_ep),
                            "topic": kve.KV_EVENTS,
                            "publisher_id": channel.publisher_id,
                            "metadata": {
                                "kv_state_endpoint": scope(state_ep)["endpoint"],
                                "worker": {"worker_id": instance_id, "dp_rank": source.dp_rank},
                                "publisher_id": channel.publisher_id,
                                "recovery_target": qrecord,
                            },
                        },
                    )
                )
            if isinstance(source, PushSource):
                source.on_ready(publisher)
            else:
                src.relay = ZmqRelay(source.endpoint, source.topic, publisher, block_size)
                src.relay.start()
        routing.enable_local_indexer = local_indexer and bool(routing.sources)
        routing.metrics_channel = await new_channel(kve.KV_METRICS)
        await put(routing.metrics_channel.key, routing.metrics_channel.record())
        active = routing.active_channel = await new_channel(kve.ACTIVE_SEQUENCES)
        await put(active.key, active.record())
        routing.plane = plane
    except BaseException:
        await routing.close()
        raise
    logger.debug(
        "KV routing on: %d publisher(s), %s event plane, local indexer %s",
        len(routing.sources),
        plane,
        routing.enable_local_indexer,
    )
    return routing
