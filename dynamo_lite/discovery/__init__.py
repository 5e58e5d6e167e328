"""Discovery: where workers publish their model card and instance record.

Backends: ``etcd`` (a lease per process; the JSON gateway over httpx by
default, gRPC with ``DYN_LITE_ETCD_CLIENT=grpc``), ``file`` (one file per key
under ``DYN_FILE_KV``, kept alive by mtime) and ``mem`` (in-process tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DiscoverySettings, RuntimeSettings, process_environ
from .base import DiscoveryError, DiscoveryUnavailable, KvStore
from .file import FileStore
from .keys import EndpointId
from .memory import MemoryStore

__all__ = [
    "DiscoveryError",
    "DiscoveryUnavailable",
    "EndpointId",
    "EtcdClientTls",
    "EtcdGrpcStore",
    "EtcdLeaseStore",
    "EtcdOptions",
    "EtcdStore",
    "FileStore",
    "KvStore",
    "LeaseNotFound",
    "MemoryStore",
    "grpc_available",
    "open_store",
]

if TYPE_CHECKING:
    from .etcd import EtcdStore
    from .etcd_base import EtcdLeaseStore, EtcdOptions, LeaseNotFound
    from .etcd_grpc import EtcdGrpcStore
    from .tls import EtcdClientTls

ETCD_CLIENTS = ("gateway", "grpc")


_LAZY = {
    "EtcdStore": ".etcd",
    "EtcdLeaseStore": ".etcd_base",
    "EtcdOptions": ".etcd_base",
    "LeaseNotFound": ".etcd_base",
    "EtcdGrpcStore": ".etcd_grpc",
    "EtcdClientTls": ".tls",
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
    env: DiscoverySettings | Mapping[str, str] | None = None,
) -> KvStore:
    """Build (not yet open) the store named by ``--discovery-backend``.

    As in stock, the value the engine passes (its ``--discovery-backend``)
    wins; ``DYN_DISCOVERY_BACKEND`` only fills in when it is empty. For etcd,
    besides ``settings`` (endpoints, TTL, startup timeout, lease-loss policy)
    this reads ``ETCD_AUTH_USERNAME``/``ETCD_AUTH_PASSWORD``,
    ``ETCD_AUTH_CA``/``ETCD_AUTH_CLIENT_CERT``/``ETCD_AUTH_CLIENT_KEY`` (PEM
    text or paths) and ``DYN_LITE_ETCD_CLIENT`` (``gateway`` or ``grpc``) from
    ``env``: the :class:`~dynamo_lite.config.DiscoverySettings` the worker
    read, or an environment mapping to read both from (default: the process
    environment, through the configuration layer). Configuration errors raise
    :class:`DiscoveryError`.
    """
    if isinstance(env, DiscoverySettings):
        discovery = env
        settings = settings or RuntimeSettings()
    else:
        source = process_environ() if env is None else env
        discovery = DiscoverySettings.from_env(source)
        settings = settings or RuntimeSettings.from_env(source)
    name = (backend or settings.discovery_backend or "etcd").lower()
    if name == "file":
        return FileStore(Path(settings.file_kv))
    if name == "etcd":
        client = discovery.etcd_client
        if client not in ETCD_CLIENTS:
            raise DiscoveryError(
                f"DYN_LITE_ETCD_CLIENT={client!r} is not supported (gateway or grpc)"
            )
        from .etcd_base import EtcdLeaseStore, EtcdOptions  # noqa: F401 - names the type below
        from .tls import EtcdClientTls

        store_type: type[EtcdLeaseStore]
        if client == "grpc":
            from .etcd_grpc import EtcdGrpcStore

            store_type = EtcdGrpcStore
        else:
            from .etcd import EtcdStore

            store_type = EtcdStore
        options = EtcdOptions(
            endpoints=settings.etcd_endpoints,
            ttl=settings.etcd_lease_ttl,
            startup_timeout=settings.etcd_startup_timeout,
            recover=not settings.exit_on_lease_loss,
            username=discovery.username,
            password=discovery.password,
            tls=EtcdClientTls.from_values(discovery.tls_ca, discovery.tls_cert, discovery.tls_key),
        )
        return store_type(options)
    if name in ("mem", "memory"):
        return MemoryStore()
    raise DiscoveryError(f"unsupported discovery backend {name!r} (etcd, file or mem)")
