"""Multimodal and encode-role helpers at their stock address (``dynamo.common.backend.multimodal``).

The helpers live in :mod:`dynamo_lite.disagg` beside the prefill/decode ones;
see there for the wire shapes.
"""

from __future__ import annotations

from .disagg import encoder_terminal_chunk, extract_multimodal_kwargs, require_encoder_result

__all__ = ["encoder_terminal_chunk", "extract_multimodal_kwargs", "require_encoder_result"]
