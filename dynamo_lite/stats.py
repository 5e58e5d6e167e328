"""Worker statistics: plain counters, cheap histograms and the worker's stats object.

The request path only touches what is here: :class:`EndpointStats` counters
(integer adds) and :class:`Histogram` observations (one bisect, two adds).
:class:`WorkerStats` is everything ``/metrics`` reports about one worker:
the worker owns it and writes each value where it changes (the instance id
once discovery grants it, the lifecycle timings once each, the lease
counters when liveness is lost or restored); values that change all the
time stay where they are kept (the endpoint's :class:`EndpointStats`, the
health status, the canary's verdicts) and are reached through references
and callables read at scrape time, so nothing is copied per request.
:mod:`dynamo_lite.metrics` renders a :class:`WorkerStats` and nothing else,
and is the only module that talks to prometheus_client; the stall detector
reads :class:`RequestProgress`. A leaf module: it imports nothing from the
package, so nothing on the request path depends on the metrics exporter.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "FIRST_RESPONSE_BUCKETS",
    "NETWORK_TRANSIT_BUCKETS",
    "PERMIT_WAIT_BUCKETS",
    "REQUEST_DURATION_BUCKETS",
    "EndpointStats",
    "Histogram",
    "QueueGauges",
    "RequestProgress",
    "WorkerStats",
]

REQUEST_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600,
)  # fmt: skip
NETWORK_TRANSIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1)
PERMIT_WAIT_BUCKETS = (0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60)
FIRST_RESPONSE_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip


def _le(bound: float) -> str:
    """Bucket bounds written as stock writes them: ``1``, ``2.5``, ``0.0001``."""
    return str(int(bound)) if bound == int(bound) else repr(float(bound))


class Histogram:
    """A fixed-bucket histogram that is cheap to observe and rendered at scrape time."""

    __slots__ = ("bounds", "count", "counts", "labels", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.labels = (*(_le(b) for b in bounds), "+Inf")
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left finds the first bound >= value, i.e. the "le" bucket.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for label, n in zip(self.labels, self.counts, strict=True):
            total += n
            out.append((label, float(total)))
        return out


def request_duration_histogram() -> Histogram:
    return Histogram(REQUEST_DURATION_BUCKETS)


def network_transit_histogram() -> Histogram:
    return Histogram(NETWORK_TRANSIT_BUCKETS)


def first_response_histogram() -> Histogram:
    return Histogram(FIRST_RESPONSE_BUCKETS)


@dataclass
class EndpointStats:
    """The endpoint's request counters, updated in place on the request path."""

    requests: int = 0
    inflight: int = 0
    completed: int = 0
    cancelled: int = 0
    aborts: int = 0
    errors: int = 0
    cut: int = 0
    rejected: int = 0
    dropped_chunks: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    #: Refused with "Server overloaded" (a subset of ``rejected``).
    overloaded: int = 0
    #: Per-request histograms, rendered at scrape time by :mod:`dynamo_lite.metrics`.
    duration: Histogram = field(default_factory=request_duration_histogram)
    transit: Histogram = field(default_factory=network_transit_histogram)
    first_response: Histogram = field(default_factory=first_response_histogram)


class RequestProgress(Protocol):
    """What the stall detector may read of one in-flight request."""

    @property
    def cancelled(self) -> bool:
        """Cancelled by the frontend or cut by shutdown: no longer expected to progress."""

    @property
    def terminal(self) -> bool:
        """The engine already yielded its terminal chunk."""

    @property
    def chunks(self) -> int:
        """Chunks yielded so far; -1 before the engine's stream started."""


class QueueGauges(Protocol):
    """The engine request limit's queue (:class:`dynamo_lite.admission.EngineGate`)."""

    @property
    def queue_depth(self) -> int: ...
    @property
    def queue_capacity(self) -> int: ...


def _zero() -> int:
    return 0


def _not_ready() -> bool:
    return False


@dataclass
class WorkerStats:
    """What ``/metrics`` reports about one worker; see the module docstring.

    Plain fields are written by the worker when the value changes; the
    ``Callable`` fields and the shared objects are views onto live state,
    read at scrape time only.
    """

    # --- labels ---
    namespace: str
    component: str
    #: The endpoint's name (the ``dynamo_endpoint`` label).
    endpoint_name: str
    #: ``WorkerConfig.metrics_labels``: extra labels for every series.
    metrics_labels: Sequence[tuple[str, str]] = ()
    #: Set once discovery granted it (the ``worker_id`` label); None before.
    instance_id: int | None = None
    #: The served model name, set once ``start()`` returned; None before.
    model: str | None = None

    # --- the request path's counters (the endpoint's own object, not a copy) ---
    endpoint: EndpointStats = field(default_factory=EndpointStats)
    #: At most this many requests in flight (``DYN_LITE_MAX_INFLIGHT``).
    pool_capacity: int = 10_000
    #: The engine request limit's queue; None: no limit configured yet.
    queue: QueueGauges | None = None

    # --- lifecycle, written once each by the worker ---
    #: ``time.monotonic()`` when the worker came up (uptime counts from here).
    started: float = field(default_factory=time.monotonic)
    model_load_seconds: float = 0.0
    drain_seconds: float = 0.0
    cleanup_seconds: float = 0.0

    # --- discovery liveness ---
    lease_losses: int = 0
    lease_recoveries: int = 0
    #: Keepalives that succeeded (counted by the discovery store).
    lease_renewals: Callable[[], int] = _zero

    # --- views onto state kept elsewhere ---
    #: Whether ``/health`` answers 200 (the system server's health status).
    ready: Callable[[], bool] = _not_ready
    #: KV events lost to a full queue or a slow event plane.
    kv_dropped_events: Callable[[], int] = _zero
    #: In-flight requests the stall detector considers stalled.
    stalled: Callable[[], int] = _zero
    #: The canary's verdict counts while it is on; None when it is off.
    probes: Mapping[str, int] | None = None
    #: The latest snapshot per dp rank, when the engine declared ranks.
    ranks: Mapping[int, Any] = field(default_factory=dict)
