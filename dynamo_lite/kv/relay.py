"""``ZmqSource``: relay an engine's own ZMQ KV events (vLLM / SGLang format).

Theory of operation. Such an engine binds a ZMQ PUB socket and sends
3-frame messages: topic, a sequence number (u64 big-endian) and a msgpack
*event batch* ``[ts, [event, …], dp_rank?]``. An event is either an array
tagged by its first element (msgspec's ``array_like`` + ``tag`` encoding, what
vLLM sends) — ``["BlockStored", block_hashes, parent_block_hash, token_ids,
block_size, lora_id, …]``, ``["BlockRemoved", block_hashes, …]``,
``["AllBlocksCleared"]`` — or the same as a map with a ``type`` key. The
worker connects a SUB socket (:mod:`dynamo_lite.protocol.zmtp`), subscribes to
the source's topic, converts each event to a ``publish_*`` call on the
source's :class:`~dynamo_lite.kv.publisher.KvEventPublisher` and reconnects
with a backoff if the engine's socket goes away. Undecodable messages are
dropped and counted; they never stop the relay.

Checked against the stock 1.6.1 relay fed the same batches
(``tests/vectors/kv/relay_inputs.json`` → ``relay_outputs.json``): one
message per batch, events numbered on, hashes as u64, short blocks dropped,
map-form events accepted, batches without ``dp_rank`` refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from ..protocol import kv_events as kve
from ..protocol import zmtp
from ..protocol.errors import ProtocolError
from .publisher import KvEventPublisher
from .xxh3 import block_tokens_hash

logger = logging.getLogger(__name__)

__all__ = ["ZmqRelay", "apply_batch", "batch_events", "parse_endpoint"]

_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"only tcp:// ZMQ endpoints can be relayed, not {endpoint!r}")
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    host = host.strip("[]")
    if host in ("*", "0.0.0.0", ""):
        host = "127.0.0.1"
    return host, int(port)


def _as_map(event: Any) -> Mapping[str, Any]:
    if isinstance(event, Mapping):
        return event
    if isinstance(event, Sequence) and event and isinstance(event[0], str):
        kind = event[0]
        if kind == "BlockStored":
            return {"type": kind, **dict(zip(_STORED_FIELDS, event[1:], strict=False))}
        if kind == "BlockRemoved":
            return {"type": kind, "block_hashes": event[1] if len(event) > 1 else []}
        return {"type": kind}
    raise ValueError("an event is a tagged array or a map with a type")


def _stored(ev: Mapping[str, Any], block_size: int) -> Any:
    hashes = [int(h) for h in ev.get("block_hashes") or []]
    tokens = [int(t) for t in ev.get("token_ids") or []]
    size = int(ev.get("block_size") or block_size)
    # As stock: only full blocks are announced (a short tail is dropped with a
    # warning there), each paired with the next hash.
    full = min(len(hashes), len(tokens) // size) if size > 0 else 0
    blocks = [
        kve.stored_block(hashes[i], block_tokens_hash(tokens[i * size : (i + 1) * size]))
        for i in range(full)
    ]
    parent = ev.get("parent_block_hash")
    return kve.stored_data(blocks, None if parent is None else int(parent))


def batch_events(batch: Any, block_size: int) -> list[Any]:
    """The event ``data`` values of one decoded batch ``[ts, [events], dp_rank]``.

    The 1.6.1 relay refuses a batch without its third element ("failed to
    decode KV event batch"), and so does this one.
    """
    if not isinstance(batch, Sequence) or len(batch) != 3 or not isinstance(batch[1], Sequence):
        raise ValueError("an event batch is [ts, [events], dp_rank]")
    datas: list[Any] = []
    for raw in batch[1]:
        ev = _as_map(raw)
        kind = ev.get("type")
        if kind == "BlockStored":
            datas.append(_stored(ev, block_size))
        elif kind == "BlockRemoved":
            datas.append(kve.removed_data([int(h) for h in ev.get("block_hashes") or []]))
        elif kind == "AllBlocksCleared":
            datas.append(kve.CLEARED_DATA)
        else:
            raise ValueError(f"unknown KV event type {kind!r}")
    return datas


def apply_batch(publisher: KvEventPublisher, batch: Any, block_size: int) -> int:
    """Publish one batch as one message (as stock); returns how many events it carried."""
    datas = batch_events(batch, block_size)
    publisher.publish_events(datas)
    return len(datas)


class ZmqRelay:
    """Subscribes to one engine PUB socket and feeds a publisher."""

    def __init__(
        self,
        endpoint: str,
        topic: str,
        publisher: KvEventPublisher,
        block_size: int,
        *,
        retry: float = 0.5,
    ) -> None:
        self.host, self.port = parse_endpoint(endpoint)
        self.topic = topic.encode()
        self.publisher = publisher
        self.block_size = block_size
        self.retry = retry
        self.relayed = 0
        self.bad = 0
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kv-zmq-relay")

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except (OSError, ProtocolError, asyncio.IncompleteReadError) as exc:
                logger.debug("KV relay %s:%d: %s; reconnecting", self.host, self.port, exc)
            self.connected.clear()
            await asyncio.sleep(self.retry)

    async def _session(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = zmtp.ZmtpConnection(b"SUB")
        try:
            writer.write(conn.start())
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                events = conn.feed(data)
                out = conn.data_to_send()
                for ev in events:
                    if isinstance(ev, zmtp.Ready):
                        out += conn.send_subscribe(self.topic)
                        self.connected.set()
                    elif isinstance(ev, zmtp.Message):
                        self._on_message(ev.parts)
                if out:
                    writer.write(out)
                    await writer.drain()
        finally:
            writer.close()

    def _on_message(self, parts: list[bytes]) -> None:
        try:
            payload = msgpack.unpackb(parts[-1], raw=False, strict_map_key=False)
            self.relayed += apply_batch(self.publisher, payload, self.block_size)
        except Exception as exc:
            self.bad += 1
            logger.debug("KV relay dropped an undecodable message: %r", exc)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
