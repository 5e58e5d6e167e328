"""``dynamo.common.utils.prometheus``: the registry helpers engines call."""

from __future__ import annotations

from ..metrics import gather_with_labels, get_prometheus_typed

__all__ = ["gather_with_labels", "get_prometheus_typed"]
