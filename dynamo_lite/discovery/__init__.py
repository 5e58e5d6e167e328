"""Discovery: where workers publish their model card and instance record.

Backends: ``etcd`` (a lease per process; the JSON gateway over httpx by
default, gRPC with ``DYN_LITE_ETCD_CLIENT=grpc``), ``file`` (one file per key
under ``DYN_FILE_KV``, kept alive by mtime) and ``mem`` (in-process tests).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import RuntimeSettings
from .base import DiscoveryError, DiscoveryUnavailable, KvStore
from .file import FileStore
from .keys import EndpointId
from .memory import MemoryStore

__all__ = [
    "DiscoveryError",
    "DiscoveryUnavailable",
    "EndpointId",
    "EtcdGrpcStore",
    "EtcdLeaseStore",
    "EtcdStore",
    "FileStore",
    "KvStore",
    "LeaseNotFound",
    "MemoryStore",
    "TlsConfig",
    "grpc_available",
    "open_store",
]

if TYPE_CHECKING:
    from .etcd import EtcdStore
    from .etcd_base import EtcdLeaseStore, LeaseNotFound
    from .etcd_grpc import EtcdGrpcStore
    from .tls import TlsConfig

ETCD_CLIENTS = ("gateway", "grpc")


_LAZY = {
    "EtcdStore": ".etcd",
    "EtcdLeaseStore": ".etcd_base",
    "LeaseNotFound": ".etcd_base",
    "EtcdGrpcStore": ".etcd_grpc",
    "TlsConfig": ".tls",
}


def __getattr__(name: str) -> Any:
    # The etcd stores are imported on first use: a worker on the file backend
    # then never loads httpx, and grpc/etcd3aio (slow to import; etcd3aio also
    # edits sys.path) load only when the gRPC client is chosen.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def grpc_available() -> bool:
    """Whether the ``grpc`` extra (etcd3aio) can be imported."""
    from .etcd_grpc import grpc_available as available

    return available()


def open_store(
    backend: str,
    settings: RuntimeSettings | None = None,
    env: Mapping[str, str] | None = None,
) -> KvStore:
    """Build (not yet open) the store named by ``--discovery-backend``.

    As in stock, the value the engine passes (its ``--discovery-backend``)
    wins; ``DYN_DISCOVERY_BACKEND`` only fills in when it is empty. For etcd,
    besides ``settings`` (endpoints, TTL, startup timeout, lease-loss policy)
    this reads ``ETCD_AUTH_USERNAME``/``ETCD_AUTH_PASSWORD``,
    ``ETCD_AUTH_CA``/``ETCD_AUTH_CLIENT_CERT``/``ETCD_AUTH_CLIENT_KEY`` (PEM
    text or paths) and ``DYN_LITE_ETCD_CLIENT`` (``gateway`` or ``grpc``) from
    ``env`` (default: the process environment). Configuration errors raise
    :class:`DiscoveryError`.
    """
    env = os.environ if env is None else env
    settings = settings or RuntimeSettings.from_env(env)
    name = (backend or settings.discovery_backend or "etcd").lower()
    if name == "file":
        return FileStore(Path(settings.file_kv))
    if name == "etcd":
        client = (env.get("DYN_LITE_ETCD_CLIENT") or "gateway").strip().lower()
        if client not in ETCD_CLIENTS:
            raise DiscoveryError(
                f"DYN_LITE_ETCD_CLIENT={client!r} is not supported (gateway or grpc)"
            )
        from .etcd_base import EtcdLeaseStore  # noqa: F401 - names the type below
        from .tls import TlsConfig

        store_type: type[EtcdLeaseStore]
        if client == "grpc":
            from .etcd_grpc import EtcdGrpcStore

            store_type = EtcdGrpcStore
        else:
            from .etcd import EtcdStore

            store_type = EtcdStore
        return store_type(
            settings.etcd_endpoints,
            ttl=settings.etcd_lease_ttl,
            startup_timeout=settings.etcd_startup_timeout,
            recover=not settings.exit_on_lease_loss,
            username=env.get("ETCD_AUTH_USERNAME") or None,
            password=env.get("ETCD_AUTH_PASSWORD") or None,
            tls=TlsConfig.from_env(env),
        )
    if name in ("mem", "memory"):
        return MemoryStore()
    raise DiscoveryError(f"unsupported discovery backend {name!r} (etcd, file or mem)")
