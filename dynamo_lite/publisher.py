"""KV-event source descriptors and per-rank snapshots (``dynamo.common.backend.publisher``).

An engine returns :class:`ZmqSource` / :class:`PushSource` descriptors from
``kv_event_sources()`` and pushes :class:`ComponentSnapshot` values into the
publisher it receives through ``attach_snapshot_publisher()``. The classes
live in :mod:`dynamo_lite.engine`; this module is their stock address.
"""

from __future__ import annotations

from .engine import ComponentSnapshot, KvEventSource, PushSource, ZmqSource

__all__ = ["ComponentSnapshot", "KvEventSource", "PushSource", "ZmqSource"]
