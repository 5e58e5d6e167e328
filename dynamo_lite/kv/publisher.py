"""The engine-facing KV event publisher and the worker-local indexer.

Theory of operation. An engine receives a :class:`KvEventPublisher` through
``PushSource.on_ready`` and calls ``publish_stored`` / ``publish_removed`` /
``publish_batch`` from whatever thread it likes (the stock sample uses its
own thread). Each call's blocks are hashed in the caller's thread (with the
1.6.1 publisher's rules: see ``_stored_data``), then appended to a bounded
queue; a full queue drops the call and counts it (the engine is never
blocked). The worker's event loop drains the
queue, gives every event the next ``event_id`` (from 1, so there are no gaps
even when calls were dropped), records it in the :class:`LocalIndexer` and
publishes one ``kv-events`` message per call (a list of router events), as the
stock publisher does with its default batching (a flush at each call).

The :class:`LocalIndexer` answers the frontend's ``worker_kv_query_source``
queries: a full dump (``TreeDump``) when a frontend (re)starts, or a replay
from an event id (``Events``) when it saw a gap. It keeps the event log while
that is small, and otherwise the live blocks, from which it rebuilds a dump.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..protocol import kv_events as kve
from .xxh3 import BLOCK_HASH_SEED, block_hash_seed, block_tokens_hash

logger = logging.getLogger(__name__)

__all__ = ["MAX_PENDING", "KvEventPublisher", "LocalIndexer"]

#: Publish calls waiting for the event loop; more are dropped (and counted).
MAX_PENDING = 10_000
#: Events kept verbatim for replays; beyond it, dumps are rebuilt from live blocks.
MAX_LOG = 50_000

_Pending = list[Any]  # event ``data`` values of one publish call


def _stored_data(
    token_ids: Sequence[int],
    num_block_tokens: Sequence[int],
    block_hashes: Sequence[int],
    parent_hash: int | None,
    kv_block_size: int,
    seed: int = BLOCK_HASH_SEED,
) -> Any:
    """One ``stored`` event, as the 1.6.1 publisher builds it (captured in
    ``tests/vectors/kv/push_*``): blocks pair ``num_block_tokens`` with
    ``block_hashes``; a block whose size is not ``kv_block_size``, or that runs
    past the tokens, is dropped (the event stays, maybe with no blocks);
    tokens past the last block are ignored; nothing raises."""
    blocks = []
    pos = 0
    for n, h in zip(num_block_tokens, block_hashes, strict=False):
        tokens = token_ids[pos : pos + n]
        pos += n
        if n != kv_block_size or len(tokens) != n:
            continue
        blocks.append(kve.stored_block(h, block_tokens_hash(tokens, seed)))
    return kve.stored_data(blocks, parent_hash)


def _coalesce(datas: list[Any]) -> list[Any]:
    """``publish_batch``: a stored event whose parent is the previous stored
    event's last block joins it (as stock); everything else keeps its place."""
    out: list[Any] = []
    for data in datas:
        prev = out[-1] if out else None
        if (
            isinstance(prev, dict)
            and "stored" in prev
            and isinstance(data, dict)
            and "stored" in data
            and prev["stored"]["blocks"]
            and data["stored"]["parent_hash"] == prev["stored"]["blocks"][-1]["block_hash"]
        ):
            prev["stored"]["blocks"].extend(data["stored"]["blocks"])
            continue
        out.append(data)
    return out


class LocalIndexer:
    """What one publisher announced, for recovery queries."""

    def __init__(self, max_log: int = MAX_LOG) -> None:
        self.max_log = max_log
        self.log: collections.deque[dict[str, Any]] = collections.deque()
        self.last_event_id = 0
        self.trimmed = False
        # block_hash -> (parent_hash, stored block map), in store order.
        self.blocks: dict[int, tuple[int | None, dict[str, Any]]] = {}

    def record(self, rev: dict[str, Any]) -> None:
        ev = rev["event"]
        self.last_event_id = int(ev["event_id"])
        data = ev["data"]
        if isinstance(data, dict) and "stored" in data:
            parent = data["stored"]["parent_hash"]
            for block in data["stored"]["blocks"]:
                self.blocks[block["block_hash"]] = (parent, block)
                parent = block["block_hash"]
        elif isinstance(data, dict) and "removed" in data:
            for h in data["removed"]["block_hashes"]:
                self.blocks.pop(h, None)
        elif data == kve.CLEARED_DATA:
            self.blocks.clear()
        self.log.append(rev)
        if len(self.log) > self.max_log:
            self.log.popleft()
            self.trimmed = True

    def _dump_events(self, worker_id: int, dp_rank: int) -> list[dict[str, Any]]:
        if not self.trimmed:
            return list(self.log)
        # One stored event per block, parents first (dict order is store order).
        return [
            kve.router_event(
                worker_id, self.last_event_id, kve.stored_data([block], parent), dp_rank
            )
            for parent, block in self.blocks.values()
        ]

    def answer(self, request: Mapping[str, Any], worker_id: int, dp_rank: int) -> dict[str, Any]:
        start = request.get("start_event_id")
        if start is None or (self.log and int(start) < int(self.log[0]["event"]["event_id"])):
            events = self._dump_events(worker_id, dp_rank)
            return kve.query_response_item("TreeDump", events, self.last_event_id)
        events = [e for e in self.log if int(e["event"]["event_id"]) >= int(start)]
        return kve.query_response_item("Events", events, self.last_event_id)


class KvEventPublisher:
    """The stock ``KvEventPublisher`` surface, safe to call from any thread."""

    def __init__(
        self,
        *,
        worker_id: int,
        kv_block_size: int,
        dp_rank: int,
        emit: Callable[[list[dict[str, Any]]], None],
        loop: asyncio.AbstractEventLoop,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.worker_id = worker_id
        self.kv_block_size = kv_block_size
        self.dp_rank = dp_rank
        self.dropped = 0
        self.published = 0
        self._emit = emit
        self._loop = loop
        self._max = max_pending
        self._lock = threading.Lock()
        #: Calls from the loop's own thread schedule the drain without a wake-up write.
        self._loop_thread = threading.get_ident()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._scheduled = False
        self._closed = False
        self._next_id = 1

    # --- the engine's side (any thread) ------------------------------------------
    def publish_stored(
        self,
        token_ids: Sequence[int],
        num_block_tokens: Sequence[int],
        block_hashes: Sequence[int],
        parent_hash: int | None = None,
        block_mm_infos: Sequence[Any] | None = None,
        lora_name: str | None = None,
        is_eagle: bool | None = None,
        cache_salt: str | None = None,
    ) -> None:
        # is_eagle and multimodal infos are accepted but not hashed in (not captured).
        del is_eagle, block_mm_infos
        seed = block_hash_seed(lora_name, cache_salt)
        self._enqueue(
            [
                _stored_data(
                    token_ids, num_block_tokens, block_hashes, parent_hash, self.kv_block_size, seed
                )
            ]
        )

    def publish_removed(self, block_hashes: Sequence[int]) -> None:
        # Stock sends nothing (and uses no event id) for an empty removal.
        if block_hashes:
            self._enqueue([kve.removed_data(list(block_hashes))])

    def publish_cleared(self) -> None:
        self._enqueue([kve.CLEARED_DATA])

    def publish_events(self, datas: Sequence[Any]) -> None:
        """Already-built event ``data`` values, published as one message (the relay)."""
        if datas:
            self._enqueue(list(datas))

    def publish_batch(self, events: Sequence[Mapping[str, Any]]) -> None:
        """An ordered list of ``{"type": "stored", …}`` / ``{"type": "removed", …}``
        dicts, validated as a whole before any is queued."""
        datas: list[Any] = []
        for i, ev in enumerate(events):
            kind = ev.get("type")
            if kind == "stored":
                seed = block_hash_seed(ev.get("lora_name"), ev.get("cache_salt"))
                datas.append(
                    _stored_data(
                        ev["token_ids"],
                        ev["num_block_tokens"],
                        ev["block_hashes"],
                        ev.get("parent_hash"),
                        self.kv_block_size,
                        seed,
                    )
                )
            elif kind == "removed":
                if ev["block_hashes"]:
                    datas.append(kve.removed_data(list(ev["block_hashes"])))
            else:
                raise ValueError(f"event {i}: type must be 'stored' or 'removed', not {kind!r}")
        if datas:
            self._enqueue(_coalesce(datas))

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True

    def _enqueue(self, datas: _Pending) -> None:
        with self._lock:
            if self._closed:
                return
            if len(self._pending) >= self._max:
                self.dropped += 1
                return
            self._pending.append(datas)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # loop closed: the worker is gone
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._drain)
            else:
                self._loop.call_soon_threadsafe(self._drain)

    # --- the worker's side (event loop) ----------------------------------------------
    def _drain(self) -> None:
        with self._lock:
            batches = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        for datas in batches:
            revs = []
            for data in datas:
                revs.append(kve.router_event(self.worker_id, self._next_id, data, self.dp_rank))
                self._next_id += 1
            self.published += len(revs)
            try:
                self._emit(revs)
            except Exception:
                logger.exception("KV event publish failed")

    def flush(self) -> None:
        """Drain now (on the loop thread), e.g. before the worker stops."""
        self._drain()
