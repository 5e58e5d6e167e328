"""The worker lifecycle: one explicit state machine.

How a dynamo_lite worker lives and dies
=======================================

The table :data:`TRANSITIONS` decides: for the current state and an event
(a :class:`Reason`), the next state. The worker only feeds events
(:meth:`Lifecycle.handle`) and performs the work of the state it lands in.
Every arrow below is one entry of the table, and a test keeps the two equal
(Mermaid, which code hosts render; ``docs/lifecycle.md`` draws the same)::

    stateDiagram-v2
        CREATED --> CONNECTING : run
        CONNECTING --> STARTING : connected
        CONNECTING --> FAILED : discovery unreachable, bad TLS settings, unknown request plane
        CONNECTING --> TEARDOWN : signal before start, run() cancelled
        STARTING --> REGISTERING : engine started
        STARTING --> FAILED : engine start failed
        STARTING --> GRACE : SIGTERM, SIGINT, lease lost, shutdown() called, run() cancelled
        REGISTERING --> SERVING : registered
        REGISTERING --> FAILED : setup failed
        REGISTERING --> GRACE : SIGTERM, SIGINT, lease lost, shutdown() called, run() cancelled
        SERVING --> GRACE : SIGTERM, SIGINT, lease lost, shutdown() called, run() cancelled
        GRACE --> DRAINING : grace period elapsed, second signal, run() cancelled
        DRAINING --> CLEANING : drained, drain budget exhausted, second signal, run() cancelled
        FAILED --> CLEANING : discovery unreachable, bad TLS settings, unknown request plane
        FAILED --> CLEANING : engine start failed, setup failed
        CLEANING --> TEARDOWN : cleanup complete, cleanup raised
        CLEANING --> TEARDOWN : start never called, run() cancelled
        TEARDOWN --> STOPPED : teardown complete

CONNECTING
    With the settings read when the worker was built (``config.Settings``),
    open discovery (an etcd lease, or a file store) and bind the
    request-plane listener. The discovery instance id becomes
    the ``worker_id`` handed to ``start()``. A signal here ends the process
    at once with status 0: nothing was started, so nothing is cleaned up.
    Discovery that stays unreachable ends it with status 1.
STARTING
    ``engine.start(worker_id)``. Signals received meanwhile are remembered;
    ``start()`` is never interrupted.
REGISTERING
    The engine's setup hooks, then the model card, then the endpoint
    instance record (the frontend routes from that moment), then readiness.
SERVING
    Requests flow. The first SIGTERM or SIGINT (SIGINT is graceful no matter
    how the process was started) moves on.
GRACE
    Readiness is withdrawn and the instance record deleted at once, so the
    frontend stops routing here. For the grace period
    (``DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS``, default 5 s) requests that
    still arrive (the frontend may not have seen the deletion yet) are
    served like any other.
DRAINING
    New requests get the "unavailable" ack, so the frontend answers or
    re-routes them at once. In-flight requests run to their real finish
    reason within the drain budget; prefill workers poll ``is_quiescent()``;
    then ``engine.drain()`` runs once.
CLEANING
    ``engine.cleanup()``, exactly once, whenever ``start()`` was called
    (returned or raised), never concurrently with it.
TEARDOWN
    Phase 1: streams still open end with an explicit error item (never a
    bare end). Phase 2: their tasks are awaited, bounded. Phase 3: the
    listener closes, the model card is deleted and the lease revoked (or
    the files removed).
STOPPED
    Terminal. The exit status says how: 0 for every orderly shutdown
    (``cleanup()`` raising included), 1 when startup failed.

A second signal in GRACE or DRAINING skips what is left of both.

Cancelling ``Worker.run()`` (or the task group it runs in) is a shutdown
too, from any state: the worker takes the path a second signal would (no
grace, no drain wait; streams still open are cut with an explicit error
item), shielded from further cancellation and bounded by the shutdown
timeout, then re-raises the cancellation. A state whose work was interrupted
is resumed, never repeated: ``cleanup()`` still runs at most once.

A
watchdog started by the first signal bounds the whole shutdown to
``DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT`` (default 30 s) plus the grace
period; overrunning it exits the process with status 911 (the OS reports
143), as stock does.

Every transition is checked against :data:`TRANSITIONS` (an illegal one
raises :class:`IllegalTransition`) and logged as one structured event with
the old and new state, the reason and the time since the previous one.

Who owns which task
-------------------
``Worker.run()`` opens one anyio task group for the whole run. Every
background service is started into it under a handle
(:mod:`dynamo_lite.tasks`) and stopped by TEARDOWN in order: the system
server and its connections (from CONNECTING until the very end), the
request-plane sweeper and the NATS subscription (until the listener closes;
the subscription already in DRAINING), the discovery keepalive (until the
lease is revoked), the canary and the stall detector (from SERVING until
GRACE). Request and abort tasks are spawned from the socket callback into the
endpoint's task set (cheaper than a task group on that path, and one request
failing must not cancel the others); TEARDOWN joins and then cancels them.
Waits that a shutdown request or a second signal interrupts (CONNECTING, the
SERVING wait, the grace sleep, the drain) are cancel scopes that the request
cancels. Signals are captured for the length of the run and given back.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

logger = logging.getLogger("dynamo_lite.lifecycle")

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_WATCHDOG",
    "SHUTDOWN_EVENTS",
    "TRANSITIONS",
    "BadTlsSettings",
    "DiscoveryUnreachable",
    "EngineStartFailed",
    "IllegalTransition",
    "Lifecycle",
    "Reason",
    "SetupFailed",
    "StartupError",
    "State",
    "UnknownRequestPlane",
]

EXIT_OK = 0
EXIT_FAILURE = 1
#: What the watchdog passes to ``_exit``; the OS reports 911 & 0xFF = 143.
EXIT_WATCHDOG = 911


class State(enum.Enum):
    CREATED = "created"
    CONNECTING = "connecting"
    STARTING = "starting"
    REGISTERING = "registering"
    SERVING = "serving"
    GRACE = "grace"
    DRAINING = "draining"
    FAILED = "failed"
    CLEANING = "cleaning"
    TEARDOWN = "teardown"
    STOPPED = "stopped"


class Reason(enum.Enum):
    RUN = "run"
    CONNECTED = "connected"
    DISCOVERY_UNREACHABLE = "discovery unreachable"
    BAD_TLS_SETTINGS = "bad TLS settings"
    UNKNOWN_PLANE = "unknown request plane"
    STARTED = "engine started"
    START_FAILED = "engine start failed"
    SETUP_FAILED = "setup failed"
    REGISTERED = "registered"
    SIGTERM = "SIGTERM"
    SIGINT = "SIGINT"
    SIGNAL_BEFORE_START = "signal before start"
    LEASE_LOST = "lease lost"
    CANCELLED = "run() cancelled"
    SHUTDOWN_CALLED = "shutdown() called"
    GRACE_ELAPSED = "grace period elapsed"
    SECOND_SIGNAL = "second signal"
    DRAINED = "drained"
    DRAIN_TIMEOUT = "drain budget exhausted"
    CLEANED = "cleanup complete"
    CLEANUP_FAILED = "cleanup raised"
    NOTHING_TO_CLEAN = "start never called"
    TORN_DOWN = "teardown complete"


S, R = State, Reason
#: What ends serving: a signal, a lost lease, ``shutdown()``, a cancelled run.
SHUTDOWN_EVENTS = (R.SIGTERM, R.SIGINT, R.LEASE_LOST, R.SHUTDOWN_CALLED, R.CANCELLED)
#: What CONNECTING fails with.
CONNECT_FAILURES = (R.DISCOVERY_UNREACHABLE, R.BAD_TLS_SETTINGS, R.UNKNOWN_PLANE)
#: (state, event) → next state. Anything else is a bug and raises.
TRANSITIONS: dict[State, dict[Reason, State]] = {
    S.CREATED: {R.RUN: S.CONNECTING},
    S.CONNECTING: {
        R.CONNECTED: S.STARTING,
        **dict.fromkeys(CONNECT_FAILURES, S.FAILED),
        R.SIGNAL_BEFORE_START: S.TEARDOWN,
        R.CANCELLED: S.TEARDOWN,
    },
    S.STARTING: {
        R.STARTED: S.REGISTERING,
        R.START_FAILED: S.FAILED,
        **dict.fromkeys(SHUTDOWN_EVENTS, S.GRACE),
    },
    S.REGISTERING: {
        R.REGISTERED: S.SERVING,
        R.SETUP_FAILED: S.FAILED,
        **dict.fromkeys(SHUTDOWN_EVENTS, S.GRACE),
    },
    S.SERVING: dict.fromkeys(SHUTDOWN_EVENTS, S.GRACE),
    S.GRACE: dict.fromkeys((R.GRACE_ELAPSED, R.SECOND_SIGNAL, R.CANCELLED), S.DRAINING),
    S.DRAINING: dict.fromkeys(
        (R.DRAINED, R.DRAIN_TIMEOUT, R.SECOND_SIGNAL, R.CANCELLED), S.CLEANING
    ),
    # The failure that led here is the event that moves on to the cleanup it owes.
    S.FAILED: dict.fromkeys((*CONNECT_FAILURES, R.START_FAILED, R.SETUP_FAILED), S.CLEANING),
    S.CLEANING: dict.fromkeys(
        (R.CLEANED, R.CLEANUP_FAILED, R.NOTHING_TO_CLEAN, R.CANCELLED), S.TEARDOWN
    ),
    S.TEARDOWN: {R.TORN_DOWN: S.STOPPED},
    S.STOPPED: {},
}


class IllegalTransition(RuntimeError):
    """An event the current state has no transition for."""

    def __init__(self, current: State, reason: Reason) -> None:
        super().__init__(f"illegal lifecycle event {reason.value!r} in state {current.value}")
        self.current = current
        self.reason = reason


class StartupError(Exception):
    """The worker could not start; ``reason`` is the lifecycle reason it fails with.

    ``Worker.run()`` logs it and returns status 1; ``dynamo_lite.serve()``
    raises it, after the same orderly cleanup.
    """

    reason: Reason = Reason.SETUP_FAILED


class DiscoveryUnreachable(StartupError):
    """Discovery (etcd, NATS, the file store's root) or a listener could not be set up."""

    reason = Reason.DISCOVERY_UNREACHABLE


class BadTlsSettings(StartupError):
    """The ``DYN_TCP_TLS_*`` settings are incomplete or unreadable."""

    reason = Reason.BAD_TLS_SETTINGS


class UnknownRequestPlane(StartupError):
    """``request_plane`` is neither ``tcp`` nor ``nats``."""

    reason = Reason.UNKNOWN_PLANE


class UnsupportedResponsePlane(UnknownRequestPlane, ValueError):
    """``response_plane`` is not ``tcp``: stock accepts ``tcp`` and ``quic`` (and raises
    ``ValueError`` for anything else); dynamo_lite implements only ``tcp``."""


def check_response_plane(plane: str) -> None:
    """Refuse a response plane at startup, before anything is bound or registered."""
    if plane == "tcp":
        return
    if plane == "quic":
        raise UnsupportedResponsePlane(
            "response_plane 'quic' is not supported by dynamo_lite (only 'tcp'); "
            "set response_plane='tcp' / --response-plane tcp"
        )
    raise UnsupportedResponsePlane("response_plane must be 'tcp' or 'quic'")


class EngineStartFailed(StartupError):
    """``engine.start()`` raised (``cleanup()`` still runs)."""

    reason = Reason.START_FAILED


class SetupFailed(StartupError):
    """A setup hook, the model card or the instance record failed (after ``start()``)."""

    reason = Reason.SETUP_FAILED


@dataclass(frozen=True)
class Transition:
    """One state change, as recorded in the lifecycle's history."""

    source: State
    target: State
    reason: Reason
    at: float
    elapsed: float
    detail: dict[str, object] = field(default_factory=dict)


class Lifecycle:
    """The current state, its history, and the obligations that follow from it.

    The worker drives it; tests drive it directly (a hypothesis state machine
    checks the invariants below under every ordering of events).

    Invariants:

    * ``cleanup()`` is owed exactly when ``start()`` was called — it entered
      STARTING — and runs at most once (:meth:`claim_cleanup`).
    * CLEANING is only reachable after STARTING finished (FAILED, GRACE or
      DRAINING), so cleanup never overlaps ``start()``.
    """

    def __init__(self) -> None:
        self.state = State.CREATED
        self.history: list[Transition] = []
        self.exit_code = EXIT_OK
        self.shutdown_reason: Reason | None = None
        self.signals = 0
        self._cleanup_claimed = False
        self._started_at = time.monotonic()
        self._last = self._started_at
        #: Set when the shutdown is hurried: a second signal, or a cancelled run.
        self.hurry_reason: Reason | None = None

    # --- transitions ---------------------------------------------------------
    def handle(self, reason: Reason, **detail: object) -> State:
        """Feed one event; returns the new state (or raises :class:`IllegalTransition`)."""
        target = TRANSITIONS[self.state].get(reason)
        if target is None:
            raise IllegalTransition(self.state, reason)
        now = time.monotonic()
        t = Transition(self.state, target, reason, now - self._started_at, now - self._last, detail)
        self._last = now
        self.state = target
        self.history.append(t)
        if target is State.FAILED:
            self.exit_code = EXIT_FAILURE
        logger.info(
            "lifecycle %s → %s (%s)",
            t.source.value,
            t.target.value,
            reason.value,
            extra={
                "event": "lifecycle",
                "from_state": t.source.value,
                "to_state": t.target.value,
                "reason": reason.value,
                "elapsed": round(t.elapsed, 6),
                **{k: v for k, v in detail.items() if k not in ("message", "asctime")},
            },
        )
        return target

    @property
    def visited(self) -> set[State]:
        return {State.CREATED} | {t.target for t in self.history}

    # --- obligations ---------------------------------------------------------
    @property
    def cleanup_owed(self) -> bool:
        return State.STARTING in self.visited and not self._cleanup_claimed

    @property
    def cleanup_claimed(self) -> bool:
        return self._cleanup_claimed

    def claim_cleanup(self) -> bool:
        """True exactly once, and only if ``start()`` was called."""
        if self.state is not State.CLEANING:
            raise IllegalTransition(self.state, Reason.CLEANED)
        if not self.cleanup_owed:
            return False
        self._cleanup_claimed = True
        return True

    # --- shutdown requests ---------------------------------------------------
    def request_shutdown(self, reason: Reason) -> bool:
        """Record a shutdown request; returns True if it is the first one.

        A later request *hurries* the shutdown: what is left of the grace
        period and the drain is skipped.
        """
        self.signals += 1
        if self.shutdown_reason is None:
            self.shutdown_reason = reason
            return True
        self.hurry_reason = self.hurry_reason or Reason.SECOND_SIGNAL
        return False

    def hurry(self, reason: Reason) -> None:
        """Shut down without grace or drain (a cancelled run)."""
        if self.shutdown_reason is None:
            self.shutdown_reason = reason
        self.hurry_reason = self.hurry_reason or reason

    @property
    def shutdown_requested(self) -> bool:
        return self.shutdown_reason is not None

    @property
    def hurried(self) -> bool:
        return self.hurry_reason is not None
