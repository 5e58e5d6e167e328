"""The Worker: runs one engine through the lifecycle in :mod:`dynamo_lite.lifecycle`.

This module is the orchestration; the states, the legal transitions and the
invariants live in :mod:`dynamo_lite.lifecycle`, the per-request protocol in
:mod:`dynamo_lite.endpoint`, and discovery in :mod:`dynamo_lite.discovery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import nullcontext
from typing import Any

import anyio
import anyio.abc

from .admission import EngineGate
from .canary import HealthMonitor, resolve_payload
from .card import served_model_name
from .config import (
    DisaggregationMode,
    ModelInput,
    RuntimeSettings,
    Settings,
    WorkerConfig,
    as_settings,
)
from .discovery import DiscoveryError, EndpointId, KvStore, open_store
from .endpoint import Endpoint
from .engine import BaseEngine, EngineConfig, LlmRegistration, RawEngine
from .engine_routes import EngineRoutes, InstanceSwitch, ServingEndpoint, before_routes
from .errors import InvalidArgument
from .kv.routing import KvRouting, start_publishing
from .lifecycle import (
    EXIT_WATCHDOG,
    BadTlsSettings,
    DiscoveryUnreachable,
    EngineStartFailed,
    IllegalTransition,
    Lifecycle,
    Reason,
    SetupFailed,
    StartupError,
    State,
    UnknownRequestPlane,
    check_response_plane,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import WorkerMetrics
from .netaddr import bind_and_advertise
from .registration import Registration, build_model_card
from .signals import Watchdog, captured_signals
from .stats import WorkerStats
from .system_server import HealthStatus, SystemServer
from .tasks import Service, start_service
from .transport.planes import RequestPlane, TcpPlane, open_plane
from .transport.tls import TlsConfigError

logger = logging.getLogger("dynamo_lite.worker")

#: When a second signal hurries the shutdown, cleanup() gets this long.
HURRIED_CLEANUP_BOUND = 5.0
#: Teardown phase 2: how long cut streams get to flush before their tasks are cancelled.
TEARDOWN_JOIN_BOUND = 2.0
#: Prefill drain: how often is_quiescent() is polled.
QUIESCENT_POLL = 0.5


class _SnapshotPublisher:
    """Receives per-rank snapshots; the latest one per rank is kept for /metrics."""

    def __init__(self, ranks: list[int], forward: Callable[[int, Any], None] | None = None) -> None:
        self.latest: dict[int, Any] = {r: None for r in ranks}
        self._forward = forward

    def publish(self, rank: int, snapshot: Any) -> None:
        self.latest[rank] = snapshot
        if self._forward is not None:
            self._forward(rank, snapshot)


def _worker_stats(config: WorkerConfig, endpoint: Endpoint, health: HealthStatus) -> WorkerStats:
    """The worker's stats: its labels, the endpoint's counters, the health status's view."""
    return WorkerStats(
        namespace=config.namespace,
        component=config.component,
        endpoint_name=config.endpoint,
        metrics_labels=config.metrics_labels,
        endpoint=endpoint.stats,
        pool_capacity=endpoint.max_inflight,
        started=health.started,
        ready=lambda: health.ready,
    )


def _renewals_of(store: KvStore) -> Callable[[], int]:
    """The store's keepalive count (only lease-based stores keep one)."""
    return lambda: int(getattr(store, "renewals", 0) or 0)


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
    """Serve one engine until told to stop; :meth:`run` returns the exit status.

    Ownership (see :mod:`dynamo_lite.tasks`): :meth:`run` opens the worker's
    root task group. Every background service (request-plane sweeper, system
    server, discovery keepalive, NATS subscription, canary, stall detector)
    runs in it under a :class:`~dynamo_lite.tasks.Service` handle that
    teardown stops in order; request and abort tasks belong to the endpoint.
    Waits that a shutdown request or a second signal must interrupt run in
    cancel scopes the request cancels (:meth:`_interruptible`).
    """

    def __init__(
        self,
        engine: BaseEngine,
        config: WorkerConfig,
        *,
        settings: Settings | RuntimeSettings | Mapping[str, str] | None = None,
        store: KvStore | None = None,
        handle_signals: bool = True,
        hard_exit: Callable[[int], None] | None = os._exit,
    ) -> None:
        self.engine = engine
        self.config = config
        #: Everything read from the environment (:class:`dynamo_lite.config.Settings`),
        #: once, here: a :class:`Settings`, a mapping to read it from, or (the
        #: older API) a :class:`RuntimeSettings` with the rest from the process.
        self.env_settings = as_settings(settings)
        self.settings: RuntimeSettings = self.env_settings.runtime
        self.lifecycle = Lifecycle()
        self.handle_signals = handle_signals
        #: Give a consumed signal to the program's own handler afterwards (embedding).
        self.redeliver_signals = False
        #: What the watchdog calls; None (embedded) cancels the run instead.
        self._hard_exit = hard_exit
        self._store = store
        self.endpoint_id = EndpointId(config.namespace, config.component, config.endpoint)
        self.endpoint = Endpoint(engine, config.endpoint, raw=isinstance(engine, RawEngine))
        self.endpoint.disagg_role = config.disaggregation_mode.value
        #: How requests reach this worker: TCP or NATS (dynamo_lite/transport/planes.py).
        self.plane: RequestPlane | None = None
        self.instance_id: int | None = None
        self.engine_config: EngineConfig | None = None
        #: The card and the instance record in discovery (dynamo_lite/registration.py).
        self.registration: Registration | None = None
        self.health = HealthStatus(self.env_settings.system)
        self.system_server: SystemServer | None = None
        #: The latest per-rank snapshots, when the engine declared dp ranks.
        self.snapshots: _SnapshotPublisher | None = None
        self.health_settings = self.env_settings.health
        #: Canary and stall detector; created at registration.
        self.monitor: HealthMonitor | None = None
        #: What /metrics reports; written below where each value changes.
        self.stats = _worker_stats(config, self.endpoint, self.health)
        self.metrics = WorkerMetrics(self.stats)
        #: The run's exit status once it ended (a cancelled run that stopped in
        #: order reports the lifecycle's); None while it runs.
        self.exit_status: int | None = None
        #: Why startup failed, when it did (``serve()`` raises it).
        self.failure: StartupError | None = None
        self._watchdog = Watchdog(self._watchdog_fired)
        #: KV events, load metrics and the local indexer (:mod:`dynamo_lite.kv`).
        self.kv = KvRouting()
        self._tg: anyio.abc.TaskGroup | None = None
        self._services: dict[str, Service] = {}
        #: Cancel scopes that the first shutdown request / a hurry cancels.
        self._on_shutdown: set[anyio.CancelScope] = set()
        self._on_hurry: set[anyio.CancelScope] = set()
        self._serving: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    @property
    def card(self) -> dict[str, Any] | None:
        """The model card as registered (None before registration)."""
        return self.registration.card if self.registration is not None else None

    @property
    def advertised(self) -> tuple[str, int] | None:
        """Where the TCP plane tells the frontend to connect (None on NATS or before binding)."""
        return self.plane.advertised if isinstance(self.plane, TcpPlane) else None

    @property
    def store(self) -> KvStore:
        if self._store is None:
            self._store = open_store(
                self.config.discovery_backend, self.settings, self.env_settings.discovery
            )
        return self._store

    # --- shutdown requests ------------------------------------------------------
    def request_shutdown(self, reason: Reason = Reason.SIGTERM) -> None:
        """First call: graceful shutdown. Later calls: hurry it."""
        if reason in (Reason.SIGTERM, Reason.SIGINT):
            logger.info("%s received", reason.value)
        if self.lifecycle.request_shutdown(reason):
            # Readiness drops from the very first probe after the signal.
            self._withdraw_readiness()
            self._watchdog.arm(self.settings.shutdown_timeout + self.settings.grace_period)
            logger.debug(
                "graceful shutdown started; deadline %ss (%ss timeout + %.2fs grace)",
                self.settings.shutdown_timeout + self.settings.grace_period,
                self.settings.shutdown_timeout,
                self.settings.grace_period,
            )
            _cancel_all(self._on_shutdown)
        else:
            logger.info("second shutdown request; skipping the rest of grace and drain")
            _cancel_all(self._on_hurry)

    def shutdown(self) -> None:
        """Ask the worker to shut down gracefully (grace, drain, cleanup, teardown).

        Once a shutdown is under way, calling it again changes nothing.
        """
        if not self.lifecycle.shutdown_requested:
            self.request_shutdown(Reason.SHUTDOWN_CALLED)

    async def wait_serving(self) -> bool:
        """Wait until the worker serves (True) or its run ended without serving (False)."""
        serving, stopped = self._events()
        await serving.wait()
        return not stopped.is_set()

    async def wait_stopped(self) -> int | None:
        """Wait until :meth:`run` has ended; returns :attr:`exit_status`."""
        await self._events()[1].wait()
        return self.exit_status

    def _events(self) -> tuple[anyio.Event, anyio.Event]:
        # Created on first use, inside the event loop (anyio.Event needs one).
        if self._serving is None or self._stopped is None:
            self._serving, self._stopped = anyio.Event(), anyio.Event()
        return self._serving, self._stopped

    def _on_signal(self, sig: signal.Signals) -> None:
        self.request_shutdown(Reason.SIGINT if sig == signal.SIGINT else Reason.SIGTERM)

    @contextlib.contextmanager
    def _interruptible(self, *, by_hurry: bool = False) -> Iterator[anyio.CancelScope]:
        """A cancel scope that the first shutdown request (``by_hurry``: the
        second one) cancels; already cancelled if that request came before."""
        lc = self.lifecycle
        scopes = self._on_hurry if by_hurry else self._on_shutdown
        scope = anyio.CancelScope()
        if lc.hurried or (not by_hurry and lc.shutdown_requested):
            scope.cancel()
        scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            scopes.discard(scope)

    @property
    def ready(self) -> bool:
        return self.health.ready

    def _withdraw_readiness(self) -> None:
        self.health.shutting_down = True
        if self.config.endpoint in self.health.endpoints:
            self.health.set_endpoint(self.config.endpoint, False)

    def _watchdog_fired(self, budget: float) -> None:
        logger.error(
            "Graceful shutdown exceeded %gs; force-exiting with code %d. "
            "Set DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT to override.",
            budget,
            EXIT_WATCHDOG,
        )
        if self._hard_exit is not None:
            self._hard_exit(EXIT_WATCHDOG)
        elif self._tg is not None:
            # Embedded: cancelling the run takes the bounded, shielded path.
            self._tg.cancel_scope.cancel()

    # --- run -------------------------------------------------------------------
    async def run(self) -> int:
        """Serve until told to stop; returns the exit status.

        Cancelling it (or the task group it runs in) from any state shuts the
        worker down in order, bounded by the shutdown timeout, and re-raises.
        """
        lc = self.lifecycle
        lc.handle(Reason.RUN)
        serving, stopped = self._events()
        signals = (
            captured_signals(self._on_signal, redeliver=self.redeliver_signals)
            if self.handle_signals
            else nullcontext()
        )
        code: int | None = None
        with signals:
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    try:
                        code = await self._run()
                    except anyio.get_cancelled_exc_class():
                        await self._finish_cancelled()
                        raise
                    # Every service has been stopped by teardown; nothing may outlive run().
                    tg.cancel_scope.cancel()
            finally:
                self._tg = None
                self._watchdog.disarm()
                if self.exit_status is None and lc.state is State.STOPPED:
                    self.exit_status = lc.exit_code
                stopped.set()
                serving.set()
        # Only the watchdog cancels this task group itself (embedded runs).
        self.exit_status = EXIT_WATCHDOG if code is None else code
        return self.exit_status

    async def _run(self) -> int:
        lc = self.lifecycle
        try:
            with self._interruptible() as connecting:
                await self._connect()
        except StartupError as exc:
            return await self._fail(exc)
        if connecting.cancelled_caught or lc.shutdown_requested:
            # A signal before start(): nothing was started, nothing to clean up.
            return await self._shutdown()
        assert self.instance_id is not None
        lc.handle(Reason.CONNECTED, worker_id=self.instance_id)
        t0 = time.monotonic()
        try:
            self.engine_config = _as_engine_config(await self.engine.start(self.instance_id))
        except Exception as exc:
            return await self._fail(EngineStartFailed(f"{type(exc).__name__}: {exc}"))
        self.stats.model_load_seconds = time.monotonic() - t0
        self.stats.model = served_model_name(self.config, self.engine_config)
        if not lc.shutdown_requested:
            lc.handle(
                Reason.STARTED,
                model=self.engine_config.model,
                model_load_time_seconds=round(self.stats.model_load_seconds, 6),
            )
            try:
                await self._register()
            except StartupError as exc:
                return await self._fail(exc)
            except Exception as exc:
                return await self._fail(SetupFailed(f"{type(exc).__name__}: {exc}"))
            if not lc.shutdown_requested:
                lc.handle(Reason.REGISTERED, instance_id=f"{self.instance_id:x}")
                self._events()[0].set()
                with self._interruptible():
                    await anyio.sleep_forever()
        return await self._shutdown()

    async def _fail(self, error: StartupError) -> int:
        logger.error("%s: %s", error.reason.value, error)
        self.failure = error
        self.lifecycle.handle(error.reason, error=str(error))
        return await self._shutdown()

    async def _finish_cancelled(self) -> None:
        """The run was cancelled: the hurried shutdown path, shielded and bounded."""
        lc = self.lifecycle
        if lc.state is State.STOPPED:
            return
        logger.warning("worker run cancelled in state %s; shutting down", lc.state.value)
        first = not lc.shutdown_requested
        lc.hurry(Reason.CANCELLED)
        if first:
            self._withdraw_readiness()
        _cancel_all(self._on_shutdown | self._on_hurry)
        bound = self.settings.shutdown_timeout
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + bound
            await self._shutdown()
        if scope.cancelled_caught:
            logger.error(
                "shutdown after cancellation exceeded %gs; left in state %s",
                bound,
                lc.state.value,
            )

    # --- discovery liveness ------------------------------------------------------
    async def _on_lease_lost(self, reason: str) -> None:
        self.stats.lease_losses += 1
        logger.error("discovery liveness lost (%s); shutting down", reason)
        self.request_shutdown(Reason.LEASE_LOST)

    async def _on_lease_recovered(self, reason: str) -> None:
        self.stats.lease_recoveries += 1
        logger.warning("discovery liveness restored (%s); still serving", reason)

    # --- startup ---------------------------------------------------------------
    async def _connect(self) -> None:
        """Bind the listeners, open discovery; the instance id becomes the worker id."""
        s = self.settings
        tg = self._tg
        assert tg is not None
        plane = (self.config.request_plane or "tcp").lower()
        if plane not in ("tcp", "nats"):
            raise UnknownRequestPlane(f"request plane {plane!r} is not supported (tcp or nats)")
        check_response_plane(self.config.response_plane)
        tls = self.env_settings.tcp_tls
        try:
            self.endpoint.call_home_ssl = tls.client_context()
            server_ssl = tls.server_context()
        except TlsConfigError as exc:
            raise BadTlsSettings(str(exc)) from exc
        try:
            if s.system_port is not None:
                # Up first, answering 503 while the engine starts (as stock).
                self.system_server = SystemServer(
                    s.system_host, s.system_port, self.health, self.env_settings.system
                )
                self.system_server.serve_metrics(self.metrics.render, METRICS_CONTENT_TYPE)
                self.system_server.route_body("/engine/", before_routes)
                await self.system_server.start()
                await self._start_service("system server", self.system_server.serve)
            self.endpoint.max_inflight = s.max_inflight
            self.endpoint.engine_gate = EngineGate.from_limits(self.env_settings.engine_limits)
            self.endpoint.stream_debug = self.env_settings.switches.stream_debug
            self.endpoint.write_stall_timeout = s.write_stall_timeout
            self.stats.pool_capacity = self.endpoint.max_inflight
            self.stats.queue = self.endpoint.engine_gate
            # As stock: bound to, and advertised as, the chosen address.
            bind, advertised = bind_and_advertise(s.tcp_host, "DYN_TCP_RPC_HOST")
            self.plane = open_plane(
                plane,
                host=bind,
                port=s.tcp_port,
                advertise_host=advertised,
                max_message_size=s.max_message_size,
                ssl_context=server_ssl,
                ssl_handshake_timeout=tls.handshake_timeout,
                frame_timeout=s.frame_timeout,
                idle_timeout=s.idle_timeout,
                max_connections=s.max_connections,
                nats=self.env_settings.nats,
            )
            await self.plane.start(tg)
            self.store.on_lost = self._on_lease_lost
            self.store.on_recovered = self._on_lease_recovered
            self.instance_id = self.stats.instance_id = await self.store.open()
            self.stats.lease_renewals = _renewals_of(self.store)
            await self._start_service("discovery keepalive", self.store.keep_alive)
        except _connect_errors() as exc:
            raise DiscoveryUnreachable(str(exc)) from exc
        logger.debug(
            "distributed runtime connected backend=%s instance_id=%x",
            self.store.backend,
            self.instance_id,
        )

    async def _start_service(
        self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any
    ) -> None:
        assert self._tg is not None
        self._services[name] = await start_service(self._tg, fn, *args, name=name)

    async def _stop_service(self, name: str) -> None:
        service = self._services.pop(name, None)
        if service is not None:
            await service.stop()

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
        self.stats.kv_dropped_events = self.kv.dropped_events
        if self.kv.active_channel is not None:
            self.endpoint.on_first_output = self.kv.first_output
        # As stock: with KV routing off there is no snapshot publisher either.
        if ranks and cfg.enable_kv_routing:
            self.snapshots = _SnapshotPublisher(ranks, self.kv.on_snapshot)
            self.stats.ranks = self.snapshots.latest
            engine.attach_snapshot_publisher(self.snapshots)
        card = await build_model_card(
            cfg,
            self.engine_config,
            tokens=not self.endpoint.raw,
            system_server=self.system_server,
            system_host=self.settings.system_host,
            self_host=self.env_settings.self_host_metadata,
            enable_local_indexer=self.kv.enable_local_indexer,
        )
        logger.debug("local model built")
        self.registration = Registration(self.store, self.endpoint_id, self.instance_id)
        self.instance_switch = InstanceSwitch(self)
        handle = ServingEndpoint(
            cfg.namespace, cfg.component, cfg.endpoint, self.instance_id, self.instance_switch
        )
        await engine.on_endpoint_ready(handle)
        ep = self.endpoint_id
        await self.registration.publish_card(card)
        # The local indexer's query endpoint is registered after the card, as stock.
        await self.kv.register_recovery()
        # /engine/control|update/<name> on the system port (dynamo_lite/engine_routes.py).
        self.engine_routes = EngineRoutes(self, engine, self.instance_switch)
        if self.system_server is not None:
            self.system_server.route_body("/engine/", self.engine_routes.handle)
        payload = await resolve_payload(engine, cfg, self.env_settings.health_check_payload)
        self.monitor = monitor = HealthMonitor(
            engine, self.endpoint, self.health, self.health_settings, payload
        )
        self.stats.stalled = lambda: monitor.stalled
        self.stats.probes = monitor.probes if monitor.canary_active else None
        self.endpoint.span_identity = {
            "component": cfg.component,
            "endpoint": cfg.endpoint,
            "instance_id": str(self.instance_id),
            "namespace": cfg.namespace,
        }
        # Open the endpoint before advertising it so the first request finds it.
        self.endpoint.accepting = True
        assert self.plane is not None and self._tg is not None
        transport = await self.plane.serve(self._tg, ep, self.instance_id, self.endpoint)
        await self.registration.publish_instance(transport, self.settings.request_codec)
        # With the canary on, the endpoint is ready once a probe or a request succeeds.
        self.health.set_endpoint(cfg.endpoint, not self.monitor.canary_active)
        self.health.serving = True
        assert self._tg is not None
        await self.monitor.start(self._tg)
        logger.info("Serving %s on %s", card["display_name"], ep)

    # --- shutdown --------------------------------------------------------------
    async def _unregister_instance(self) -> None:
        if self.registration is not None:
            await self.registration.withdraw_instance()

    async def _shutdown(self) -> int:
        """From the current state on to STOPPED; returns the exit status.

        Each state's work is safe to resume: when a cancellation interrupts
        it, :meth:`_finish_cancelled` calls this again and it carries on from
        the state it was in, skipping what is already done.
        """
        lc = self.lifecycle
        while lc.state is not State.STOPPED:
            state = lc.state
            if state is State.CONNECTING:
                # Nothing was started, so nothing is cleaned up.
                cancelled = lc.hurry_reason is Reason.CANCELLED
                lc.handle(Reason.CANCELLED if cancelled else Reason.SIGNAL_BEFORE_START)
            elif state in (State.STARTING, State.REGISTERING, State.SERVING):
                lc.handle(lc.shutdown_reason or Reason.SIGTERM)
            elif state is State.GRACE:
                await self._grace()
            elif state is State.DRAINING:
                reason = await self._drain_or_cut()
                lc.handle(reason, drain_time_seconds=round(self.stats.drain_seconds, 6))
            elif state is State.FAILED:
                lc.handle(self.failure.reason if self.failure else Reason.SETUP_FAILED)
            elif state is State.CLEANING:
                lc.handle(await self._cleanup())
            elif state is State.TEARDOWN:
                await self._teardown()
                lc.handle(Reason.TORN_DOWN, exit_code=lc.exit_code)
            else:  # CREATED: run() moves on at once, so nothing can stop here
                raise IllegalTransition(state, Reason.CANCELLED)
        return lc.exit_code

    async def _grace(self) -> None:
        """Stop being routed to at once, then serve late arrivals for the grace period."""
        lc = self.lifecycle
        grace = self.settings.grace_period
        self._withdraw_readiness()
        await self._unregister_instance()
        if self.monitor is not None:
            await self.monitor.stop()
        if grace > 0 and not lc.hurried:
            logger.info("Grace period %.2fs before drain", grace)
        with self._interruptible(by_hurry=True):
            await anyio.sleep(grace)
        lc.handle(lc.hurry_reason or Reason.GRACE_ELAPSED)

    async def _drain_or_cut(self) -> Reason:
        """Refuse new requests, let in-flight ones finish (bounded), cut the rest."""
        self.endpoint.unavailable_detail = "worker is draining"
        self.endpoint.accepting = False
        # Over NATS, leaving the queue group is the "unavailable" answer.
        if self.plane is not None:
            await self.plane.stop_accepting()
        t0 = time.monotonic()
        reason = await self._drain()
        self.stats.drain_seconds = time.monotonic() - t0
        if reason is not Reason.DRAINED:
            # Streams the drain could not finish end now, with an explicit error
            # item, before cleanup() takes the engine away from under them.
            self._cut_streams("worker shutting down before the request finished")
        return reason

    def _cut_streams(self, reason: str) -> None:
        cut = self.endpoint.cut(reason)
        if cut:
            logger.warning("cut %d in-flight stream(s) with an error item: %s", cut, reason)

    async def _drain(self) -> Reason:
        """Let in-flight requests finish (bounded); prefill: wait for quiescence."""
        lc = self.lifecycle
        if lc.hurry_reason is not None:
            return lc.hurry_reason
        s = self.settings
        budget = s.drain_budget()
        inflight = len(self.endpoint.requests)
        if inflight:
            logger.info(
                "drain: waiting for %d in-flight request(s) (budget %.1fs)", inflight, budget
            )
        with self._interruptible(by_hurry=True):
            joined = await self.endpoint.join(budget)
        if lc.hurry_reason is not None:
            return lc.hurry_reason
        if not joined:
            logger.warning("drain: in-flight requests still running after %.1fs", budget)
            return Reason.DRAIN_TIMEOUT
        if self.config.disaggregation_mode is DisaggregationMode.PREFILL and not (
            await self._wait_quiescent(time.monotonic() + s.prefill_drain_budget())
        ):
            return lc.hurry_reason or Reason.DRAIN_TIMEOUT
        try:
            await self.engine.drain()
        except Exception as exc:
            logger.warning("engine.drain() raised: %r", exc)
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
            with self._interruptible(by_hurry=True) as poll:
                await anyio.sleep(min(QUIESCENT_POLL, remaining))
            if poll.cancelled_caught:
                return False

    async def _cleanup(self) -> Reason:
        lc = self.lifecycle
        if lc.cleanup_claimed:
            # Interrupted by a cancellation: cleanup() runs at most once.
            return Reason.CANCELLED
        if not lc.claim_cleanup():
            return Reason.NOTHING_TO_CLEAN
        t0 = time.monotonic()
        bound = HURRIED_CLEANUP_BOUND if lc.hurried else None
        try:
            # asyncio's scope, not anyio's: engine code sees plain asyncio.
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
        self.stats.cleanup_seconds = time.monotonic() - t0
        return reason

    async def _teardown(self) -> None:
        """The 3-phase teardown; every step is idempotent (a cancelled run resumes it)."""
        if self.monitor is not None:
            await self.monitor.stop()
        # Phase 1: streams still open end with an explicit error item.
        self.endpoint.accepting = False
        self._cut_streams("worker shutting down")
        # Phase 2: give their tasks a moment to flush, then cancel what is left.
        await self.endpoint.join(TEARDOWN_JOIN_BOUND)
        await self.endpoint.close()
        # Phase 3: close the listener, delete the card, release liveness.
        if self.plane is not None:
            await self.plane.close()
        await self._unregister_instance()
        await self.kv.close()
        if self.registration is not None:
            await self.registration.withdraw_card()
        # Both modules load on first use (they set these attributes), not here.
        if self._store is not None and getattr(self, "_engine_cards", None):
            from . import model_cards

            await model_cards.withdraw_all(self)  # LoRA cards the engine published
        if getattr(self, "_endpoint_clients", None):
            from . import endpoint_client

            await endpoint_client.close_all(self)  # clients from endpoint.client()
        await self._stop_service("discovery keepalive")
        if self._store is not None:
            try:
                await self._store.close()
            except DiscoveryError as exc:
                logger.warning("discovery close failed error=%s", exc)
        await self._stop_service("system server")


def _connect_errors() -> tuple[type[Exception], ...]:
    """What makes discovery or the request plane unreachable at startup."""
    # NatsError exists only once the NATS plane was imported (which raises it):
    # a worker on the TCP plane never loads that module.
    module = sys.modules.get("dynamo_lite.transport.nats_plane")
    nats: tuple[type[Exception], ...] = (module.NatsError,) if module is not None else ()
    return (DiscoveryError, OSError, *nats)


def _cancel_all(scopes: set[anyio.CancelScope]) -> None:
    for scope in list(scopes):
        scope.cancel()
