"""The codecs' own exceptions: garbage on the wire raises these and nothing else."""

from __future__ import annotations


class ProtocolError(Exception):
    """Bytes that do not form a valid frame of the plane being decoded."""


class MalformedFrame(ProtocolError):
    """A frame whose structure or content cannot be parsed."""


class FrameTooLarge(ProtocolError):
    """A frame that declares more bytes than the configured limit allows.

    Raised as soon as the length prefix is known, before the body is buffered,
    so an oversized frame never costs more memory than its prefix.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message too large: {size} bytes (max: {limit} bytes)")
        self.size = size
        self.limit = limit
