"""``dynamo._core.backend``: the Rust worker's Python surface, served by dynamo_lite's classes."""

from __future__ import annotations

import enum

from ..config import WorkerConfig
from ..engine import EngineConfig, LlmRegistration
from ..health_check import HEALTH_CHECK_KEY
from ..metrics import EngineMetrics
from ..worker import Worker
from ..worker import _SnapshotPublisher as SnapshotPublisher

__all__ = [
    "HEALTH_CHECK_KEY",
    "DisaggregationMode",
    "EngineConfig",
    "EngineMetrics",
    "LlmRegistration",
    "SnapshotPublisher",
    "Worker",
    "WorkerConfig",
]


class DisaggregationMode(enum.Enum):
    """The binding's spelling of the roles (``dynamo.common.constants`` has the user-facing one)."""

    Aggregated = "agg"
    Prefill = "prefill"
    Decode = "decode"
    Encode = "encode"
