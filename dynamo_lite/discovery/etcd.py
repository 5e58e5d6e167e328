"""etcd discovery backend over the v3 JSON gateway (pure Python, httpx).

The instance id *is* an etcd lease (TTL ``ETCD_LEASE_TTL``, default 30 s) and
every record is put on it, so a worker that dies silently disappears from
routing one TTL later. A keepalive task renews the lease every TTL/2.

When the lease is found gone (etcd lost it while we could not reach it, or
came back with an empty data dir) the store grants a lease with the *same*
id again and re-puts every record it owns: routing resumes with the same
instance id, and the worker never restarts. ``on_lost`` is used instead when
recovery is disabled (the stock behaviour: exit).

Gateway details: POST JSON, keys and values base64, int64s as strings.
Several comma-separated ``ETCD_ENDPOINTS`` are tried in turn.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from typing import Any

import httpx

from .base import DiscoveryError, DiscoveryUnavailable, KvStore

logger = logging.getLogger(__name__)


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key with ``prefix`` (etcd range_end)."""
    raw = bytearray(prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\x00"


class LeaseNotFound(DiscoveryError):
    pass


class EtcdStore(KvStore):
    def __init__(
        self,
        endpoints: tuple[str, ...] | list[str] = ("http://localhost:2379",),
        *,
        ttl: int = 30,
        startup_timeout: float = 120.0,
        recover: bool = True,
        username: str | None = None,
        password: str | None = None,
        request_timeout: float = 5.0,
    ) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints] or ["http://localhost:2379"]
        self.ttl = max(int(ttl), 2)
        self.startup_timeout = startup_timeout
        self.recover = recover
        self._auth = (username, password) if username else None
        self._token: str | None = None
        self._client = httpx.AsyncClient(timeout=request_timeout)
        self._current = 0
        self._lease: int | None = None
        self._owned: dict[str, bytes] = {}
        self._keepalive_task: asyncio.Task[None] | None = None
        self._last_renewal = 0.0
        self.renewals = 0
        self.losses = 0

    @property
    def instance_id(self) -> int:
        if self._lease is None:
            raise DiscoveryError("etcd store is not open")
        return self._lease

    @property
    def backend(self) -> str:
        return "etcd"

    # --- transport --------------------------------------------------------
    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        for attempt in range(len(self.endpoints)):
            base = self.endpoints[(self._current + attempt) % len(self.endpoints)]
            try:
                headers = {"Authorization": self._token} if self._token else None
                resp = await self._client.post(base + path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                last = exc
                continue
            self._current = (self._current + attempt) % len(self.endpoints)
            try:
                data = resp.json()
            except ValueError:
                data = {}
            if resp.status_code >= 400 or ("error" in data and "result" not in data):
                message = str(data.get("message") or data.get("error") or resp.text)
                if "lease not found" in message:
                    raise LeaseNotFound(message)
                if (
                    resp.status_code == 401
                    and self._auth is not None
                    and path != "/v3/auth/authenticate"
                ):
                    await self._authenticate()
                    return await self._post(path, body)
                raise DiscoveryError(f"etcd {path} failed: {message}")
            if not isinstance(data, dict):
                raise DiscoveryError(f"etcd {path}: unexpected reply {data!r}")
            return data
        raise DiscoveryUnavailable(f"etcd unreachable at {', '.join(self.endpoints)}: {last}")

    async def _authenticate(self) -> None:
        assert self._auth is not None
        self._token = None
        user, password = self._auth
        data = await self._post("/v3/auth/authenticate", {"name": user, "password": password or ""})
        self._token = str(data.get("token", "")) or None

    # --- lease ------------------------------------------------------------
    async def _grant(self, lease_id: int = 0) -> int:
        body: dict[str, Any] = {"TTL": self.ttl}
        if lease_id:
            body["ID"] = str(lease_id)
        data = await self._post("/v3/lease/grant", body)
        if data.get("error"):
            raise DiscoveryError(f"lease grant failed: {data['error']}")
        return int(data["ID"])

    async def open(self) -> int:
        if self._lease is not None:
            return self._lease
        deadline = time.monotonic() + self.startup_timeout
        delay = 1.0
        while True:
            try:
                if self._auth is not None and self._token is None:
                    await self._authenticate()
                self._lease = await self._grant()
                break
            except DiscoveryUnavailable as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DiscoveryUnavailable(
                        f"could not connect to etcd within {self.startup_timeout:g}s: {exc}"
                    ) from exc
                logger.warning("etcd not reachable yet; retrying in %.0fs: %s", delay, exc)
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 30.0)
        self._last_renewal = time.monotonic()
        self._keepalive_task = asyncio.create_task(self._keepalive_loop(), name="etcd-keepalive")
        return self._lease

    async def _keepalive_once(self) -> None:
        data = await self._post("/v3/lease/keepalive", {"ID": str(self.instance_id)})
        result = data.get("result", data)
        ttl = int(result.get("TTL", 0) or 0) if isinstance(result, dict) else 0
        if ttl <= 0:
            raise LeaseNotFound("keepalive reported no TTL")
        self._last_renewal = time.monotonic()
        self.renewals += 1

    async def _restore(self) -> None:
        """Re-grant the same lease id and re-put every owned record."""
        lease = self.instance_id
        try:
            await self._grant(lease)
        except DiscoveryError as exc:
            if "exist" not in str(exc):
                raise
        for key, value in list(self._owned.items()):
            await self._put_raw(key, value)
        self._last_renewal = time.monotonic()

    async def _keepalive_loop(self) -> None:
        interval = self.ttl / 2
        while True:
            await asyncio.sleep(interval if self._healthy() else 1.0)
            try:
                await self._keepalive_once()
                continue
            except LeaseNotFound:
                self.losses += 1
                logger.warning("etcd lease %x lost", self.instance_id)
            except DiscoveryError as exc:
                if time.monotonic() - self._last_renewal < self.ttl:
                    logger.debug("etcd keepalive failed, retrying: %s", exc)
                    continue
                self.losses += 1
                logger.error("Unable to maintain lease %x: %s", self.instance_id, exc)
                if not self.recover:
                    if self.on_lost is not None:
                        await self.on_lost(f"lease unreachable for {self.ttl}s")
                    return
                continue
            if not self.recover:
                if self.on_lost is not None:
                    await self.on_lost("lease lost")
                return
            try:
                await self._restore()
            except DiscoveryError as exc:
                logger.warning("etcd re-registration failed, retrying: %s", exc)
                continue
            logger.info(
                "etcd lease %x re-granted; %d records restored", self.instance_id, len(self._owned)
            )
            if self.on_recovered is not None:
                await self.on_recovered("etcd lease re-granted")

    def _healthy(self) -> bool:
        return time.monotonic() - self._last_renewal < self.ttl / 2 + 1.0

    # --- records ----------------------------------------------------------
    async def _put_raw(self, key: str, value: bytes) -> None:
        await self._post(
            "/v3/kv/put", {"key": _b64(key), "value": _b64(value), "lease": str(self.instance_id)}
        )

    async def put(self, key: str, value: bytes) -> None:
        await self._put_raw(key, value)
        self._owned[key] = value

    async def delete(self, key: str) -> None:
        self._owned.pop(key, None)
        await self._post("/v3/kv/deleterange", {"key": _b64(key)})

    async def list(self, prefix: str) -> dict[str, bytes]:
        raw = prefix.encode()
        data = await self._post(
            "/v3/kv/range", {"key": _b64(raw), "range_end": _b64(_prefix_end(raw))}
        )
        out: dict[str, bytes] = {}
        for kv in data.get("kvs", []) or []:
            out[base64.b64decode(kv["key"]).decode()] = base64.b64decode(kv.get("value", ""))
        return out

    async def close(self) -> None:
        task, self._keepalive_task = self._keepalive_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            if self._lease is not None:
                await self._post("/v3/lease/revoke", {"ID": str(self._lease)})
        except DiscoveryError as exc:
            logger.warning("etcd lease revoke failed: %s", exc)
        finally:
            self._owned.clear()
            await self._client.aclose()


__all__ = ["EtcdStore", "LeaseNotFound"]
