"""The ``worker_kv_query_source_{publisher_id:x}`` endpoint.

A frontend that starts (or restarts) after the worker asks this endpoint for
the worker's cached blocks (``start_event_id`` nil → ``TreeDump``), and one
that detects a gap in ``event_id`` asks for a replay (``Events``). The answer
is one response item ``{"data": {...}, "complete_final": false}`` then
``{"complete_final": true}`` and the sentinel, over the usual call-home
response stream (verified in ``tests/vectors/kv/file_query_source.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from ..protocol import codec as wire_codec
from ..protocol import control, items, twopart
from ..protocol import request_plane as rp
from ..protocol.errors import ProtocolError
from ..transport.response_stream import open_stream
from .publisher import LocalIndexer

logger = logging.getLogger(__name__)

__all__ = ["KvQueryEndpoint", "query_endpoint_name"]

CLOSE_WAIT = 5.0


def query_endpoint_name(publisher_id: int) -> str:
    return f"worker_kv_query_source_{publisher_id:x}"


class KvQueryEndpoint:
    """Serves recovery queries from one publisher's :class:`LocalIndexer`."""

    def __init__(
        self,
        indexer: LocalIndexer,
        worker_id: int,
        dp_rank: int = 0,
        call_home_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.indexer = indexer
        self.worker_id = worker_id
        self.dp_rank = dp_rank
        self.call_home_ssl = call_home_ssl
        self.served = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, payload: bytes, headers: dict[str, str]) -> str | None:
        del headers
        try:
            message = twopart.decode(payload)
            ctl = control.parse_request_control(message.header)
            codec = wire_codec.check_codec(ctl.payload_codec)
            address = ctl.info.host_port()
            request = wire_codec.decode(codec, message.body)
            if not isinstance(request, dict):
                raise ProtocolError("query body is not a map")
        except ProtocolError as exc:
            return rp.UNAVAILABLE_PREFIX + f"malformed KV query: {exc}"
        # Answer from the state at admission time.
        answer = self.indexer.answer(request, self.worker_id, self.dp_rank)
        ((kind, value),) = answer["data"].items()
        logger.info(
            "KV query answered: %s with %d event(s) up to event %d",
            kind,
            len(value["events"]),
            value["last_event_id"],
        )
        body = twopart.encode_body_only(wire_codec.encode(codec, answer))
        end = items.COMPLETE_FINAL_FRAME[codec] + control.SENTINEL_FRAME
        task = asyncio.get_running_loop().create_task(
            self._reply(address, ctl.info.subject, body + end), name="kv-query-reply"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.served += 1
        return None

    async def _reply(self, address: tuple[str, int], subject: str, frames: bytes) -> None:
        try:
            stream = await open_stream(
                address, subject, lambda _signal: None, ssl_context=self.call_home_ssl
            )
        except (OSError, TimeoutError) as exc:
            logger.warning("KV query: cannot call home to %s:%d: %s", *address, exc)
            return
        try:
            stream.write_final(frames)
            await stream.wait_closed(CLOSE_WAIT)
        finally:
            stream.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
