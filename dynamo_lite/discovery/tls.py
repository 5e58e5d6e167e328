"""etcd client TLS material (``ETCD_AUTH_CA``, ``ETCD_AUTH_CLIENT_CERT``,
``ETCD_AUTH_CLIENT_KEY``), shared by both etcd stores.

The stock runtime may read these variables as PEM *contents* rather than file
paths, so each value is accepted either way: one starting with
``-----BEGIN`` is PEM text, anything else is a path. The gRPC store hands the
bytes to gRPC; the gateway store builds an :class:`ssl.SSLContext`, for which
a client certificate given as text is written to a private (0700) temporary
directory just long enough for :meth:`ssl.SSLContext.load_cert_chain` to read
it, since that API only takes paths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .base import DiscoveryError

__all__ = ["EtcdClientTls", "Pem"]

ENV_CA = "ETCD_AUTH_CA"
ENV_CERT = "ETCD_AUTH_CLIENT_CERT"
ENV_KEY = "ETCD_AUTH_CLIENT_KEY"


@dataclass(frozen=True)
class Pem:
    """One PEM blob and, when it came from a file, that file's path."""

    data: bytes
    path: Path | None = None

    @classmethod
    def load(cls, what: str, value: str | bytes | os.PathLike[str]) -> Pem:
        if isinstance(value, bytes):
            if not value.lstrip().startswith(b"-----BEGIN"):
                raise DiscoveryError(f"{what}: bytes given but they are not PEM")
            return cls(value)
        text = os.fspath(value)
        if text.lstrip().startswith("-----BEGIN"):
            return cls(text.strip().encode() + b"\n")
        path = Path(text).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DiscoveryError(f"{what}: cannot read {path}: {exc}") from exc
        if b"-----BEGIN" not in data:
            raise DiscoveryError(f"{what}: {path} holds no PEM data")
        return cls(data, path)

    def __repr__(self) -> str:
        # Never print key material.
        return f"Pem(path={self.path!s}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class EtcdClientTls:
    """CA to verify etcd with (``None``: the system store) and an optional
    client certificate and key for mutual TLS."""

    ca: Pem | None = None
    cert: Pem | None = None
    key: Pem | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise DiscoveryError(
                f"etcd TLS needs both {ENV_CERT} and {ENV_KEY} (or neither) for a client cert"
            )

    @classmethod
    def from_values(
        cls,
        ca: str | bytes | os.PathLike[str] | None = None,
        cert: str | bytes | os.PathLike[str] | None = None,
        key: str | bytes | os.PathLike[str] | None = None,
    ) -> EtcdClientTls | None:
        """Each value is PEM text or a path; ``None``/empty means unset. Returns
        ``None`` when nothing is set."""
        if not ca and not cert and not key:
            return None
        return cls(
            ca=Pem.load(ENV_CA, ca) if ca else None,
            cert=Pem.load(ENV_CERT, cert) if cert else None,
            key=Pem.load(ENV_KEY, key) if key else None,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EtcdClientTls | None:
        return cls.from_values(
            env.get(ENV_CA, "").strip() or None,
            env.get(ENV_CERT, "").strip() or None,
            env.get(ENV_KEY, "").strip() or None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context()
            if self.ca is not None:
                ctx.load_verify_locations(cadata=self.ca.data.decode("ascii", errors="replace"))
            if self.cert is not None and self.key is not None:
                with self._files(self.cert, self.key) as (cert_path, key_path):
                    ctx.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise DiscoveryError(f"etcd TLS configuration is unusable: {exc}") from exc
        return ctx

    @staticmethod
    @contextlib.contextmanager
    def _files(cert: Pem, key: Pem) -> Iterator[tuple[str, str]]:
        if cert.path is not None and key.path is not None:
            yield str(cert.path), str(key.path)
            return
        directory = tempfile.mkdtemp(prefix="dynlite-etcd-tls-")  # mode 0700
        try:
            paths = []
            for name, pem in (("cert.pem", cert), ("key.pem", key)):
                path = os.path.join(directory, name)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(pem.data)
                paths.append(path)
            yield paths[0], paths[1]
        finally:
            shutil.rmtree(directory, ignore_errors=True)
