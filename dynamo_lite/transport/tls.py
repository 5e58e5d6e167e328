"""TLS for the TCP request plane and the TCP response stream.

The stock runtime reads the same variables in the frontend and the worker,
each process using the half that fits its role:

* ``DYN_TCP_TLS_CERT_PATH`` / ``DYN_TCP_TLS_KEY_PATH`` — the certificate a TCP
  *server* presents (the worker's request-plane listener; the frontend's
  response-stream listener);
* ``DYN_TCP_TLS_CLIENT_CA_CERT_PATH`` — when set, that server requires client
  certificates signed by this CA (mutual TLS);
* ``DYN_TCP_TLS_CA_CERT_PATH`` — the CA a TCP *client* verifies its peer with
  (``DYN_TCP_TLS_INSECURE=1`` skips verification, for development only);
* ``DYN_TCP_TLS_CLIENT_CERT_PATH`` / ``DYN_TCP_TLS_CLIENT_KEY_PATH`` — the
  certificate a client presents for mutual TLS;
* ``DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS`` — bound on every handshake (3 s).

A plaintext or wrongly certified peer fails the handshake and is dropped.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from ..envparse import parse_bool, parse_float, parse_str


class TlsConfigError(ValueError):
    """The TLS variables are inconsistent or the files cannot be loaded."""


@dataclass(frozen=True)
class TcpTls:
    """TLS for the TCP request plane and the response stream (``DYN_TCP_TLS_*``)."""

    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure: bool = False
    handshake_timeout: float = 3.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TcpTls:
        return cls(
            cert=parse_str(env, "DYN_TCP_TLS_CERT_PATH"),
            key=parse_str(env, "DYN_TCP_TLS_KEY_PATH"),
            client_ca=parse_str(env, "DYN_TCP_TLS_CLIENT_CA_CERT_PATH"),
            ca=parse_str(env, "DYN_TCP_TLS_CA_CERT_PATH"),
            client_cert=parse_str(env, "DYN_TCP_TLS_CLIENT_CERT_PATH"),
            client_key=parse_str(env, "DYN_TCP_TLS_CLIENT_KEY_PATH"),
            insecure=parse_bool(env, "DYN_TCP_TLS_INSECURE", False),
            handshake_timeout=parse_float(
                env, "DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS", 3.0, allow_zero=False
            ),
        )

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca or self.insecure or self.client_cert)

    def server_context(self) -> ssl.SSLContext | None:
        """For listeners; None when no server certificate is configured."""
        if not self.cert:
            if self.client_ca:
                raise TlsConfigError("DYN_TCP_TLS_CLIENT_CA_CERT_PATH needs DYN_TCP_TLS_CERT_PATH")
            return None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cert, self.key)
            if self.client_ca:
                ctx.load_verify_locations(self.client_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"cannot load the TCP server certificate: {exc}") from exc
        return ctx

    def client_context(self) -> ssl.SSLContext | None:
        """For outgoing connections; None when TLS is not configured for clients."""
        if not (self.ca or self.insecure or self.client_cert):
            return None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
            if self.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.client_cert:
                ctx.load_cert_chain(self.client_cert, self.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"cannot load the TCP client TLS material: {exc}") from exc
        return ctx
