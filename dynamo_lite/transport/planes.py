"""Request planes behind one small interface: how requests reach the worker.

Theory of operation
-------------------
The frontend sends a request in one of two ways, named by the worker's
instance record: a framed TCP connection to the worker's listener
(``{"tcp": "host:port/path"}``) or a NATS request to a subject
(``{"nats_tcp": subject}``). Either way the payload is the same TwoPart
message, and either way the worker answers *at once*, before any work:
an empty ack, or a rejection text ("Server unavailable: …", "Server
overloaded: …"); the response itself always streams back over the TCP
call-home connection.

So the worker needs four things from a plane, in this order:

``start(tg)``
    Listen (TCP) or connect (NATS); its background services run in ``tg``.
``serve(tg, endpoint_id, instance_id, submitter)``
    Start admitting requests for one endpoint; returns the ``transport``
    entry of the instance record that tells the frontend where to send.
``stop_accepting()``
    No new requests from now on. Over TCP the endpoint itself answers
    "unavailable" (the frontend then fails over at once), so the listener
    stays; over NATS the worker leaves the queue group.
``close()``
    Close listeners and connections, bounded and shielded.

Both planes admit through one :class:`Submitter` (the endpoint's
``submit``), and each encodes its own acks: TCP writes the framed reply
(:func:`~dynamo_lite.transport.request_plane.admit`), NATS responds to the
message.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Protocol

import anyio.abc

from ..discovery import keys as dkeys
from ..discovery.keys import EndpointId
from ..tasks import Service, start_service
from .request_plane import RequestPlaneServer, Submitter

if TYPE_CHECKING:  # the NATS plane is imported only when chosen
    from .nats_plane import NatsRequestServer, NatsSettings

__all__ = ["NatsPlane", "RequestPlane", "Submitter", "TcpPlane"]


class RequestPlane(Protocol):
    """See the module docstring."""

    name: str

    async def start(self, tg: anyio.abc.TaskGroup) -> None: ...

    async def serve(
        self,
        tg: anyio.abc.TaskGroup,
        endpoint_id: EndpointId,
        instance_id: int,
        submitter: Submitter,
    ) -> dict[str, str]: ...

    async def stop_accepting(self) -> None: ...

    async def close(self) -> None: ...


class TcpPlane:
    """The TCP request plane: one listener for every endpoint of the process."""

    name = "tcp"

    def __init__(self, server: RequestPlaneServer, advertise_host: str) -> None:
        self.server = server
        #: The host put in the instance record (the listener may bind a wildcard).
        self.advertise_host = advertise_host
        self._sweeper: Service | None = None

    @property
    def advertised(self) -> tuple[str, int]:
        return self.advertise_host, self.server.port

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        await self.server.start()
        self._sweeper = await start_service(tg, self.server.sweep, name="request-plane sweeper")

    async def serve(
        self,
        tg: anyio.abc.TaskGroup,
        endpoint_id: EndpointId,
        instance_id: int,
        submitter: Submitter,
    ) -> dict[str, str]:
        self.server.endpoints[endpoint_id.endpoint_path(instance_id)] = submitter
        host, port = self.advertised
        return dkeys.tcp_transport(host, port, endpoint_id, instance_id)

    async def stop_accepting(self) -> None:
        """Nothing to do: the endpoint answers "unavailable" itself."""

    async def close(self) -> None:
        if self._sweeper is not None:
            await self._sweeper.stop()
        self.server.endpoints.clear()
        await self.server.close()


class NatsPlane:
    """The NATS request plane: one subscription per endpoint, in queue group ``q``."""

    name = "nats"

    def __init__(self, nats: NatsRequestServer) -> None:
        self.nats = nats
        self._subscriptions: list[Service] = []

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        await self.nats.connect()

    async def serve(
        self,
        tg: anyio.abc.TaskGroup,
        endpoint_id: EndpointId,
        instance_id: int,
        submitter: Submitter,
    ) -> dict[str, str]:
        from .nats_plane import subject_for

        e = endpoint_id
        subject = subject_for(e.namespace, e.component, e.endpoint, instance_id)
        self._subscriptions.append(
            await start_service(tg, self.nats.serve, subject, submitter, name="NATS subscription")
        )
        return {"nats_tcp": subject}

    async def stop_accepting(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for service in subscriptions:
            await service.stop()

    async def close(self) -> None:
        await self.stop_accepting()
        await self.nats.close()


def open_plane(
    name: str,
    *,
    host: str | None,
    port: int,
    advertise_host: str,
    max_message_size: int,
    ssl_context: ssl.SSLContext | None,
    ssl_handshake_timeout: float,
    frame_timeout: float,
    idle_timeout: float,
    max_connections: int,
    nats: NatsSettings | None = None,
) -> RequestPlane:
    """The plane called ``name`` (``tcp`` or ``nats``); nothing is bound yet."""
    if name == "nats":
        from .nats_plane import NatsRequestServer

        return NatsPlane(NatsRequestServer(nats))
    server = RequestPlaneServer(
        host or "0.0.0.0",
        port,
        max_message_size=max_message_size,
        ssl_context=ssl_context,
        ssl_handshake_timeout=ssl_handshake_timeout,
        frame_timeout=frame_timeout,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
    )
    return TcpPlane(server, advertise_host)
