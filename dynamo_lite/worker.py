"""The Worker: runs one engine through the lifecycle in :mod:`dynamo_lite.lifecycle`.

This module is the orchestration; the states, the legal transitions and the
invariants live in :mod:`dynamo_lite.lifecycle`, the per-request protocol in
:mod:`dynamo_lite.endpoint`, and discovery in :mod:`dynamo_lite.discovery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .canary import HealthMonitor, HealthSettings, resolve_payload
from .card import ModelFiles, build_card, served_model_name, slugify
from .config import DisaggregationMode, ModelInput, RuntimeSettings, WorkerConfig, detect_host
from .discovery import DiscoveryError, EndpointId, KvStore, open_store
from .discovery import keys as dkeys
from .endpoint import Endpoint
from .engine import BaseEngine, EngineConfig, LlmRegistration, RawEngine
from .errors import InvalidArgument
from .kv.routing import KvRouting, start_publishing
from .lifecycle import EXIT_FAILURE, EXIT_OK, EXIT_WATCHDOG, Lifecycle, Reason, State
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import WorkerMetrics
from .system_server import Health, Response, SystemServer
from .transport.nats_plane import NatsError, NatsRequestPlane, subject_for
from .transport.request_plane import RequestPlaneServer
from .transport.tls import TcpTls, TlsConfigError

logger = logging.getLogger("dynamo_lite.worker")

#: When a second signal hurries the shutdown, cleanup() gets this long.
HURRIED_CLEANUP_BOUND = 5.0
#: Teardown phase 2: how long cut streams get to flush before their tasks are cancelled.
TEARDOWN_JOIN_BOUND = 2.0
#: Prefill drain: how often is_quiescent() is polled.
QUIESCENT_POLL = 0.5


@dataclass(frozen=True)
class EndpointHandle:
    """What ``on_endpoint_ready`` receives: the served endpoint's identity."""

    namespace: str
    component: str
    name: str
    instance_id: int

    @property
    def path(self) -> str:
        return f"{self.namespace}.{self.component}.{self.name}"


class _SnapshotPublisher:
    """Receives per-rank snapshots; the latest one per rank is kept for /metrics."""

    def __init__(self, ranks: list[int], forward: Callable[[int, Any], None] | None = None) -> None:
        self.latest: dict[int, Any] = {r: None for r in ranks}
        self._forward = forward

    def publish(self, rank: int, snapshot: Any) -> None:
        self.latest[rank] = snapshot
        if self._forward is not None:
            self._forward(rank, snapshot)


def _as_engine_config(value: Any) -> EngineConfig:
    if isinstance(value, EngineConfig):
        return value
    model = getattr(value, "model", None)
    if not isinstance(model, str):
        raise InvalidArgument("start() must return an EngineConfig (or an object with .model)")
    llm = getattr(value, "llm", None)
    return EngineConfig(
        model=model,
        served_model_name=getattr(value, "served_model_name", None),
        runtime_data=getattr(value, "runtime_data", None),
        llm=llm if isinstance(llm, LlmRegistration) else None,
        model_aliases=list(getattr(value, "model_aliases", None) or []),
    )


class Worker:
    """Serve one engine until told to stop; :meth:`run` returns the exit status."""

    def __init__(
        self,
        engine: BaseEngine,
        config: WorkerConfig,
        *,
        settings: RuntimeSettings | None = None,
        store: KvStore | None = None,
        handle_signals: bool = True,
        hard_exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.engine = engine
        self.config = config
        self.settings = settings or RuntimeSettings.from_env()
        self.lifecycle = Lifecycle()
        self.handle_signals = handle_signals
        self._hard_exit = hard_exit
        self._store = store
        self.endpoint_id = EndpointId(config.namespace, config.component, config.endpoint)
        self.endpoint = Endpoint(engine, config.endpoint, raw=isinstance(engine, RawEngine))
        self.endpoint.disagg_role = config.disaggregation_mode.value
        self.server: RequestPlaneServer | None = None
        self.nats: NatsRequestPlane | None = None
        self._nats_subject: str | None = None
        self.instance_id: int | None = None
        self.engine_config: EngineConfig | None = None
        self.card: dict[str, Any] | None = None
        self.health = Health()
        self.system_server: SystemServer | None = None
        self.advertised: tuple[str, int] | None = None
        self.timings: dict[str, float] = {}
        self.lease_recoveries = 0
        self.lease_losses = 0
        #: The latest per-rank snapshots, when the engine declared dp ranks.
        self.snapshots: _SnapshotPublisher | None = None
        self.health_settings = HealthSettings.from_env()
        #: Canary and stall detector; created at registration.
        self.monitor: HealthMonitor | None = None
        self.metrics = WorkerMetrics(self)
        self._watchdog: asyncio.TimerHandle | None = None
        self._signals_installed: list[int] = []
        self._instance_key: str | None = None
        self._mdc_key: str | None = None
        #: KV events, load metrics and the local indexer (:mod:`dynamo_lite.kv`).
        self.kv = KvRouting()

    @property
    def lease_renewals(self) -> int:
        return int(getattr(self._store, "renewals", 0) or 0)

    @property
    def store(self) -> KvStore:
        if self._store is None:
            self._store = open_store(self.config.discovery_backend, self.settings)
        return self._store

    # --- signals -------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig, reason in ((signal.SIGTERM, Reason.SIGTERM), (signal.SIGINT, Reason.SIGINT)):
            loop.add_signal_handler(sig, self.request_shutdown, reason)
            self._signals_installed.append(sig)
        _guard_engine_signal_handlers(loop)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals_installed:
            loop.remove_signal_handler(sig)
        self._signals_installed.clear()

    def request_shutdown(self, reason: Reason = Reason.SIGTERM) -> None:
        """First call: graceful shutdown. Later calls: hurry it."""
        if reason in (Reason.SIGTERM, Reason.SIGINT):
            logger.info("%s received", reason.value)
        first = self.lifecycle.request_shutdown(reason)
        if first:
            # Readiness drops from the very first probe after the signal.
            self._withdraw_readiness()
            self._arm_watchdog()
        else:
            logger.info("second shutdown request; skipping the rest of grace and drain")

    @property
    def ready(self) -> bool:
        return self.health.ready

    def _withdraw_readiness(self) -> None:
        self.health.shutting_down = True
        if self.config.endpoint in self.health.endpoints:
            self.health.set_endpoint(self.config.endpoint, False)

    def _arm_watchdog(self) -> None:
        budget = self.settings.shutdown_timeout + self.settings.grace_period
        logger.debug(
            "graceful shutdown started; deadline %ss (%ss timeout + %.2fs grace)",
            budget,
            self.settings.shutdown_timeout,
            self.settings.grace_period,
        )
        self._watchdog = asyncio.get_running_loop().call_later(budget, self._watchdog_fired, budget)

    def _watchdog_fired(self, budget: float) -> None:
        logger.error(
            "Graceful shutdown exceeded %gs; force-exiting with code %d. "
            "Set DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT to override.",
            budget,
            EXIT_WATCHDOG,
        )
        self._hard_exit(EXIT_WATCHDOG)

    # --- run -------------------------------------------------------------------
    async def run(self) -> int:
        lc = self.lifecycle
        lc.to(State.CONNECTING, Reason.RUN)
        self._install_signal_handlers()
        try:
            return await self._run()
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._remove_signal_handlers()

    async def _run(self) -> int:
        lc = self.lifecycle
        try:
            connected = await self._until_shutdown(self._connect())
        except (DiscoveryError, NatsError, OSError) as exc:
            logger.error("cannot start: %s", exc)
            lc.to(State.FAILED, Reason.DISCOVERY_UNREACHABLE, error=str(exc))
            return await self._finish_failed(Reason.DISCOVERY_UNREACHABLE)
        if not connected or lc.shutdown_requested:
            # A signal before start(): nothing was started, nothing to clean up.
            lc.to(State.TEARDOWN, Reason.SIGNAL_BEFORE_START)
            await self._teardown()
            lc.to(State.STOPPED, Reason.TORN_DOWN)
            return EXIT_OK
        assert self.instance_id is not None
        lc.to(State.STARTING, Reason.CONNECTED, worker_id=self.instance_id)
        t0 = time.monotonic()
        try:
            self.engine_config = _as_engine_config(await self.engine.start(self.instance_id))
        except Exception as exc:
            logger.error("engine.start() failed: %s: %s", type(exc).__name__, exc)
            lc.to(State.FAILED, Reason.START_FAILED, error=f"{type(exc).__name__}: {exc}")
            return await self._finish_failed(Reason.START_FAILED)
        self.timings["model_load"] = time.monotonic() - t0
        if not lc.shutdown_requested:
            lc.to(
                State.REGISTERING,
                Reason.STARTED,
                model=self.engine_config.model,
                model_load_time_seconds=round(self.timings["model_load"], 6),
            )
            try:
                await self._register()
            except Exception as exc:
                logger.error("setup failed: %s: %s", type(exc).__name__, exc)
                lc.to(State.FAILED, Reason.SETUP_FAILED, error=f"{type(exc).__name__}: {exc}")
                return await self._finish_failed(Reason.SETUP_FAILED)
            if not lc.shutdown_requested:
                lc.to(State.SERVING, Reason.REGISTERED, instance_id=f"{self.instance_id:x}")
                await lc.wait_shutdown()
        return await self._shutdown()

    async def _until_shutdown(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Run ``coro`` unless a shutdown request comes first (then cancel it)."""
        task = asyncio.ensure_future(coro)
        waiter = asyncio.ensure_future(self.lifecycle.wait_shutdown())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DiscoveryError, OSError):
            await task
        return False

    # --- discovery liveness ------------------------------------------------------
    async def _on_lease_lost(self, reason: str) -> None:
        self.lease_losses += 1
        logger.error("discovery liveness lost (%s); shutting down", reason)
        self.request_shutdown(Reason.LEASE_LOST)

    async def _on_lease_recovered(self, reason: str) -> None:
        self.lease_recoveries += 1
        logger.warning("discovery liveness restored (%s); still serving", reason)

    # --- startup ---------------------------------------------------------------
    async def _connect(self) -> None:
        s = self.settings
        plane = (self.config.request_plane or "tcp").lower()
        if plane not in ("tcp", "nats"):
            raise DiscoveryError(f"request plane {plane!r} is not supported (tcp or nats)")
        if s.system_port is not None:
            # Up first, answering 503 while the engine starts (as stock).
            self.system_server = SystemServer(s.system_host, s.system_port, self.health)
            self.system_server.serve_metrics(self.metrics.render, METRICS_CONTENT_TYPE)
            await self.system_server.start()
        self.endpoint.max_inflight = s.max_inflight
        self.endpoint.write_stall_timeout = s.write_stall_timeout
        tls = TcpTls.from_env()
        try:
            self.endpoint.call_home_ssl = tls.client_context()
            server_ssl = tls.server_context()
        except TlsConfigError as exc:
            raise DiscoveryError(str(exc)) from exc
        if plane == "nats":
            self.nats = NatsRequestPlane()
            await self.nats.connect()
        else:
            host = s.tcp_host
            self.server = RequestPlaneServer(
                host or "0.0.0.0",
                s.tcp_port,
                max_message_size=s.max_message_size,
                ssl_context=server_ssl,
                ssl_handshake_timeout=tls.handshake_timeout,
                frame_timeout=s.frame_timeout,
                idle_timeout=s.idle_timeout,
                max_connections=s.max_connections,
            )
            port = await self.server.start()
            self.advertised = (host or detect_host(), port)
        self.store.on_lost = self._on_lease_lost
        self.store.on_recovered = self._on_lease_recovered
        self.instance_id = await self.store.open()
        logger.debug(
            "distributed runtime connected backend=%s instance_id=%x",
            self.store.backend,
            self.instance_id,
        )

    def _validate_model_input(self) -> None:
        raw = isinstance(self.engine, RawEngine)
        mi = self.config.model_input
        if not raw and mi is not ModelInput.Tokens:
            raise InvalidArgument(f"an LLMEngine needs model_input Tokens, not {mi}")
        if raw and mi is ModelInput.Tokens:
            raise InvalidArgument("a RawEngine needs model_input Text or Tensor")
        mode = self.config.disaggregation_mode
        if self.config.route_to_encoder and mode not in (
            DisaggregationMode.AGGREGATED,
            DisaggregationMode.PREFILL,
        ):
            raise InvalidArgument("route_to_encoder is only valid for agg or prefill workers")

    async def _register(self) -> None:
        engine = self.engine
        cfg = self.config
        assert self.instance_id is not None and self.engine_config is not None
        self._validate_model_input()
        await engine.register_prometheus(self.metrics.engine_metrics())
        ranks = list(engine.component_metrics_dp_ranks())
        self.kv = await start_publishing(self, ranks)
        # As stock: with KV routing off there is no snapshot publisher either.
        if ranks and cfg.enable_kv_routing:
            self.snapshots = _SnapshotPublisher(ranks, self.kv.on_snapshot)
            engine.attach_snapshot_publisher(self.snapshots)
        model_dir = cfg.model_name or self.engine_config.model
        files = await asyncio.to_thread(
            functools.partial(ModelFiles.scan, model_dir, tokens=not self.endpoint.raw)
        )
        self.card = build_card(
            files,
            cfg,
            self.engine_config,
            url_for=await self._self_host(files),
            enable_local_indexer=self.kv.enable_local_indexer,
        )
        logger.debug("local model built")
        handle = EndpointHandle(cfg.namespace, cfg.component, cfg.endpoint, self.instance_id)
        await engine.on_endpoint_ready(handle)
        ep = self.endpoint_id
        self._mdc_key = ep.mdc_key(self.instance_id)
        await self.store.put(
            self._mdc_key, dkeys.dumps(dkeys.mdc_record(ep, self.instance_id, self.card))
        )
        logger.debug("model registered with discovery")
        await self.kv.register_recovery()
        engine.supported_controls()
        engine.supported_updates()
        payload = await resolve_payload(engine, cfg)
        self.monitor = HealthMonitor(
            engine, self.endpoint, self.health, self.health_settings, payload
        )
        # Open the endpoint before advertising it so the first request finds it.
        self.endpoint.accepting = True
        transport: dict[str, str]
        if self.nats is not None:
            self._nats_subject = subject_for(
                cfg.namespace, cfg.component, cfg.endpoint, self.instance_id
            )
            await self.nats.serve(self._nats_subject, self.endpoint)
            transport = {"nats_tcp": self._nats_subject}
        else:
            assert self.server is not None and self.advertised is not None
            self.server.endpoints[ep.endpoint_path(self.instance_id)] = self.endpoint
            host, port = self.advertised
            transport = dkeys.tcp_transport(host, port, ep, self.instance_id)
        record = dkeys.instance_record(ep, self.instance_id, transport, self.settings.request_codec)
        self._instance_key = ep.instance_key(self.instance_id)
        await self.store.put(self._instance_key, dkeys.dumps(record))
        # With the canary on, the endpoint is ready once a probe or a request succeeds.
        self.health.set_endpoint(cfg.endpoint, not self.monitor.canary_active)
        self.health.serving = True
        self.monitor.start()
        logger.info("Serving %s on %s", self.card["display_name"], ep)

    async def _self_host(self, files: ModelFiles) -> Callable[[str], str] | None:
        """Serve the model files from the system server and return their URLs.

        As in stock: on whenever the system server runs, unless
        ``DYN_SELF_HOST_METADATA=0``. A frontend on another host then needs no
        access to the model directory. The bytes are read once, here, so what
        is served always matches the checksums in the card.
        """
        server = self.system_server
        if server is None:
            logger.debug("no system port: the model card points at local file paths")
            return None
        if os.environ.get("DYN_SELF_HOST_METADATA", "1").strip().lower() in ("0", "false"):
            return None
        contents = {
            name: await asyncio.to_thread(path.read_bytes)
            for name, (path, _checksum, _size) in files.files.items()
        }
        cfg = self.config
        slug = slugify(served_model_name(cfg, self.engine_config))
        prefix = f"/v1/metadata/{cfg.namespace}/{cfg.component}/{cfg.endpoint}/{slug}/_base/"
        host = self.settings.system_host
        if host in ("", "0.0.0.0", "::"):
            host = detect_host()
        base = f"http://{host}:{server.port}{prefix}"

        def serve_file(method: str, path: str) -> Response:
            body = contents.get(path[len(prefix) :]) if path.startswith(prefix) else None
            if body is None:
                return Response(404, b"Not found")
            return Response(200, body, "application/octet-stream")

        server.route("/v1/metadata/", serve_file, prefix=True)
        return lambda name: base + name

    # --- shutdown --------------------------------------------------------------
    async def _unregister_instance(self) -> None:
        key, self._instance_key = self._instance_key, None
        if key is None:
            return
        try:
            await self.store.delete(key)
            logger.info("Endpoint unregistered from discovery")
        except DiscoveryError as exc:
            logger.warning("discovery unregister failed error=%s", exc)

    async def _shutdown(self) -> int:
        lc = self.lifecycle
        s = self.settings
        reason = lc.shutdown_reason or Reason.SIGTERM
        lc.to(State.GRACE, reason)
        self._withdraw_readiness()
        await self._unregister_instance()
        if self.monitor is not None:
            await self.monitor.stop()
        if s.grace_period > 0 and not lc.hurried:
            logger.info("Grace period %.2fs before drain", s.grace_period)
        slept = await lc.sleep_unless_hurried(s.grace_period)
        lc.to(State.DRAINING, Reason.GRACE_ELAPSED if slept else Reason.SECOND_SIGNAL)
        self.endpoint.unavailable_detail = "worker is draining"
        self.endpoint.accepting = False
        if self.nats is not None and self._nats_subject is not None:
            # Over NATS, leaving the queue group is the "unavailable" answer.
            await self.nats.stop_serving(self._nats_subject)
        t0 = time.monotonic()
        drain_reason = await self._drain()
        self.timings["drain"] = time.monotonic() - t0
        if drain_reason is not Reason.DRAINED:
            # Streams the drain could not finish end now, with an explicit error
            # item, before cleanup() takes the engine away from under them.
            self._cut_streams("worker shutting down before the request finished")
        lc.to(State.CLEANING, drain_reason, drain_time_seconds=round(self.timings["drain"], 6))
        cleanup_reason = await self._cleanup()
        lc.to(State.TEARDOWN, cleanup_reason)
        await self._teardown()
        lc.to(State.STOPPED, Reason.TORN_DOWN, exit_code=lc.exit_code)
        return lc.exit_code

    def _cut_streams(self, reason: str) -> None:
        cut = self.endpoint.cut(reason)
        if cut:
            logger.warning("cut %d in-flight stream(s) with an error item: %s", cut, reason)

    async def _drain(self) -> Reason:
        """Let in-flight requests finish (bounded); prefill: wait for quiescence."""
        lc = self.lifecycle
        if lc.hurried:
            return Reason.SECOND_SIGNAL
        s = self.settings
        budget = s.drain_budget()
        inflight = len(self.endpoint.requests)
        if inflight:
            logger.info(
                "drain: waiting for %d in-flight request(s) (budget %.1fs)", inflight, budget
            )
        hurry = asyncio.ensure_future(lc.wait_hurry())
        join = asyncio.ensure_future(self.endpoint.join(budget))
        try:
            await asyncio.wait({join, hurry}, return_when=asyncio.FIRST_COMPLETED)
            if not join.done():
                return Reason.SECOND_SIGNAL
            if not join.result():
                logger.warning("drain: in-flight requests still running after %.1fs", budget)
                return Reason.DRAIN_TIMEOUT
            if self.config.disaggregation_mode is DisaggregationMode.PREFILL and not (
                await self._wait_quiescent(time.monotonic() + s.prefill_drain_budget())
            ):
                return Reason.SECOND_SIGNAL if lc.hurried else Reason.DRAIN_TIMEOUT
            try:
                await self.engine.drain()
            except Exception as exc:
                logger.warning("engine.drain() raised: %r", exc)
        finally:
            for fut in (join, hurry):
                fut.cancel()
            await asyncio.gather(join, hurry, return_exceptions=True)
        return Reason.DRAINED

    async def _wait_quiescent(self, deadline: float) -> bool:
        announced = False
        start = time.monotonic()
        while True:
            try:
                quiet = await self.engine.is_quiescent()
            except Exception as exc:
                logger.debug("is_quiescent raised: %r", exc)
                quiet = False
            if quiet is True:
                if announced:
                    logger.info(
                        "drain: exited (quiescent, elapsed=%.1fs)", time.monotonic() - start
                    )
                return True
            if not announced:
                announced = True
                logger.info(
                    "drain: waiting for prefill to quiesce; polling is_quiescent (timeout=%.1fs)",
                    max(0.0, deadline - start),
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "drain: timed out at %.1fs; proceeding with cleanup", time.monotonic() - start
                )
                return False
            if not await self.lifecycle.sleep_unless_hurried(min(QUIESCENT_POLL, remaining)):
                return False

    async def _cleanup(self) -> Reason:
        if not self.lifecycle.claim_cleanup():
            return Reason.NOTHING_TO_CLEAN
        t0 = time.monotonic()
        bound = HURRIED_CLEANUP_BOUND if self.lifecycle.hurried else None
        try:
            async with asyncio.timeout(bound):
                await self.engine.cleanup()
            logger.info("Engine cleanup complete")
            reason = Reason.CLEANED
        except TimeoutError:
            logger.error("engine cleanup failed error=timed out after %.1fs", bound)
            reason = Reason.CLEANUP_FAILED
        except Exception as exc:
            logger.error("engine cleanup failed error=%s: %s", type(exc).__name__, exc)
            reason = Reason.CLEANUP_FAILED
        self.timings["cleanup"] = time.monotonic() - t0
        return reason

    async def _teardown(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
        # Phase 1: streams still open end with an explicit error item.
        self.endpoint.accepting = False
        self._cut_streams("worker shutting down")
        # Phase 2: give their tasks a moment to flush, then cancel what is left.
        await self.endpoint.join(TEARDOWN_JOIN_BOUND)
        await self.endpoint.close()
        # Phase 3: close the listener, delete the card, release liveness.
        if self.server is not None:
            self.server.endpoints.clear()
            await self.server.close()
        if self.nats is not None:
            await self.nats.close()
        await self._unregister_instance()
        await self.kv.close()
        if self._mdc_key is not None and self._store is not None:
            try:
                await self._store.delete(self._mdc_key)
            except DiscoveryError as exc:
                logger.warning("model card delete failed error=%s", exc)
            self._mdc_key = None
        if self._store is not None:
            try:
                await self._store.close()
            except DiscoveryError as exc:
                logger.warning("discovery close failed error=%s", exc)
        if self.system_server is not None:
            await self.system_server.close()

    async def _finish_failed(self, reason: Reason) -> int:
        lc = self.lifecycle
        lc.to(State.CLEANING, reason)
        reason = await self._cleanup()
        lc.to(State.TEARDOWN, reason)
        await self._teardown()
        lc.to(State.STOPPED, Reason.TORN_DOWN, exit_code=EXIT_FAILURE)
        return EXIT_FAILURE


def _guard_engine_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    """Keep engines from replacing the worker's SIGTERM/SIGINT handling."""
    original = loop.add_signal_handler
    if getattr(original, "_dynamo_lite_guard", False):
        return
    owned = frozenset({signal.SIGINT, signal.SIGTERM})

    def add_signal_handler(sig: int, callback: Callable[..., object], *args: Any) -> None:
        if sig in owned:
            logger.info(
                "Suppressed engine loop.add_signal_handler(%s); the worker owns shutdown", sig
            )
            return None
        return original(sig, callback, *args)

    add_signal_handler._dynamo_lite_guard = True  # type: ignore[attr-defined]
    loop.add_signal_handler = add_signal_handler  # type: ignore[method-assign,assignment]
