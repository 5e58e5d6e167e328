"""Reading the agent context a request may carry (``dynamo.common.backend.agent_context``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["agent_context_from_request", "session_id_from_request"]


def agent_context_from_request(request: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``request["agent_context"]`` when it is a mapping, else None."""
    value = request.get("agent_context")
    return value if isinstance(value, Mapping) else None


def session_id_from_request(request: Mapping[str, Any]) -> str | None:
    """The agent context's ``session_id``, stripped; None when absent, not a string or blank."""
    ctx = agent_context_from_request(request)
    session = None if ctx is None else ctx.get("session_id")
    if not isinstance(session, str):
        return None
    return session.strip() or None
