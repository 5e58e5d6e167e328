"""Data-parallel rank helpers (``dynamo.common.backend.dp_rank``).

The KV router puts its rank choice in ``request["routing"]["dp_rank"]``; an
engine hosting ranks ``[dp_start, dp_start + dp_size)`` honours it when it is
one of its own and otherwise lets its own load balancing pick.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["forced_dp_rank", "validate_global_dp_rank"]

logger = logging.getLogger(__name__)


def forced_dp_rank(request: Mapping[str, Any]) -> int | None:
    """The router's ``routing.dp_rank`` as an int (JSON may carry ``"2"``), or None."""
    rank = (request.get("routing") or {}).get("dp_rank")
    return None if rank is None else int(rank)


def validate_global_dp_rank(
    dp_rank: int | None, dp_start: int, dp_size: int, backend_label: str
) -> int | None:
    """``dp_rank`` when this worker hosts it, else None.

    A single-rank worker has nothing to choose between, so it always gets
    None (quietly); an out-of-range rank gets None and a warning.
    """
    if dp_rank is None or dp_size <= 1:
        return None
    end = dp_start + dp_size
    if dp_start <= dp_rank < end:
        return dp_rank
    logger.warning(
        "Received DP rank %d outside [%d, %d); falling back to %s internal DP selection",
        dp_rank,
        dp_start,
        end,
        backend_label,
    )
    return None
