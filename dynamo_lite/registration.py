"""Registration: what this worker writes into discovery, and takes back out.

Theory of operation
-------------------
The stock frontend learns about a worker from two records, both bound to
the worker's liveness (its etcd lease, or its files' mtimes):

the model card (``v1/mdc/…``)
    Which model is served, how to tokenise and template for it, with the
    BLAKE3 checksums of its files. It is written first, as soon as the
    engine has started: a frontend that sees an instance also finds its
    card. With a system port the card points at URLs the worker serves
    itself (``/v1/metadata/…``), so a frontend on another host needs no
    access to the model directory; the bytes are read once, when the card
    is built, so what is served always matches the checksums.
the instance record (``v1/instances/…``)
    Where to send requests (the request plane's ``transport`` entry) and
    with which codec. Written last, when the endpoint already accepts, so
    the first routed request finds it open; deleted first at shutdown, so
    the frontend stops routing here before anything else changes.

:class:`Registration` holds the keys of both and deletes each at most
once; deleting is idempotent and logged, never raised, because it runs on
the way out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from .card import ModelFiles, build_card, served_model_name, slugify
from .config import WorkerConfig
from .discovery import DiscoveryError, EndpointId, KvStore
from .discovery import keys as dkeys
from .engine import EngineConfig
from .netaddr import system_url_host, url_host
from .system_server import Response, SystemServer

logger = logging.getLogger(__name__)

__all__ = ["Registration", "build_model_card"]


async def build_model_card(
    config: WorkerConfig,
    engine_config: EngineConfig,
    *,
    tokens: bool,
    system_server: SystemServer | None,
    system_host: str,
    self_host: bool,
    enable_local_indexer: bool = False,
) -> dict[str, Any]:
    """Scan the model directory and build the card (serving its files when asked)."""
    model_dir = config.model_name or engine_config.model
    files = await asyncio.to_thread(functools.partial(ModelFiles.scan, model_dir, tokens=tokens))
    url_for = None
    if system_server is not None and self_host:
        url_for = await _serve_model_files(system_server, system_host, files, config, engine_config)
    elif system_server is None:
        logger.debug("no system port: the model card points at local file paths")
    return build_card(
        files, config, engine_config, url_for=url_for, enable_local_indexer=enable_local_indexer
    )


async def _serve_model_files(
    server: SystemServer,
    host: str,
    files: ModelFiles,
    config: WorkerConfig,
    engine_config: EngineConfig,
) -> Callable[[str], str]:
    """Serve the base model's files from the system server; returns name → URL."""
    slug = slugify(served_model_name(config, engine_config))
    prefix = f"/v1/metadata/{config.namespace}/{config.component}/{config.endpoint}/{slug}/_base/"
    return await serve_files(server, host, files, prefix)


async def serve_files(
    server: SystemServer, host: str, files: ModelFiles, prefix: str, *, first: bool = False
) -> Callable[[str], str]:
    """Serve ``files`` under ``prefix`` on the system server; returns name → URL.

    The bytes are read once, here, so what is served matches the card's
    checksums. ``first`` puts the route ahead of the others (a LoRA adapter's
    prefix lies under the base model's ``/v1/metadata/`` route).
    """
    contents = {
        name: await asyncio.to_thread(path.read_bytes)
        for name, (path, _checksum, _size) in files.files.items()
    }
    host = system_url_host(host)  # a wildcard bind: the address stock would choose
    base = f"http://{url_host(host)}:{server.port}{prefix}"

    def serve_file(method: str, path: str) -> Response:
        body = contents.get(path[len(prefix) :]) if path.startswith(prefix) else None
        if body is None:
            return Response(404, b"Not found")
        return Response(200, body, "application/octet-stream")

    if first:
        server.prefix_routes.insert(0, (prefix, serve_file))
    else:
        server.route("/v1/metadata/", serve_file, prefix=True)
    return lambda name: base + name


class Registration:
    """This worker's card and instance record in discovery."""

    def __init__(self, store: KvStore, endpoint_id: EndpointId, instance_id: int) -> None:
        self.store = store
        self.endpoint_id = endpoint_id
        self.instance_id = instance_id
        self.card: dict[str, Any] | None = None
        #: The keys written and not yet deleted (None: nothing to take back).
        self.card_key: str | None = None
        self.instance_key: str | None = None

    async def publish_card(self, card: dict[str, Any]) -> None:
        """Write (or rewrite) the model card."""
        self.card = card
        key = self.endpoint_id.mdc_key(self.instance_id)
        record = dkeys.mdc_record(self.endpoint_id, self.instance_id, card)
        await self.store.put(key, dkeys.dumps(record))
        self.card_key = key
        logger.debug("model registered with discovery")

    async def publish_instance(self, transport: dict[str, str], codec: str) -> None:
        """Write the instance record: from now on the frontend routes here."""
        record = dkeys.instance_record(self.endpoint_id, self.instance_id, transport, codec)
        key = self.endpoint_id.instance_key(self.instance_id)
        await self.store.put(key, dkeys.dumps(record))
        self.instance_key = key

    async def withdraw_instance(self) -> None:
        """Delete the instance record (once; later calls do nothing)."""
        key, self.instance_key = self.instance_key, None
        if key is None:
            return
        try:
            await self.store.delete(key)
            logger.info("Endpoint unregistered from discovery")
        except DiscoveryError as exc:
            logger.warning("discovery unregister failed error=%s", exc)

    async def withdraw_card(self) -> None:
        """Delete the model card (once; later calls do nothing)."""
        key, self.card_key = self.card_key, None
        if key is None:
            return
        try:
            await self.store.delete(key)
        except DiscoveryError as exc:
            logger.warning("model card delete failed error=%s", exc)
