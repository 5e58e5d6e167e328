"""Discovery: where workers publish their model card and instance record."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import RuntimeSettings
from .base import DiscoveryError, DiscoveryUnavailable, KvStore
from .etcd import EtcdStore
from .file import FileStore
from .keys import EndpointId
from .memory import MemoryStore

__all__ = [
    "DiscoveryError",
    "DiscoveryUnavailable",
    "EndpointId",
    "EtcdStore",
    "FileStore",
    "KvStore",
    "MemoryStore",
    "open_store",
]


def open_store(backend: str, settings: RuntimeSettings | None = None) -> KvStore:
    """Build (not yet open) the store named by ``--discovery-backend``.

    As in stock, the value the engine passes (its ``--discovery-backend``)
    wins; ``DYN_DISCOVERY_BACKEND`` only fills in when it is empty.
    """
    settings = settings or RuntimeSettings.from_env()
    name = (backend or settings.discovery_backend or "etcd").lower()
    if name == "file":
        return FileStore(Path(settings.file_kv))
    if name == "etcd":
        return EtcdStore(
            settings.etcd_endpoints,
            ttl=settings.etcd_lease_ttl,
            startup_timeout=settings.etcd_startup_timeout,
            recover=not settings.exit_on_lease_loss,
            username=os.environ.get("ETCD_AUTH_USERNAME") or None,
            password=os.environ.get("ETCD_AUTH_PASSWORD") or None,
        )
    if name in ("mem", "memory"):
        return MemoryStore()
    raise DiscoveryError(f"unsupported discovery backend {name!r} (etcd, file or mem)")
