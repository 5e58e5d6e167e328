"""``token_ids`` in every shape the request plane carries (``dynamo.common.utils.token_ids``).

The frontend sends a prompt's token ids as a list or, with
``DYN_TOKEN_IDS_AS_BYTES``, as one buffer of little-endian int32 values.
Engines that want a list call :func:`normalize_request_token_ids` (or
:func:`token_ids_to_list`) first; :func:`token_ids_len` counts either shape
without converting.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, MutableMapping
from typing import Any, TypeVar, cast, overload

__all__ = ["normalize_request_token_ids", "token_ids_len", "token_ids_to_list"]

_RequestT = TypeVar("_RequestT", bound=Mapping[str, Any])
_BUFFERS = (bytes, bytearray, memoryview)


@overload
def token_ids_to_list(value: None) -> None: ...


@overload
def token_ids_to_list(value: Any) -> list[int]: ...


def token_ids_to_list(value: Any) -> list[int] | None:
    """A list stays as it is; a packed buffer is decoded; anything iterable is listed."""
    if value is None or isinstance(value, list):
        return cast("list[int] | None", value)
    if isinstance(value, _BUFFERS):
        raw = bytes(value)
        if len(raw) % 4:
            raise ValueError(f"packed token_ids byte length {len(raw)} is not a multiple of 4")
        return list(struct.unpack(f"<{len(raw) // 4}i", raw))
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return cast("list[int]", tolist())
    return list(value)


def token_ids_len(value: Any) -> int:
    """How many token ids ``value`` holds, without decoding a packed buffer."""
    if value is None:
        return 0
    if isinstance(value, _BUFFERS):
        return memoryview(value).nbytes // 4
    return len(value)


def normalize_request_token_ids(request: _RequestT) -> _RequestT:
    """Replace a non-list ``request["token_ids"]`` by its list, in place; returns ``request``."""
    ids = request.get("token_ids")
    if ids is not None and not isinstance(ids, list):
        cast("MutableMapping[str, Any]", request)["token_ids"] = token_ids_to_list(ids)
    return request
