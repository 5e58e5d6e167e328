"""etcd discovery backend over gRPC (``DYN_LITE_ETCD_CLIENT=grpc``).

Same behaviour as the JSON-gateway store (lease = instance id, records on the
lease, keepalive every TTL/2, re-grant of the same id and re-put on loss,
failover, user/password auth, TLS; see
:mod:`dynamo_lite.discovery.etcd_base`), spoken as etcd's native gRPC API
through the asyncio services of the ``etcd3aio`` package (the ``grpc`` extra:
``pip install 'dynamo-lite[grpc]'``).

Each endpoint gets its own ``grpc.aio`` channel, created lazily inside the
running event loop, with a short reconnect backoff so a restarted etcd is
picked up within about a second; endpoints may be host names (``etcd:2379``)
or URLs (the scheme only selects TLS). etcd3aio's ``Etcd3Client`` facade is
not used because its round-robin ``ipv4:`` target takes IP addresses only and
its keepalive runs every TTL/3; its KV, Lease and Auth services are. Calls
make one attempt each: retries and failover are the base class's. A keepalive
is one request/response on a ``LeaseKeepAlive`` stream, which is then closed.
The auth token travels as ``token`` metadata.

Importing this module never fails; without the extra the store's constructor
raises :class:`DiscoveryError`, which is what ``open_store`` reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from .base import DiscoveryError, DiscoveryUnavailable
from .etcd_base import (
    AuthNotEnabled,
    EtcdLeaseStore,
    EtcdOptions,
    LeaseExists,
    LeaseNotFound,
    TokenRejected,
    prefix_end,
)
from .tls import EtcdClientTls

try:
    import grpc
    import grpc.aio
    from etcd3aio.auth import AuthService
    from etcd3aio.errors import (
        EtcdConnectionError,
        EtcdPermissionDeniedError,
        EtcdTransientError,
        EtcdUnauthenticatedError,
    )
    from etcd3aio.kv import KVService
    from etcd3aio.lease import LeaseService

    _IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # the optional extra is not installed
    _IMPORT_ERROR = exc

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Reconnect within a second of etcd coming back (gRPC's default backoff grows
# to 120 s). "min_reconnect_backoff" is really the connect timeout: keep it at
# 1 s so a TLS handshake to a distant member still fits.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]


def grpc_available() -> bool:
    return _IMPORT_ERROR is None


def grpc_target(endpoint: str) -> tuple[str, bool]:
    """``http://h:p`` → (``h:p``, False); ``https://h:p`` → (``h:p``, True)."""
    url = endpoint.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, False
    return rest.split("/", 1)[0], scheme.lower() == "https"


@dataclass
class _Conn:
    channel: grpc.aio.Channel
    kv: KVService
    lease: LeaseService
    auth: AuthService


class EtcdGrpcStore(EtcdLeaseStore):
    """KvStore over etcd's gRPC API via ``etcd3aio`` (see the module docstring)."""

    def __init__(self, options: EtcdOptions | None = None) -> None:
        if _IMPORT_ERROR is not None:
            raise DiscoveryError(
                "DYN_LITE_ETCD_CLIENT=grpc needs the 'grpc' extra "
                f"(pip install 'dynamo-lite[grpc]', i.e. etcd3aio): {_IMPORT_ERROR}"
            )
        super().__init__(options)
        self._targets = [grpc_target(e) for e in self.endpoints]
        # grpc.aio logs a DEBUG line per call; keep DYN_LOG=debug readable.
        chatty = logging.getLogger("grpc._cython.cygrpc")
        if chatty.level == logging.NOTSET:
            chatty.setLevel(logging.INFO)
        self._conns: dict[int, _Conn] = {}
        self._grpc_token: str | None = None

    # --- channels ---------------------------------------------------------------
    def _conn(self, ep: int) -> _Conn:
        conn = self._conns.get(ep)
        if conn is not None:
            return conn
        target, https = self._targets[ep]
        try:
            if self.tls is not None or https:
                tls = self.tls or EtcdClientTls()
                creds = grpc.ssl_channel_credentials(
                    root_certificates=tls.ca.data if tls.ca else None,
                    private_key=tls.key.data if tls.key else None,
                    certificate_chain=tls.cert.data if tls.cert else None,
                )
                channel = grpc.aio.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise DiscoveryError(f"cannot create a gRPC channel to {target}: {exc}") from exc
        conn = _Conn(
            channel=channel,
            kv=KVService(channel, max_attempts=1),
            lease=LeaseService(channel, max_attempts=1),
            auth=AuthService(channel, max_attempts=1),
        )
        for service in (conn.kv, conn.lease, conn.auth):
            service.set_token(self._grpc_token)
        self._conns[ep] = conn
        return conn

    async def _rpc(self, ep: int, what: str, call: Callable[[_Conn], Awaitable[T]]) -> T:
        target = self._targets[ep][0]
        try:
            return await call(self._conn(ep))
        except DiscoveryError:
            raise
        except (EtcdConnectionError, EtcdTransientError, TimeoutError) as exc:
            raise DiscoveryUnavailable(f"{target}: {what}: {exc}") from exc
        except (EtcdUnauthenticatedError, EtcdPermissionDeniedError) as exc:
            self._raise_auth(str(exc), exc)
        except grpc.aio.AioRpcError as exc:
            self._raise_status(target, what, exc)
        except Exception as exc:  # grpc usage errors, protobuf errors, ...
            raise DiscoveryError(f"{target}: {what} failed: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _raise_auth(message: str, exc: BaseException) -> NoReturn:
        lowered = message.lower()
        if "authentication is not enabled" in lowered:
            raise AuthNotEnabled(message) from exc
        if "authentication failed" in lowered:
            raise DiscoveryError(f"etcd authentication failed: {message}") from exc
        raise TokenRejected(message) from exc

    def _raise_status(self, target: str, what: str, exc: grpc.aio.AioRpcError) -> NoReturn:
        code = exc.code()
        details = exc.details() or code.name
        lowered = details.lower()
        if "lease not found" in lowered:
            raise LeaseNotFound(details) from exc
        if "lease already exists" in lowered:
            raise LeaseExists(details) from exc
        if (
            code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            or "auth" in lowered
            or "user name is empty" in lowered
        ):
            self._raise_auth(details, exc)
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            raise DiscoveryUnavailable(f"{target}: {what}: {code.name}: {details}") from exc
        raise DiscoveryError(f"etcd {what} failed at {target}: {code.name}: {details}") from exc

    # --- transport ops ----------------------------------------------------------
    async def _t_authenticate(self, ep: int, user: str, password: str) -> str:
        async def call(c: _Conn) -> str:
            resp = await c.auth.authenticate(user, password, timeout=self.request_timeout)
            return str(resp.token)

        token = await self._rpc(ep, "authenticate", call)
        if not token:
            raise DiscoveryError("etcd authenticate returned no token")
        return token

    def _t_set_token(self, token: str | None) -> None:
        self._grpc_token = token
        for conn in self._conns.values():
            for service in (conn.kv, conn.lease, conn.auth):
                service.set_token(token)

    async def _t_grant(self, ep: int, ttl: int, lease_id: int) -> int:
        async def call(c: _Conn) -> int:
            resp = await c.lease.grant(ttl, lease_id, timeout=self.request_timeout)
            if resp.error:
                raise DiscoveryError(f"etcd lease grant failed: {resp.error}")
            return int(resp.ID)

        return await self._rpc(ep, "lease grant", call)

    async def _t_keepalive(self, ep: int, lease_id: int) -> int:
        async def call(c: _Conn) -> int:
            stream = c.lease.keep_alive(lease_id)
            try:
                resp = await stream.read()
            finally:
                stream.cancel()
            if resp is grpc.aio.EOF:
                raise DiscoveryUnavailable("keepalive stream closed without a reply")
            return int(resp.TTL)

        return await self._rpc(ep, "lease keepalive", call)

    async def _t_revoke(self, ep: int, lease_id: int) -> None:
        async def call(c: _Conn) -> None:
            await c.lease.revoke(lease_id, timeout=self.request_timeout)

        await self._rpc(ep, "lease revoke", call)

    async def _t_put(self, ep: int, key: str, value: bytes, lease_id: int) -> None:
        async def call(c: _Conn) -> None:
            await c.kv.put(key.encode(), value, lease=lease_id, timeout=self.request_timeout)

        await self._rpc(ep, "put", call)

    async def _t_delete(self, ep: int, key: str) -> None:
        async def call(c: _Conn) -> None:
            await c.kv.delete(key.encode(), timeout=self.request_timeout)

        await self._rpc(ep, "delete", call)

    async def _t_range(self, ep: int, prefix: str) -> dict[str, bytes]:
        raw = prefix.encode()

        async def call(c: _Conn) -> dict[str, bytes]:
            resp = await c.kv.get(raw, range_end=prefix_end(raw), timeout=self.request_timeout)
            return {bytes(kv.key).decode(errors="replace"): bytes(kv.value) for kv in resp.kvs}

        return await self._rpc(ep, "range", call)

    async def _t_close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            try:
                async with asyncio.timeout(self.request_timeout):
                    await conn.channel.close()
            except Exception as exc:  # closing must not fail the caller
                logger.debug("closing a gRPC channel failed: %s", exc)


__all__ = ["EtcdGrpcStore", "grpc_available", "grpc_target"]
