"""BLAKE3 checksums of model files, as the model card reports them.

The ``blake3`` package (Rust) is used when it is installed; otherwise the
pure-Python ``_pyblake3``.  Set ``DYN_LITE_PURE_BLAKE3=1`` to force the pure
implementation.

File checksums are cached per process and on disk, in
``$XDG_CACHE_HOME/dynamo_lite/checksums.json`` (``~/.cache/...`` by default;
``DYN_LITE_CHECKSUM_CACHE=0`` turns the disk cache off).  An entry is keyed on
the file's real path, size, mtime (ns), inode and device, so a file that is
replaced or rewritten gets a new key and is hashed again.  Files modified in
the last two seconds are hashed but not cached: mtime has a coarse tick, and a
same-size rewrite within one tick would otherwise go unnoticed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Protocol

__all__ = ["blake3_hex", "clear_cache", "file_checksum", "implementation"]

PURE_ENV = "DYN_LITE_PURE_BLAKE3"
CACHE_ENV = "DYN_LITE_CHECKSUM_CACHE"

_READ_SIZE = 1 << 20
_CACHE_VERSION = 1
_CACHE_MAX_ENTRIES = 4096
# A file modified this recently may be modified again within the same mtime
# tick (filesystem timestamps are coarse), which the key could not tell
# apart, so such results are not cached.
_RACY_WINDOW_NS = 2_000_000_000

_HEX = frozenset("0123456789abcdef")

_Key = tuple[str, int, int, int, int]  # realpath, size, mtime_ns, ino, dev

_memory_cache: dict[_Key, tuple[str, int]] = {}
_lock = threading.Lock()

_native_module: ModuleType | None = None
_native_tried = False


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


def _native() -> ModuleType | None:
    """The ``blake3`` package, or None; the import is tried once."""
    global _native_module, _native_tried
    if not _native_tried:
        try:
            import blake3
        except ImportError:
            pass
        else:
            _native_module = blake3
        _native_tried = True
    return _native_module


def _forced_pure() -> bool:
    from .config import process_switches

    return process_switches().pure_blake3


def _use_pure() -> bool:
    # Checked before the import so that a forced pure run never loads the
    # compiled package at all.
    return _forced_pure() or _native() is None


def implementation() -> str:
    """``"blake3"`` (the Rust package) or ``"pure-python"``."""
    return "pure-python" if _use_pure() else "blake3"


def _new_hasher() -> _Hasher:
    native = None if _forced_pure() else _native()
    if native is None:
        # Imported when first needed: the checksum cache usually spares it.
        from . import _pyblake3

        return _pyblake3.Hasher()
    hasher: _Hasher = native.blake3()
    return hasher


def blake3_hex(data: bytes) -> str:
    """BLAKE3-256 of ``data`` as 64 lowercase hex digits."""
    hasher = _new_hasher()
    hasher.update(data)
    return hasher.hexdigest()


def _hash_file(path: str) -> tuple[str, int]:
    """Hash a file by streaming it; returns (hex digest, bytes read)."""
    hasher = _new_hasher()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_SIZE):
            hasher.update(block)
            size += len(block)
    return hasher.hexdigest(), size


def _stat_key(path: str) -> _Key:
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _cache_file() -> Path | None:
    from .config import process_switches

    return process_switches().checksum_cache


def _disk_key(key: _Key) -> str:
    path, size, mtime_ns, ino, dev = key
    return f"{dev}:{ino}:{size}:{mtime_ns}:{path}"


def _load_disk(cache: Path) -> dict[str, str]:
    """The disk cache's entries; empty if it is missing, unreadable or corrupt."""
    try:
        raw = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("version") != _CACHE_VERSION:
        return {}
    entries = raw.get("entries")
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, str)}


def _valid_checksum(value: str) -> bool:
    prefix, _, hexdigest = value.partition(":")
    return prefix == "blake3" and len(hexdigest) == 64 and _HEX.issuperset(hexdigest)


def _store_disk(cache: Path, key: str, checksum: str) -> None:
    """Add one entry; best effort, never raises for I/O problems."""
    entries = _load_disk(cache)
    entries.pop(key, None)
    entries[key] = checksum  # re-insert so it counts as the newest
    if len(entries) > _CACHE_MAX_ENTRIES:
        entries = dict(list(entries.items())[-_CACHE_MAX_ENTRIES:])
    text = json.dumps({"version": _CACHE_VERSION, "entries": entries})
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Write a sibling temp file and rename it over the cache, so readers
        # (other processes included) never see a half-written file.
        # (mkstemp's way, without tempfile: it loads shutil, random, bz2 and lzma)
        tmp = str(cache.parent / f".checksums-{os.urandom(8).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, cache)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def file_checksum(path: str | os.PathLike[str]) -> tuple[str, int]:
    """``("blake3:<64 hex digits>", size in bytes)`` of a file, cached."""
    real = os.path.realpath(path)
    key = _stat_key(real)
    with _lock:
        hit = _memory_cache.get(key)
    if hit is not None:
        return hit

    cache = _cache_file()
    if cache is not None:
        digest = _load_disk(cache).get(_disk_key(key))
        if digest is not None and _valid_checksum(digest):
            result = (digest, key[1])
            with _lock:
                _memory_cache[key] = result
            return result

    hexdigest, size = _hash_file(real)
    result = (f"blake3:{hexdigest}", size)
    # Cache only if the file did not change while it was read and is not so
    # fresh that a same-size rewrite could keep the same mtime.
    try:
        unchanged = _stat_key(real) == key and size == key[1]
    except OSError:
        unchanged = False
    if unchanged and time.time_ns() - key[2] >= _RACY_WINDOW_NS:
        with _lock:
            _memory_cache[key] = result
        if cache is not None:
            _store_disk(cache, _disk_key(key), result[0])
    return result


def clear_cache() -> None:
    """Forget this process's cached checksums (the disk cache is kept)."""
    with _lock:
        _memory_cache.clear()
