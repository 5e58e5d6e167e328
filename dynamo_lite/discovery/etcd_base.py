"""What both etcd stores share: the lease, the records on it, and keeping both alive.

The instance id *is* an etcd lease (TTL ``ETCD_LEASE_TTL``, default 30 s) and
every record is put on it, so a worker that dies silently disappears from
routing one TTL later; :meth:`close` revokes the lease, removing every record
at once.

:meth:`keep_alive`, run by the store's owner (the worker's task group),
renews the lease every TTL/2. While etcd cannot be reached
it probes about once a second; reaching it again is enough when the lease
survived (etcd restarted with its data restores leases with fresh TTLs). When
etcd answers that the lease is gone (it expired while we were cut off, or etcd
came back with an empty data dir) the store grants a lease with the *same* id
again and re-puts every record it owns: routing resumes under the same
instance id and the worker never restarts (``on_recovered`` is told). With
``recover=False`` it calls ``on_lost`` instead, once the lease is gone or has
gone unrenewed for a whole TTL ("Unable to maintain lease") — the stock
behaviour is to exit then. Callbacks are awaited inline by the keepalive; a
callback that wants the store closed asks its owner, which stops the
keepalive first.

Subclasses supply single-endpoint transport operations (``_t_*``) that raise
only :class:`DiscoveryError` subclasses. This class adds, uniformly: endpoint
failover (several ``ETCD_ENDPOINTS`` tried in turn, starting with the last one
that answered), a deadline on every attempt, the bounded startup retry
(``ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS``), and user/password auth: a token is
obtained before the first call and obtained again, once per call, when etcd
rejects it (tokens expire, and do not survive an etcd restart).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.abc

from .base import DiscoveryError, DiscoveryUnavailable, KvStore
from .tls import EtcdClientTls

logger = logging.getLogger("dynamo_lite.discovery.etcd")

T = TypeVar("T")

DEFAULT_ENDPOINT = "http://localhost:2379"


class LeaseNotFound(DiscoveryError):
    """etcd does not know the lease (expired, revoked, or etcd lost its data)."""


class LeaseExists(DiscoveryError):
    """A grant asked for a lease id etcd already has."""


class TokenRejected(DiscoveryError):
    """etcd refused the call for want of a valid auth token or permission."""


class RequestTimeout(DiscoveryUnavailable):
    """etcd accepted the request but did not answer in time."""


class AuthNotEnabled(DiscoveryError):
    """Credentials were given but etcd has authentication switched off."""


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key with ``prefix`` (etcd range_end)."""
    raw = bytearray(prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\x00"


@dataclass(frozen=True)
class EtcdOptions:
    """How an etcd store connects: one object for every etcd client.

    ``endpoints`` are tried in turn (failover); ``ttl`` is the lease TTL
    (at least 2 s); ``startup_timeout`` bounds the first connection;
    ``recover`` re-grants a lost lease instead of failing; ``username`` /
    ``password`` turn on etcd authentication, ``tls`` TLS;
    ``request_timeout`` bounds each call.
    """

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    ttl: int = 30
    startup_timeout: float = 120.0
    recover: bool = True
    username: str | None = None
    password: str | None = None
    tls: EtcdClientTls | None = None
    request_timeout: float = 5.0


class EtcdLeaseStore(KvStore):
    """Lease, keepalive, recovery, failover and auth over abstract transport ops."""

    def __init__(self, options: EtcdOptions | None = None) -> None:
        options = options if options is not None else EtcdOptions()
        self.options = options
        cleaned = [e.strip() for e in options.endpoints if e and e.strip()]
        self.endpoints: list[str] = cleaned or [DEFAULT_ENDPOINT]
        self.ttl = max(int(options.ttl), 2)
        self.startup_timeout = max(float(options.startup_timeout), 0.0)
        self.recover = options.recover
        self.tls = options.tls
        self.request_timeout = options.request_timeout
        username, password = options.username, options.password
        self._credentials = (username, password or "") if username else None
        self._token: str | None = None
        self._auth_off = False
        self._auth_lock = asyncio.Lock()
        self._current = 0
        self._lease: int | None = None
        self._owned: dict[str, bytes] = {}
        # Serialises record writes with a restore, so a restore never
        # resurrects a record deleted meanwhile.
        self._records_lock = asyncio.Lock()
        self._closed = False
        self._last_renewal = 0.0
        #: Counters for tests and metrics.
        self.renewals = 0
        self.losses = 0
        self.recoveries = 0

    # --- transport (one endpoint, by index) -------------------------------
    @abc.abstractmethod
    async def _t_authenticate(self, ep: int, user: str, password: str) -> str:
        """Return a token; raise AuthNotEnabled or DiscoveryError (bad creds)."""

    @abc.abstractmethod
    def _t_set_token(self, token: str | None) -> None: ...

    @abc.abstractmethod
    async def _t_grant(self, ep: int, ttl: int, lease_id: int) -> int: ...

    @abc.abstractmethod
    async def _t_keepalive(self, ep: int, lease_id: int) -> int:
        """Remaining TTL; 0 (or LeaseNotFound) when the lease is gone."""

    @abc.abstractmethod
    async def _t_revoke(self, ep: int, lease_id: int) -> None: ...

    @abc.abstractmethod
    async def _t_put(self, ep: int, key: str, value: bytes, lease_id: int) -> None: ...

    @abc.abstractmethod
    async def _t_delete(self, ep: int, key: str) -> None: ...

    @abc.abstractmethod
    async def _t_range(self, ep: int, prefix: str) -> dict[str, bytes]: ...

    @abc.abstractmethod
    async def _t_close(self) -> None:
        """Release connections (must not raise)."""

    # --- KvStore ---------------------------------------------------------------
    @property
    def instance_id(self) -> int:
        if self._lease is None:
            raise DiscoveryError("etcd store is not open")
        return self._lease

    @property
    def backend(self) -> str:
        return "etcd"

    async def open(self) -> int:
        if self._lease is not None:
            return self._lease
        if self._closed:
            raise DiscoveryError("etcd store is closed")
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.5
        while True:
            remaining = deadline - time.monotonic()
            try:
                # The whole attempt shares the startup budget, so a hanging
                # endpoint cannot stretch it.
                async with asyncio.timeout(max(remaining, 1.0)):
                    lease = await self._call(lambda ep: self._t_grant(ep, self.ttl, 0))
                break
            except (DiscoveryUnavailable, TimeoutError) as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DiscoveryUnavailable(
                        f"could not connect to etcd within {self.startup_timeout:g}s "
                        f"({', '.join(self.endpoints)}): {exc or 'timed out'}"
                    ) from exc
                logger.warning("etcd not reachable yet; retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 5.0)
        self._lease = lease
        self._last_renewal = time.monotonic()
        logger.debug("etcd lease %x granted (ttl %ds)", lease, self.ttl)
        return lease

    async def put(self, key: str, value: bytes) -> None:
        lease = self.instance_id
        restored = False
        async with self._records_lock:
            try:
                await self._call(lambda ep: self._t_put(ep, key, value, lease))
            except LeaseNotFound:
                if not self.recover:
                    raise
                # Found out before the keepalive did: restore now, then write.
                await self._restore_locked()
                await self._call(lambda ep: self._t_put(ep, key, value, lease))
                restored = True
            self._owned[key] = value
        if restored:
            await self._notify(self.on_recovered, "etcd lease re-granted")

    async def delete(self, key: str) -> None:
        async with self._records_lock:
            self._owned.pop(key, None)
            await self._call(lambda ep: self._t_delete(ep, key))

    async def list(self, prefix: str) -> dict[str, bytes]:
        return await self._call(lambda ep: self._t_range(ep, prefix))

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._lease is not None:
                lease = self._lease
                await self._call(
                    lambda ep: self._t_revoke(ep, lease), timeout=min(self.request_timeout, 2.0)
                )
        except LeaseNotFound:
            pass
        except DiscoveryError as exc:
            logger.warning("etcd lease revoke failed (records expire with the lease): %s", exc)
        finally:
            self._closed = True
            self._owned.clear()
            await self._t_close()

    # --- calls: failover, deadlines, auth ---------------------------------------
    async def _call(
        self,
        op: Callable[[int], Awaitable[T]],
        *,
        timeout: float | None = None,
    ) -> T:
        if self._closed:
            raise DiscoveryError("etcd store is closed")
        await self._ensure_token(timeout)
        used = self._token
        try:
            return await self._failover(op, timeout)
        except TokenRejected as exc:
            if self._credentials is None:
                raise DiscoveryError(
                    f"etcd refused the request ({exc}); set ETCD_AUTH_USERNAME/PASSWORD?"
                ) from exc
        except RequestTimeout:
            # etcd holds a request whose token is from before it lost its data
            # until its raft index catches up with the token's: a fresh token
            # is the way out.
            if self._credentials is None or used is None:
                raise
        # Expired or unknown token (etcd restarted): authenticate once more.
        await self._authenticate(timeout, stale=used)
        try:
            return await self._failover(op, timeout)
        except TokenRejected as exc:
            raise DiscoveryError(f"etcd refused the request after authenticating: {exc}") from exc

    async def _failover(self, op: Callable[[int], Awaitable[T]], timeout: float | None) -> T:
        n = len(self.endpoints)
        limit = timeout or self.request_timeout
        last: BaseException | None = None
        for i in range(n):
            ep = (self._current + i) % n
            try:
                async with asyncio.timeout(limit):
                    result = await op(ep)
            except (TimeoutError, DiscoveryUnavailable) as exc:
                last = exc
                continue
            self._current = ep
            return result
        where = ", ".join(self.endpoints)
        if isinstance(last, TimeoutError):
            raise RequestTimeout(f"etcd at {where} did not answer within {limit:g}s")
        raise DiscoveryUnavailable(f"etcd unreachable at {where}: {last}")

    async def _ensure_token(self, timeout: float | None) -> None:
        if self._credentials is not None and self._token is None and not self._auth_off:
            await self._authenticate(timeout, stale=None)

    async def _authenticate(self, timeout: float | None, *, stale: str | None) -> None:
        assert self._credentials is not None
        user, password = self._credentials
        async with self._auth_lock:
            if self._token is not None and self._token != stale:
                return  # another call refreshed it while we waited
            self._token = None
            self._t_set_token(None)
            try:
                token = await self._failover(
                    lambda ep: self._t_authenticate(ep, user, password), timeout
                )
            except AuthNotEnabled:
                if not self._auth_off:
                    logger.warning("etcd has authentication disabled; continuing without a token")
                self._auth_off = True
                return
            self._auth_off = False
            self._token = token
            self._t_set_token(token)

    # --- keepalive and recovery ---------------------------------------------------
    def _keepalive_timeout(self) -> float:
        return min(self.request_timeout, max(self.ttl / 2, 1.0))

    async def keep_alive(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Renew the lease every TTL/2 until cancelled; re-grant it when lost.

        Returns after telling ``on_lost`` when recovery is off and the lease is gone.
        """
        task_status.started()
        interval = self.ttl / 2
        # While failing, probe often: recovery should follow etcd's return quickly.
        retry = min(1.0, interval)
        delay = interval
        unreachable_reported = False
        while True:
            await anyio.sleep(delay)
            lease = self.instance_id
            try:
                remaining = await self._call(
                    functools.partial(self._t_keepalive, lease_id=lease),
                    timeout=self._keepalive_timeout(),
                )
            except LeaseNotFound:
                remaining = 0
            except DiscoveryError as exc:
                delay = retry
                if time.monotonic() - self._last_renewal < self.ttl or unreachable_reported:
                    logger.debug("etcd keepalive failed, retrying: %s", exc)
                    continue
                unreachable_reported = True
                self.losses += 1
                logger.error("Unable to maintain lease %x: %s", lease, exc)
                if not self.recover:
                    await self._notify(self.on_lost, f"lease not renewed for {self.ttl}s")
                    return
                continue
            if remaining > 0:
                if unreachable_reported:
                    logger.info("etcd reachable again; lease %x still valid", lease)
                unreachable_reported = False
                self._last_renewal = time.monotonic()
                self.renewals += 1
                delay = interval
                continue
            if not unreachable_reported:
                self.losses += 1
            logger.warning("etcd lease %x lost", lease)
            if not self.recover:
                await self._notify(self.on_lost, "lease lost")
                return
            detected = time.monotonic()
            try:
                async with self._records_lock:
                    if self._last_renewal > detected:
                        # A put() restored it while we waited for the lock.
                        delay = interval
                        continue
                    await self._restore_locked()
            except DiscoveryError as exc:
                logger.warning("etcd re-registration failed, retrying: %s", exc)
                delay = retry
                unreachable_reported = True  # counted already
                continue
            unreachable_reported = False
            delay = interval
            await self._notify(self.on_recovered, "etcd lease re-granted")

    async def _restore_locked(self) -> None:
        """Re-grant the same lease id and re-put every owned record."""
        lease = self.instance_id
        timeout = self._keepalive_timeout()
        if self._credentials is not None and self._token is not None:
            # A lost lease usually means etcd lost its data, and with it our token.
            await self._authenticate(timeout, stale=self._token)
        with contextlib.suppress(LeaseExists):
            await self._call(lambda ep: self._t_grant(ep, self.ttl, lease), timeout=timeout)
        for key, value in list(self._owned.items()):
            await self._call(
                functools.partial(self._t_put, key=key, value=value, lease_id=lease),
                timeout=timeout,
            )
        self._last_renewal = time.monotonic()
        self.recoveries += 1
        logger.info("etcd lease %x re-granted; %d records restored", lease, len(self._owned))
