"""``dynamo.runtime.logging``: stock's logging set-up is dynamo_lite's."""

from __future__ import annotations

import os
from typing import Any

from ..logsetup import configure_logging

__all__ = ["configure_dynamo_logging"]


def configure_dynamo_logging(*args: Any, **kwargs: Any) -> None:
    """Configure logging from ``DYN_LOG`` / ``DYN_LOGGING_JSONL`` (arguments are ignored)."""
    del args, kwargs
    configure_logging(os.environ)
