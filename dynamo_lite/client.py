"""A pure-Python client for Dynamo workers (dynamo_lite's or stock ones).

It plays the frontend's part of the wire protocol: it discovers instances
(file, etcd or in-memory store), keeps one persistent request-plane
connection per worker, sends request frames, runs the response-stream
server workers call home to, and yields each response item::

    async with Client("dynamo", "sample", "generate", discovery_backend="file") as client:
        stream = await client.generate({"token_ids": [1, 2, 3],
                                        "stop_conditions": {"max_tokens": 4}})
        async for output in stream:
            print(output["token_ids"], output.get("finish_reason"))

``await stream.cancel()`` sends ``"kill"`` exactly as the frontend does when
its HTTP client disconnects.

The call-home address workers dial is ``response_host``, else
``DYN_TCP_RESPONSE_STREAM_HOST``, else the address the stock frontend would
choose on this host (:mod:`dynamo_lite.netaddr`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from .config import RuntimeSettings, Settings, as_settings
from .discovery import EndpointId, KvStore, open_store
from .netaddr import bind_and_advertise, format_host_port
from .protocol import codec as wire_codec
from .protocol import control, items, twopart
from .protocol import request_plane as rp
from .protocol.codec import Codec
from .protocol.errors import ProtocolError
from .transport.tls import TcpTls

logger = logging.getLogger(__name__)

__all__ = [
    "Client",
    "ClientError",
    "Instance",
    "NoInstances",
    "Rejected",
    "RemoteError",
    "ResponseStream",
]


class ClientError(Exception):
    """The request could not be delivered or its stream broke."""


class NoInstances(ClientError):
    pass


class Rejected(ClientError):
    """The worker refused the request in its ack (overloaded / unavailable)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply

    @property
    def overloaded(self) -> bool:
        return self.reply.startswith(rp.OVERLOADED_PREFIX)


class RemoteError(ClientError):
    """The worker ended the stream with a typed error item."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        self.error_class = str(error.get("class", "Internal"))
        self.reason = str(error.get("reason", ""))
        public = error.get("public")
        self.public = public.get("message") if isinstance(public, dict) else None
        self.message = str(error.get("message", ""))
        super().__init__(f"{self.error_class} ({self.reason}): {self.message}")


@dataclass(frozen=True)
class Instance:
    instance_id: int
    host: str
    port: int
    path: str
    codec: Codec

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Instance | None:
        transport = record.get("transport") or {}
        tcp = transport.get("tcp") if isinstance(transport, dict) else None
        if not isinstance(tcp, str) or "/" not in tcp:
            return None
        address, _, path = tcp.partition("/")
        host, _, port = address.rpartition(":")
        codec_name = record.get("request_plane_codec") or "json"
        return cls(
            int(record["instance_id"]),
            host.strip("[]"),
            int(port),
            path,
            "msgpack" if codec_name == "msgpack" else "json",
        )


# --- request plane -------------------------------------------------------------


class _RequestConnection(asyncio.Protocol):
    """One persistent request-plane connection; replies pair with frames FIFO."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._decoder = rp.ReplyDecoder()
        self._waiters: deque[asyncio.Future[bytes]] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._decoder.feed(data)
        except ProtocolError as exc:
            self._fail(ClientError(f"bad reply stream: {exc}"))
            return
        for reply in replies:
            if self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ClientError(f"request-plane connection lost: {exc}"))

    def _fail(self, exc: Exception) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def send(self, frame: bytes) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self.closed or self.transport is None:
            fut.set_exception(ClientError("request-plane connection closed"))
            return fut
        self._waiters.append(fut)
        self.transport.write(frame)
        return fut


# --- response streams ------------------------------------------------------------


class ResponseStream:
    """The items of one request, as an async iterator of output dicts.

    The reading end of a call-home stream; the worker's writing end is
    :class:`dynamo_lite.transport.response_stream.ResponseSender`.

    Raises :class:`RemoteError` for an error item and :class:`ClientError`
    when the stream ends without ``complete_final``.
    """

    def __init__(self, request_id: str, codec: Codec, client: Client) -> None:
        self.request_id = request_id
        self.codec = codec
        self._client = client
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._conn: _CallHome | None = None
        self.connected = asyncio.get_running_loop().create_future()
        self.prologue_error: str | None = None
        self.complete = False
        self.sentinel = False
        self.cancelled = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    # called by the call-home connection
    def _attach(self, conn: _CallHome) -> None:
        self._conn = conn
        if not self.connected.done():
            self.connected.set_result(None)

    def _push(self, kind: str, value: Any = None) -> None:
        self._queue.put_nowait((kind, value))

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        timeout = self._client.item_timeout
        while True:
            async with asyncio.timeout(timeout):
                kind, value = await self._queue.get()
            if kind == "prologue":
                if value is not None:
                    self.prologue_error = value
                    raise ClientError(f"worker failed the request in its prologue: {value}")
                continue
            if kind == "item":
                item: items.StreamItem = value
                if item.complete_final:
                    self.complete = True
                    continue
                if item.error is not None:
                    self._close()
                    raise RemoteError(item.error)
                assert item.output is not None
                reason = item.output.get("finish_reason")
                if reason is not None:
                    self.finish_reason = reason
                    if item.output.get("completion_usage") is not None:
                        self.usage = item.output["completion_usage"]
                yield item.output
                continue
            if kind == "sentinel":
                self.sentinel = True
                self._close()
                if not self.complete:
                    raise ClientError("stream ended (sentinel) without complete_final")
                return
            if kind == "closed":
                if self.complete or self.cancelled:
                    return
                raise ClientError("response stream closed before completion")
            if kind == "error":
                raise ClientError(str(value))

    async def collect(self) -> list[dict[str, Any]]:
        return [out async for out in self]

    async def cancel(self, message: control.StreamControl = control.StreamControl.KILL) -> None:
        """Send ``"kill"`` (or ``"stop"``) and close, as the frontend does."""
        self.cancelled = True
        if self._conn is None:
            try:
                async with asyncio.timeout(self._client.item_timeout):
                    await asyncio.shield(self.connected)
            except TimeoutError:
                return
        if self._conn is not None:
            frame = (
                control.KILL_FRAME if message is control.StreamControl.KILL else control.STOP_FRAME
            )
            self._conn.write(frame)
            self._conn.close(reset=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close(reset=True)


class _CallHome(asyncio.Protocol):
    """A worker's call-home connection to the client's response server."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._decoder = twopart.TwoPartDecoder()
        self.transport: asyncio.Transport | None = None
        self.stream: ResponseStream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            self._error(f"garbage on response stream: {exc}")
            return
        for msg in messages:
            stream = self.stream
            try:
                if stream is None:
                    hs = control.parse_header_frame(msg.header) if msg.header else None
                    if not isinstance(hs, control.Handshake):
                        self._error("response stream did not start with a handshake")
                        return
                    stream = self._client._subjects.pop(hs.subject, None)
                    if stream is None:
                        # Unknown subject (cancelled or timed out): reset, like the frontend.
                        self.close(reset=True)
                        return
                    self.stream = stream
                    stream._attach(self)
                elif msg.body:
                    stream._push("item", items.parse_item(stream.codec, msg.body))
                elif msg.header:
                    frame = control.parse_header_frame(msg.header)
                    if isinstance(frame, control.Prologue):
                        stream._push("prologue", frame.error)
                    elif frame is control.StreamControl.SENTINEL:
                        stream._push("sentinel")
            except ProtocolError as exc:
                self._error(f"bad response-stream frame: {exc}")
                return

    def _error(self, message: str) -> None:
        if self.stream is not None:
            self.stream._push("error", message)
        self.close(reset=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream._push("closed")
        self.transport = None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self, reset: bool = False) -> None:
        transport = self.transport
        if transport is None:
            return
        if reset:
            # SO_LINGER 0: close with RST like the stock frontend, so the
            # worker's socket does not linger in TIME_WAIT.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
        transport.close()


# --- the client ---------------------------------------------------------------------


class Client:
    """Discover instances of one endpoint and send them requests."""

    def __init__(
        self,
        namespace: str,
        component: str,
        endpoint: str = "generate",
        *,
        discovery_backend: str = "etcd",
        store: KvStore | None = None,
        settings: Settings | RuntimeSettings | None = None,
        response_host: str | None = None,
        ack_timeout: float = 5.0,
        item_timeout: float | None = 60.0,
        tls: TcpTls | None = None,
    ) -> None:
        # Read from the process environment unless given (config.Settings).
        env = as_settings(settings)
        # Same variables as the frontend: DYN_TCP_TLS_* (see transport/tls.py).
        self.tls = tls if tls is not None else env.tcp_tls
        self.endpoint_id = EndpointId(namespace, component, endpoint)
        self._store = (
            store
            if store is not None
            else open_store(discovery_backend, env.runtime, env.discovery)
        )
        self._own_store = store is None
        # As the stock frontend: DYN_TCP_RESPONSE_STREAM_HOST, else the chosen address.
        self._bind_host, self.response_host = bind_and_advertise(
            response_host or env.response_stream_host,
            "DYN_TCP_RESPONSE_STREAM_HOST",
        )
        self.ack_timeout = ack_timeout
        self.item_timeout = item_timeout
        self._subjects: dict[str, ResponseStream] = {}
        self._connections: dict[tuple[str, int], _RequestConnection] = {}
        self._server: asyncio.Server | None = None
        self._address = ""
        self._rr = itertools.count()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        server_ssl = self.tls.server_context()
        self._server = await loop.create_server(
            lambda: _CallHome(self),
            self._bind_host,
            0,
            ssl=server_ssl,
            ssl_handshake_timeout=self.tls.handshake_timeout if server_ssl else None,
        )
        port = self._server.sockets[0].getsockname()[1]
        self._address = format_host_port(self.response_host, port)

    async def close(self) -> None:
        for conn in self._connections.values():
            if conn.transport is not None:
                conn.transport.close()
        self._connections.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._own_store:
            # Never opened by us: closing only releases its connections.
            await self._store.close()

    async def instances(self) -> list[Instance]:
        records = await self._store.list(self.endpoint_id.instance_prefix())
        out: list[Instance] = []
        for raw in records.values():
            try:
                inst = Instance.from_record(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                continue
            if inst is not None:
                out.append(inst)
        return sorted(out, key=lambda i: i.instance_id)

    async def wait_for_instances(self, timeout: float = 30.0, count: int = 1) -> list[Instance]:
        deadline = time.monotonic() + timeout
        while True:
            found = await self.instances()
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise NoInstances(f"no instance of {self.endpoint_id} within {timeout:g}s")
            await asyncio.sleep(0.05)

    async def _connection(self, inst: Instance) -> _RequestConnection:
        key = (inst.host, inst.port)
        conn = self._connections.get(key)
        if conn is not None and not conn.closed:
            return conn
        loop = asyncio.get_running_loop()
        client_ssl = self.tls.client_context()
        _, fresh = await asyncio.wait_for(
            loop.create_connection(
                _RequestConnection,
                inst.host,
                inst.port,
                ssl=client_ssl,
                server_hostname=inst.host if client_ssl is not None else None,
            ),
            self.ack_timeout,
        )
        self._connections[key] = fresh
        return fresh

    async def generate(
        self,
        request: dict[str, Any],
        *,
        instance: Instance | None = None,
        request_id: str | None = None,
    ) -> ResponseStream:
        """Send ``request`` and return its stream once the worker acked it."""
        await self.start()
        if instance is None:
            found = await self.instances()
            if not found:
                raise NoInstances(f"no instance of {self.endpoint_id}")
            instance = found[next(self._rr) % len(found)]
        rid = request_id or str(uuid.uuid4())
        subject = str(uuid.uuid4())
        stream = ResponseStream(rid, instance.codec, self)
        self._subjects[subject] = stream
        ctl = control.RequestControl(
            id=rid,
            payload_codec=instance.codec,
            transport=control.TCP_TRANSPORT,
            info=control.ConnectionInfo(self._address, subject, rid),
        )
        payload = twopart.encode(
            control.encode_request_control(ctl), wire_codec.encode(instance.codec, request)
        )
        headers = {
            "request-id": rid,
            "x-endpoint-path": instance.path,
            "x-frontend-send-ts-ns": str(time.time_ns()),
        }
        frame = rp.encode_frame(instance.path, headers, payload)
        try:
            conn = await self._connection(instance)
            reply = await asyncio.wait_for(conn.send(frame), self.ack_timeout)
        except (OSError, TimeoutError) as exc:
            self._subjects.pop(subject, None)
            raise ClientError(f"cannot reach {instance.host}:{instance.port}: {exc!r}") from exc
        except BaseException:
            self._subjects.pop(subject, None)
            raise
        if reply:
            self._subjects.pop(subject, None)
            raise Rejected(reply.decode(errors="replace"))
        return stream
