"""``dynamo.common.constants``: the disaggregation role enum is dynamo_lite's own."""

from __future__ import annotations

import enum

from ..config import DisaggregationMode

__all__ = [
    "KV_HINT_TRANSFER_CAPABILITY_KEY",
    "KV_HINT_TRANSFER_SOURCE_CONTROL_ENDPOINTS_RUNTIME_KEY",
    "KV_HINT_TRANSFER_WORKER_TYPE_RUNTIME_KEY",
    "DisaggregationMode",
    "EmbeddingTransferMode",
]

KV_HINT_TRANSFER_CAPABILITY_KEY = "router_hint"
KV_HINT_TRANSFER_WORKER_TYPE_RUNTIME_KEY = "router_hint_worker_type"
KV_HINT_TRANSFER_SOURCE_CONTROL_ENDPOINTS_RUNTIME_KEY = "router_hint_source_control_endpoints"


class EmbeddingTransferMode(enum.Enum):
    LOCAL = "local"
    NIXL_WRITE = "nixl-write"
    NIXL_READ = "nixl-read"
