"""``dynamo._core``: the names engines take from the Rust extension, in pure Python.

``Context`` is :class:`dynamo_lite.Context` itself, so a context an engine or
a test builds is the one dynamo_lite's worker hands to ``generate()``.
"""

from __future__ import annotations

from ..context import Context, ContextMetadata
from ..model_cards import ModelType, WorkerType, register_model, unregister_model
from ..telemetry import SpanProxy

__all__ = [
    "Context",
    "ContextMetadata",
    "ModelType",
    "SpanProxy",
    "WorkerType",
    "register_model",
    "unregister_model",
]
