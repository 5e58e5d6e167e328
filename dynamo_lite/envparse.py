"""Parsers for environment variables: one rule per kind of value.

Every parser takes the environment mapping, the variable's name and the
default, and never raises: an unset or blank variable gives the default, and
a value that does not parse is logged at WARNING (naming the variable) and
gives the default too. Only :mod:`dynamo_lite.config` hands these
``os.environ``; everything below it receives parsed settings.

Booleans follow the stock runtime (``is_truthy`` / ``is_falsey`` in its
``config.rs``, ``parse_bool`` in ``dynamo.common.configuration``): true is
``1``, ``true``, ``on``, ``yes``; false is ``0``, ``false``, ``off``, ``no``
(case-insensitive, surrounding blanks ignored). A few variables keep a
narrower historical set; they pass their own ``truthy``/``falsy``.

This module imports nothing from dynamo_lite.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from typing import TypeVar

__all__ = [
    "FALSY",
    "TRUTHY",
    "parse_bool",
    "parse_choice",
    "parse_duration",
    "parse_float",
    "parse_int",
    "parse_list",
    "parse_port",
    "parse_str",
]

logger = logging.getLogger(__name__)

#: Stock's truthy and falsy spellings.
TRUTHY = frozenset({"1", "true", "on", "yes"})
FALSY = frozenset({"0", "false", "off", "no"})

_D = TypeVar("_D")


def _raw(env: Mapping[str, str], name: str) -> str | None:
    """The stripped value, or None when unset or blank."""
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _invalid(name: str, raw: str, default: object) -> None:
    logger.warning("Invalid %s=%r; using default %s", name, raw, default)


def parse_str(env: Mapping[str, str], name: str) -> str | None:
    """The value as given (not stripped), or None when unset or empty."""
    return env.get(name) or None


def parse_bool(
    env: Mapping[str, str],
    name: str,
    default: bool,
    *,
    truthy: Collection[str] | None = TRUTHY,
    falsy: Collection[str] = FALSY,
) -> bool:
    """A switch. ``truthy=None``: anything set and not falsy is true."""
    raw = _raw(env, name)
    if raw is None:
        return default
    value = raw.lower()
    if value in falsy:
        return False
    if truthy is None or value in truthy:
        return True
    _invalid(name, raw, default)
    return default


def parse_float(
    env: Mapping[str, str],
    name: str,
    default: _D,
    *,
    allow_zero: bool = True,
    clamp_negative: bool = False,
) -> float | _D:
    """A finite, non-negative number. Negative values give the default
    (or 0 with ``clamp_negative``); zero gives the default unless allowed."""
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        _invalid(name, raw, default)
        return default
    if value < 0:
        if clamp_negative:
            return 0.0
        _invalid(name, raw, default)
        return default
    if value == 0 and not allow_zero:
        _invalid(name, raw, default)
        return default
    return value


#: Seconds; the same rules as :func:`parse_float`.
parse_duration = parse_float


def parse_int(
    env: Mapping[str, str], name: str, default: _D, *, minimum: int | None = None
) -> int | _D:
    """A base-10 integer; below ``minimum`` (when given) gives the default."""
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        _invalid(name, raw, default)
        return default
    if minimum is not None and value < minimum:
        _invalid(name, raw, default)
        return default
    return value


def parse_port(env: Mapping[str, str], name: str, default: _D) -> int | _D:
    """A TCP port, 0..65535 (0: any free port).

    A negative number is stock's way of saying "off" and gives the default
    quietly; text or a number above 65535 is warned about. (Stock reads
    ``DYN_SYSTEM_PORT`` as an i16 and so refuses ports above 32767; every
    real port works here.)
    """
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        _invalid(name, raw, default)
        return default
    if value < 0:
        return default
    if value > 65535:
        _invalid(name, raw, default)
        return default
    return value


def parse_list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated items, each stripped, empty ones dropped; none → default."""
    items = tuple(item.strip() for item in (env.get(name) or "").split(","))
    return tuple(item for item in items if item) or default


def parse_choice(env: Mapping[str, str], name: str, default: str, choices: Collection[str]) -> str:
    """One of ``choices`` (compared lower-case), else the default with a warning."""
    raw = _raw(env, name)
    if raw is None:
        return default
    value = raw.lower()
    if value in choices:
        return value
    _invalid(name, raw, default)
    return default
