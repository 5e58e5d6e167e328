"""Status server: HealthStatus, what /health serves (set by canary.py, which sends health_check.py).

The worker's system status server: ``/health``, ``/live``, ``/metrics`` and friends.

Enabled by ``DYN_SYSTEM_PORT`` (unset → off, ``0`` → any free port) on
``DYN_SYSTEM_HOST``, as in stock. HTTP/1.1 is parsed by ``h11`` (sans-IO);
this module only routes. Bodies and status codes copy the stock worker:

* ``/health`` and ``/live`` (paths from ``DYN_SYSTEM_HEALTH_PATH`` /
  ``DYN_SYSTEM_LIVE_PATH``) answer ``{"status":"ready"|"notready",
  "uptime":{"secs":…,"nanos":…},"endpoints":{…}}`` with 200 when ready and
  503 otherwise, as ``text/plain; charset=utf-8``; ``HEAD`` is allowed,
  other methods get 405;
* ``/metrics`` answers Prometheus text (:meth:`SystemServer.serve_metrics`,
  rendered by :mod:`dynamo_lite.metrics` on every scrape);
* anything unknown gets 404 ``Route not found``.

Readiness lives in :class:`HealthStatus`: the worker flips endpoints ready when
they are registered and not-ready from the first moment of shutdown; the
canary (:mod:`dynamo_lite.canary`, sending the :mod:`dynamo_lite.health_check`
payload) and the stall detector change it while the worker serves.

Ownership: :meth:`SystemServer.start` binds the listener; :meth:`SystemServer.serve`
accepts until cancelled, each connection a task of the task group it runs,
so stopping that one service closes the listener and every connection.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .envparse import parse_str
from .netaddr import tcp_listener

if TYPE_CHECKING:
    import h11

logger = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"


@dataclass
class Response:
    """One HTTP response of the system server."""

    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[str, str], Awaitable[Response] | Response]
#: ``handler(method, path, body)``: routes that read the request body (any method).
BodyHandler = Callable[[str, str, bytes], Awaitable[Response]]
#: Request bodies above this are refused (stock's HTTP stack limits them to 2 MB too).
MAX_BODY = 2 * 1024 * 1024


@dataclass(frozen=True)
class SystemSettings:
    """The status server's routes and starting readiness (``DYN_SYSTEM_*``).

    ``DYN_SYSTEM_HOST`` / ``DYN_SYSTEM_PORT`` live in
    :class:`~dynamo_lite.config.RuntimeSettings` (they decide whether there is a server).
    """

    health_path: str = "/health"
    live_path: str = "/live"
    starting_ready: bool = False
    #: ``DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS``: the endpoints readiness waits for.
    use_endpoints: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SystemSettings:
        use_endpoints: tuple[str, ...] | None = None
        raw = (env.get("DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS") or "").strip()
        if raw:
            try:
                parsed = json.loads(raw)
                if isinstance(parsed, list):
                    use_endpoints = tuple(str(x) for x in parsed)
            except ValueError:
                logger.warning("Invalid DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS=%r; ignoring", raw)
        return cls(
            health_path=parse_str(env, "DYN_SYSTEM_HEALTH_PATH") or "/health",
            live_path=parse_str(env, "DYN_SYSTEM_LIVE_PATH") or "/live",
            starting_ready=(env.get("DYN_SYSTEM_STARTING_HEALTH_STATUS") or "").lower() == "ready",
            use_endpoints=use_endpoints,
        )


def _system_settings(given: SystemSettings | Mapping[str, str] | None) -> SystemSettings:
    if given is None:
        return SystemSettings()
    return given if isinstance(given, SystemSettings) else SystemSettings.from_env(given)


class HealthStatus:
    """The served status behind ``/health`` and ``/live``: readiness as the stock
    runtime reports it, plus dynamo_lite's vetoes.

    An endpoint's own status is set by the worker (ready once registered,
    not ready from the first moment of shutdown) and by the canary. A veto
    (the stall detector's) makes one endpoint, or with ``endpoint=None`` the
    whole worker, report not ready until it is lifted, whatever that status.
    """

    def __init__(self, settings: SystemSettings | Mapping[str, str] | None = None) -> None:
        s = _system_settings(settings)
        self.started = time.monotonic()
        self.starting_ready = s.starting_ready
        self.use_endpoints: list[str] | None = (
            list(s.use_endpoints) if s.use_endpoints is not None else None
        )
        start = "ready" if self.starting_ready else "notready"
        self.endpoints: dict[str, str] = {name: start for name in self.use_endpoints or ()}
        self.serving = False
        self.shutting_down = False
        #: Conditions that make the worker unhealthy: key → (endpoint or None, detail).
        self.vetoes: dict[str, tuple[str | None, str]] = {}

    def set_endpoint(self, name: str, ready: bool) -> None:
        self.endpoints[name] = "ready" if ready else "notready"

    def veto(self, key: str, detail: str, endpoint: str | None = None) -> None:
        self.vetoes[key] = (endpoint, detail)

    def lift(self, key: str) -> None:
        self.vetoes.pop(key, None)

    def status(self, name: str) -> str:
        if any(target == name for target, _ in self.vetoes.values()):
            return "notready"
        return self.endpoints.get(name, "notready")

    @property
    def ready(self) -> bool:
        if self.shutting_down or any(target is None for target, _ in self.vetoes.values()):
            return False
        if self.use_endpoints:
            return all(self.status(name) == "ready" for name in self.use_endpoints)
        if not (self.serving or self.starting_ready):
            return False
        return all(self.status(name) == "ready" for name in self.endpoints)

    def body(self) -> dict[str, object]:
        elapsed = time.monotonic() - self.started
        return {
            "status": "ready" if self.ready else "notready",
            "uptime": {"secs": int(elapsed), "nanos": int((elapsed % 1) * 1e9)},
            "endpoints": {name: self.status(name) for name in self.endpoints},
        }


class SystemServer:
    def __init__(
        self,
        host: str,
        port: int,
        health: HealthStatus,
        env: SystemSettings | Mapping[str, str] | None = None,
    ) -> None:
        s = _system_settings(env)
        self.host = host
        self.port = port
        self.health = health
        self.routes: dict[str, Handler] = {}
        self.prefix_routes: list[tuple[str, Handler]] = []
        self.routes[s.health_path] = self._health
        self.routes[s.live_path] = self._health
        self.routes["/metadata"] = lambda m, p: Response(404, b"Discovery metadata not available")
        self.prefix_routes.append(("/engine/", self._engine_not_found))
        self.body_routes: dict[str, BodyHandler] = {}
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        #: Idle keep-alive connections are closed after this long.
        self.idle_timeout = 30.0

    def _health(self, method: str, path: str) -> Response:
        return Response(200 if self.health.ready else 503, json.dumps(self.health.body()).encode())

    @staticmethod
    def _engine_not_found(method: str, path: str) -> Response:
        body = {"error": "Route not found", "message": f"Route {path} not found"}
        return Response(404, json.dumps(body).encode())

    def serve_metrics(self, render: Callable[[], bytes], content_type: str) -> None:
        """``GET /metrics``: the body ``render()`` returns, collected at scrape time."""

        def metrics(method: str, path: str) -> Response:
            try:
                body = render()
            except Exception:
                logger.exception("collecting /metrics failed")
                return Response(500, b"metrics collection failed")
            return Response(200, body, content_type)

        self.routes["/metrics"] = metrics

    def route_body(self, prefix: str, handler: BodyHandler) -> None:
        """Serve every method under ``prefix`` with ``handler``, which gets the request body.

        A later handler for the same prefix replaces the earlier one.
        """
        self.body_routes[prefix] = handler

    def _body_handler(self, target: str) -> BodyHandler | None:
        path = target.split("?", 1)[0]
        return next((h for p, h in self.body_routes.items() if path.startswith(p)), None)

    def route(self, path: str, handler: Handler, *, prefix: bool = False) -> None:
        if prefix:
            self.prefix_routes.append((path, handler))
        else:
            self.routes[path] = handler

    async def start(self) -> int:
        """Bind the listener; returns the port (``DYN_SYSTEM_PORT=0`` picks one)."""
        listener = await tcp_listener(self.host, self.port)
        self._listener = listener
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        logger.info("System status server listening on %s:%d", self.host, self.port)
        return self.port

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept connections until cancelled; then the listener is closed."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("SystemServer.start() first")
        task_status.started()
        try:
            await listener.serve(self._serve)
        finally:
            self._listener = None
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def _dispatch(self, method: str, target: str) -> Response:
        path = target.split("?", 1)[0]
        handler = self.routes.get(path)
        if handler is None:
            for prefix, h in self.prefix_routes:
                if path.startswith(prefix):
                    handler = h
                    break
        if handler is None:
            return Response(404, b"Route not found")
        if method not in ("GET", "HEAD"):
            return Response(405, b"", headers=[("allow", "GET,HEAD")])
        result = handler(method, path)
        if not isinstance(result, Response):
            result = await result
        return result

    async def _respond(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, request: h11.Request
    ) -> None:

        method = request.method.decode()
        response = await self._dispatch(method, request.target.decode())
        await self._send(conn, stream, method, response)

    async def _respond_with_body(
        self,
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        request: h11.Request,
        handler: BodyHandler,
    ) -> bool:
        """Read the body, answer through ``handler``; False when the connection must close."""
        import h11

        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                await self._receive(conn, stream)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    await self._send(conn, stream, "POST", Response(413, b"length limit exceeded"))
                    return False
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
        method = request.method.decode()
        path = request.target.decode().split("?", 1)[0]
        await self._send(conn, stream, method, await handler(method, path, b"".join(chunks)))
        return True

    async def _receive(self, conn: h11.Connection, stream: anyio.abc.SocketStream) -> None:
        """Feed h11 the next bytes; idle connections are bounded too (TimeoutError)."""
        with anyio.fail_after(self.idle_timeout):
            try:
                data = await stream.receive(65536)
            except anyio.EndOfStream:
                data = b""
        conn.receive_data(data)

    async def _send(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, method: str, response: Response
    ) -> None:
        import h11

        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        out = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if method != "HEAD":
            out += conn.send(h11.Data(data=response.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send(out)

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        # Imported by the first connection: a worker without a system port never loads h11.
        import h11

        conn = h11.Connection(h11.SERVER)
        async with stream:
            try:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        await self._receive(conn, stream)
                    elif isinstance(event, h11.Request):
                        body_handler = self._body_handler(event.target.decode())
                        if body_handler is None:
                            await self._respond(conn, stream, event)
                        elif not await self._respond_with_body(conn, stream, event, body_handler):
                            break
                        if conn.our_state is h11.MUST_CLOSE:
                            break  # "connection: close" (or HTTP/1.0): done, close now
                    elif event is h11.PAUSED:
                        # One request/response cycle is complete.
                        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                            break
                        conn.start_next_cycle()
                    elif isinstance(event, h11.ConnectionClosed):
                        break
            except (
                h11.RemoteProtocolError,
                h11.LocalProtocolError,
                TimeoutError,
                OSError,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
            ):
                pass
