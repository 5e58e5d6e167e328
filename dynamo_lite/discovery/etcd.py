"""etcd discovery backend over the v3 JSON gateway (pure Python, httpx).

Lease, keepalive, recovery, failover and auth behave as described in
:mod:`dynamo_lite.discovery.etcd_base`; this module only speaks the gateway:
``POST {endpoint}/v3/...`` with JSON bodies, keys and values base64, int64s
as decimal strings. The auth token from ``/v3/auth/authenticate`` travels in
the ``Authorization`` header.

TLS: ``https://`` endpoints (a bare ``host:port`` becomes ``https://`` when TLS
material is configured, and so does ``http://``, since plaintext could not
work then) are verified against ``ETCD_AUTH_CA`` (else the system store) and
present ``ETCD_AUTH_CLIENT_CERT``/``ETCD_AUTH_CLIENT_KEY`` when given. etcd's
gateway rejects client certificates that carry a Common Name while it runs
with ``--client-cert-auth``; use a certificate without one, or the gRPC store.

Every foreign exception (httpx, ssl, OS, JSON, malformed replies) becomes a
:class:`DiscoveryError` here; "could not talk to this endpoint" becomes
:class:`DiscoveryUnavailable`, which moves on to the next endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from typing import Any, NoReturn

import httpx

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

logger = logging.getLogger(__name__)

# gRPC status codes etcd's gateway copies into its error replies.
_UNAVAILABLE_CODES = {1, 4, 14}  # cancelled, deadline exceeded, unavailable
_AUTH_CODES = {7, 16}  # permission denied, unauthenticated


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value or ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DiscoveryError(f"etcd reply holds invalid base64: {exc}") from exc


def gateway_url(endpoint: str, tls: bool) -> str:
    url = endpoint.strip().rstrip("/")
    if "://" not in url:
        return f"{'https' if tls else 'http'}://{url}"
    if tls and url.startswith("http://"):
        logger.info("etcd TLS is configured: using https for %s", url)
        return "https://" + url[len("http://") :]
    return url


def _int_field(data: dict[str, Any], name: str, default: int | None = None) -> int:
    value = data.get(name, default)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise DiscoveryError(f"etcd reply has no valid {name!r}: {data!r}") from exc


def _describe(exc: BaseException) -> str:
    # httpx hides the ssl reason in the cause chain.
    parts = [f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__]
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(parts) < 4:
        if isinstance(cause, ssl.SSLError | OSError):
            parts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return " / ".join(parts)


class EtcdStore(EtcdLeaseStore):
    """KvStore over etcd's v3 JSON gateway (see the module docstring)."""

    def __init__(self, options: EtcdOptions | None = None) -> None:
        super().__init__(options)
        tls, request_timeout = self.tls, self.request_timeout
        self._urls = [gateway_url(e, tls is not None) for e in self.endpoints]
        verify: ssl.SSLContext | bool = tls.ssl_context() if tls is not None else True
        # Our own deadlines bound each call; httpx's only guard the connect.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout, connect=min(request_timeout, 3.0)),
            verify=verify,
        )
        self._headers: dict[str, str] = {}

    # --- HTTP -----------------------------------------------------------------
    async def _post(self, ep: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self._urls[ep] + path
        try:
            resp = await self._client.post(url, json=body, headers=self._headers)
        except (httpx.HTTPError, httpx.InvalidURL, ssl.SSLError, OSError) as exc:
            raise DiscoveryUnavailable(f"{url}: {_describe(exc)}") from exc
        except RuntimeError as exc:  # the client was closed underneath us
            raise DiscoveryError(f"{url}: {exc}") from exc
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if resp.status_code >= 500:
                raise DiscoveryUnavailable(f"{url}: HTTP {resp.status_code}")
            raise DiscoveryError(
                f"etcd {path}: unexpected reply (HTTP {resp.status_code}): {resp.text[:200]!r}"
            )
        error = data.get("error")
        if resp.status_code < 400 and (error is None or "result" in data):
            return data
        # Unary errors: {"error": str, "code": int, "message": str}; streamed ones
        # (keepalive) nest {"grpc_code", "http_code", "message"} under "error".
        if isinstance(error, dict):
            code = error.get("grpc_code")
            message = str(error.get("message") or error)
        else:
            code = data.get("code")
            message = str(data.get("message") or error or resp.text[:200])
        self._raise(path, resp.status_code, code, message)

    @staticmethod
    def _raise(path: str, status: int, code: Any, message: str) -> NoReturn:
        lowered = message.lower()
        if "lease not found" in lowered:
            raise LeaseNotFound(message)
        if "lease already exists" in lowered:
            raise LeaseExists(message)
        if "authentication is not enabled" in lowered:
            raise AuthNotEnabled(message)
        if "authentication failed" in lowered:
            raise DiscoveryError(f"etcd authentication failed: {message}")
        if (
            status in (401, 403)
            or code in _AUTH_CODES
            or "user name is empty" in lowered
            or "invalid auth token" in lowered
        ):
            raise TokenRejected(message)
        if "commonname" in lowered:
            raise DiscoveryError(
                f"etcd gateway refused the client certificate: {message} "
                "(its gateway does not accept certificates with a CN)"
            )
        if status in (502, 503, 504) or code in _UNAVAILABLE_CODES:
            raise DiscoveryUnavailable(f"etcd {path}: {message}")
        raise DiscoveryError(f"etcd {path} failed (HTTP {status}): {message}")

    # --- transport ops ----------------------------------------------------------
    async def _t_authenticate(self, ep: int, user: str, password: str) -> str:
        data = await self._post(ep, "/v3/auth/authenticate", {"name": user, "password": password})
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise DiscoveryError(f"etcd authenticate returned no token: {data!r}")
        return token

    def _t_set_token(self, token: str | None) -> None:
        self._headers = {"Authorization": token} if token else {}

    async def _t_grant(self, ep: int, ttl: int, lease_id: int) -> int:
        body: dict[str, Any] = {"TTL": ttl}
        if lease_id:
            body["ID"] = str(lease_id)
        data = await self._post(ep, "/v3/lease/grant", body)
        return _int_field(data, "ID")

    async def _t_keepalive(self, ep: int, lease_id: int) -> int:
        data = await self._post(ep, "/v3/lease/keepalive", {"ID": str(lease_id)})
        result = data.get("result", data)
        if not isinstance(result, dict):
            raise DiscoveryError(f"etcd keepalive: unexpected reply {data!r}")
        # A missing or zero TTL means etcd no longer knows the lease.
        return _int_field(result, "TTL", 0)

    async def _t_revoke(self, ep: int, lease_id: int) -> None:
        await self._post(ep, "/v3/lease/revoke", {"ID": str(lease_id)})

    async def _t_put(self, ep: int, key: str, value: bytes, lease_id: int) -> None:
        await self._post(
            ep, "/v3/kv/put", {"key": _b64(key), "value": _b64(value), "lease": str(lease_id)}
        )

    async def _t_delete(self, ep: int, key: str) -> None:
        await self._post(ep, "/v3/kv/deleterange", {"key": _b64(key)})

    async def _t_range(self, ep: int, prefix: str) -> dict[str, bytes]:
        raw = prefix.encode()
        data = await self._post(
            ep, "/v3/kv/range", {"key": _b64(raw), "range_end": _b64(prefix_end(raw))}
        )
        out: dict[str, bytes] = {}
        kvs = data.get("kvs") or []
        if not isinstance(kvs, list):
            raise DiscoveryError(f"etcd range: unexpected reply {data!r}")
        for kv in kvs:
            if not isinstance(kv, dict):
                raise DiscoveryError(f"etcd range: unexpected entry {kv!r}")
            key = _unb64(kv.get("key")).decode(errors="replace")
            out[key] = _unb64(kv.get("value"))
        return out

    async def _t_close(self) -> None:
        try:
            async with asyncio.timeout(self.request_timeout):
                await self._client.aclose()
        except Exception as exc:  # closing must not fail the caller
            logger.debug("closing the etcd HTTP client failed: %s", exc)


__all__ = ["EtcdStore", "LeaseNotFound", "gateway_url"]
