"""The NATS request plane (``--request-plane nats``).

The worker advertises ``{"nats_tcp": "<subject>"}`` in its instance record,
with subject ``{namespace}_{component}.{endpoint}-{instance_id:x}``, and
subscribes to exactly that subject in queue group ``q``. Each request
message carries the same TwoPart payload as a TCP request frame, plus the
frame headers as NATS headers; the worker answers the NATS request at once
with an empty payload (the ack) and then streams the response over the TCP
call-home connection named in the payload, as with the TCP plane.

Unlike 1.6.1, which slugifies the subject it subscribes to but advertises the
raw one (so names with dots or capitals hang), we subscribe to the string we
advertise. Dots split NATS subject tokens, which is harmless here because the
frontend publishes to the same string.

Connection settings come from the stock variables: ``NATS_SERVER``,
``NATS_AUTH_USERNAME``/``NATS_AUTH_PASSWORD``, ``NATS_AUTH_TOKEN``,
``NATS_AUTH_NKEY``, ``NATS_AUTH_CREDENTIALS_FILE``, ``NATS_TLS_CA_CERT_PATH``,
``NATS_TLS_INSECURE``, ``NATS_TLS_CLIENT_CERT_PATH``/``NATS_TLS_CLIENT_KEY_PATH``
and ``NATS_STARTUP_CONNECT_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from ..envparse import parse_bool, parse_float, parse_list, parse_str
from .request_plane import Submitter

logger = logging.getLogger(__name__)

QUEUE_GROUP = "q"
_FORBIDDEN = frozenset(" \t\r\n*>")


class NatsError(Exception):
    """The NATS request plane cannot be used (unreachable, bad name, missing extra)."""


def subject_for(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    subject = f"{namespace}_{component}.{endpoint}-{instance_id:x}"
    if any(c in _FORBIDDEN for c in subject) or "" in subject.split("."):
        raise NatsError(
            f"{subject!r} is not a valid NATS subject (no spaces, '*', '>' or empty tokens)"
        )
    return subject


@dataclass(frozen=True)
class NatsSettings:
    servers: tuple[str, ...] = ("nats://localhost:4222",)
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed: str | None = None
    credentials: str | None = None
    tls_ca: str | None = None
    tls_insecure: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NatsSettings:
        return cls(
            servers=parse_list(env, "NATS_SERVER", ("nats://localhost:4222",)),
            user=parse_str(env, "NATS_AUTH_USERNAME"),
            password=parse_str(env, "NATS_AUTH_PASSWORD"),
            token=parse_str(env, "NATS_AUTH_TOKEN"),
            nkey_seed=parse_str(env, "NATS_AUTH_NKEY"),
            credentials=parse_str(env, "NATS_AUTH_CREDENTIALS_FILE"),
            tls_ca=parse_str(env, "NATS_TLS_CA_CERT_PATH"),
            tls_insecure=parse_bool(env, "NATS_TLS_INSECURE", False),
            tls_cert=parse_str(env, "NATS_TLS_CLIENT_CERT_PATH"),
            tls_key=parse_str(env, "NATS_TLS_CLIENT_KEY_PATH"),
            connect_timeout=parse_float(env, "NATS_STARTUP_CONNECT_TIMEOUT_SECONDS", 10.0),
        )

    def tls_context(self) -> ssl.SSLContext | None:
        configured = bool(self.tls_ca or self.tls_cert or self.tls_insecure)
        tls_urls = all(s.startswith("tls://") for s in self.servers)
        if configured and not tls_urls:
            # The stock runtime refuses this combination too; saying so beats
            # a handshake failure that names nothing.
            raise NatsError(
                "NATS TLS is configured (NATS_TLS_CA_CERT_PATH, NATS_TLS_INSECURE or a client "
                "certificate) but NATS_SERVER does not use the 'tls://' scheme"
            )
        if not configured and not tls_urls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    def connect_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "servers": list(self.servers),
            "connect_timeout": max(1, int(self.connect_timeout)),
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "name": "dynamo-lite-worker",
        }
        if self.user:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        if self.token:
            opts["token"] = self.token
        if self.credentials:
            opts["user_credentials"] = self.credentials
        if self.nkey_seed:
            if os.path.exists(self.nkey_seed):
                opts["nkeys_seed"] = self.nkey_seed
            else:
                opts["nkeys_seed_str"] = self.nkey_seed
        tls = self.tls_context()
        if tls is not None:
            opts["tls"] = tls
        return opts


class NatsRequestServer:
    """One NATS connection; serves endpoints by subject."""

    def __init__(self, settings: NatsSettings | None = None) -> None:
        #: From :class:`dynamo_lite.config.Settings`; None: the defaults.
        self.settings = settings or NatsSettings()
        self._nc: Any = None

    async def connect(self) -> None:
        try:
            import nats
        except ImportError as exc:  # nats-py is a dependency; guard anyway
            raise NatsError("the NATS request plane needs the nats-py package") from exc
        if (self.settings.credentials or self.settings.nkey_seed) and not _has_nkeys():
            raise NatsError(
                "NATS .creds/nkey authentication needs the `nkeys` package (pip install nkeys)"
            )

        async def on_error(exc: Exception) -> None:
            logger.warning("NATS: %s", exc)

        try:
            self._nc = await asyncio.wait_for(
                nats.connect(error_cb=on_error, **self.settings.connect_options()),
                self.settings.connect_timeout + 2,
            )
        except (TimeoutError, OSError, Exception) as exc:
            raise NatsError(
                f"cannot connect to NATS at {', '.join(self.settings.servers)}: {exc!r}"
            ) from exc

    async def serve(
        self,
        subject: str,
        endpoint: Submitter,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer requests on ``subject`` until cancelled, then unsubscribe, so the
        queue group routes elsewhere (or the frontend sees no responders at once).

        nats-py calls ``handle`` from its own per-subscription task; this
        service owns the subscription's lifetime.
        """
        if self._nc is None:
            raise NatsError("NATS is not connected")

        async def handle(msg: Any) -> None:
            headers = dict(msg.headers or {})
            rejection = endpoint.submit(msg.data, headers)
            if msg.reply:
                await msg.respond(b"" if rejection is None else rejection.encode())

        sub = await self._nc.subscribe(subject, queue=QUEUE_GROUP, cb=handle)
        try:
            await self._nc.flush(timeout=5)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                try:
                    await sub.unsubscribe()
                except Exception as exc:
                    logger.debug("NATS unsubscribe failed: %r", exc)

    async def close(self) -> None:
        """Close the connection (bounded, shielded); subscriptions end with it."""
        nc, self._nc = self._nc, None
        if nc is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                try:
                    await nc.close()
                except Exception as exc:
                    logger.debug("NATS close failed: %r", exc)


def _has_nkeys() -> bool:
    return importlib.util.find_spec("nkeys") is not None
