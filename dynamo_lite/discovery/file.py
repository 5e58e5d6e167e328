"""File discovery backend (``--discovery-backend file``, root ``DYN_FILE_KV``).

One file per key: ``$DYN_FILE_KV/<bucket>/<percent-encoded key>``, holding the
same JSON value etcd would. Readers (the stock frontend) watch the bucket
directories with inotify and read a file once, at the event, so a file must
appear complete: we write ``.tmp_<random>`` beside it and ``rename()`` it into
place, so a reader sees the old content or the new, never a part.

Liveness is the mtime: every process touches its own files every ``TTL/3``
(3.33 s) and a reader treats a file older than ``TTL`` (10 s) as gone. The
stock frontend also *deletes* such files in the buckets it reads; this store
does the same only when built with ``reap=True`` (a reader that stands in for
a frontend), and only in buckets it has listed. A file of ours that someone
reaped while we were stalled is written back at the next touch, under the same
instance id (``on_recovered`` is told).

:meth:`close` removes every file the store wrote; so does interpreter exit
when the store was never closed (an ``atexit`` hook), leaving only a killed
process's files to the reapers.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import time
from pathlib import Path

import anyio
import anyio.abc

from . import keys
from .base import DiscoveryError, KvStore

logger = logging.getLogger(__name__)

FILE_TTL = 10.0
TOUCH_INTERVAL = max(FILE_TTL / 3, 1.0)

# Strong references: a store dropped without close() must still be cleaned up.
_OPEN_STORES: set[FileStore] = set()


def random_instance_id() -> int:
    """A random non-zero id below 2**63 (what ``secrets.randbits(63) or 1`` gives)."""
    return (int.from_bytes(os.urandom(8), "big") >> 1) or 1


@atexit.register
def _remove_unclosed() -> None:
    for store in list(_OPEN_STORES):
        store.remove_owned_files()


class FileStore(KvStore):
    def __init__(
        self,
        root: Path | str,
        *,
        instance_id: int | None = None,
        reap: bool = False,
        ttl: float = FILE_TTL,
        touch_interval: float | None = None,
    ) -> None:
        self.root = Path(root)
        # Random ids below 2**63 stay exact in every JSON reader. os.urandom,
        # not secrets: secrets loads hmac and OpenSSL's hashlib (≈ 0.6 MiB).
        self._id = instance_id if instance_id is not None else random_instance_id()
        self.reap = reap
        self.ttl = float(ttl)
        if touch_interval is None:
            touch_interval = TOUCH_INTERVAL if self.ttl == FILE_TTL else max(self.ttl / 3, 1.0)
        self.touch_interval = touch_interval
        self._owned: dict[str, bytes] = {}
        self._read_buckets: set[str] = set()
        self.reaped = 0

    @property
    def instance_id(self) -> int:
        return self._id

    @property
    def backend(self) -> str:
        return "file"

    def path_for(self, key: str) -> Path:
        bucket, rest = keys.split_bucket(key)
        return self.root / bucket / keys.encode_file_name(rest)

    async def open(self) -> int:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DiscoveryError(f"cannot create file store root {self.root}: {exc}") from exc
        _OPEN_STORES.add(self)
        return self._id

    def _write(self, key: str, value: bytes) -> None:
        try:
            path = self.path_for(key)
        except ValueError as exc:
            raise DiscoveryError(str(exc)) from exc
        tmp = path.parent / f".tmp_{os.urandom(8).hex()}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(value)
            # rename() is atomic: readers see the old file or the new one.
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise DiscoveryError(f"cannot write {path}: {exc}") from exc

    async def put(self, key: str, value: bytes) -> None:
        self._write(key, value)
        self._owned[key] = value
        _OPEN_STORES.add(self)

    async def delete(self, key: str) -> None:
        self._owned.pop(key, None)
        try:
            self.path_for(key).unlink()
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise DiscoveryError(f"cannot delete {key}: {exc}") from exc

    async def list(self, prefix: str) -> dict[str, bytes]:
        try:
            bucket, rest = keys.split_bucket(prefix if prefix not in keys.BUCKETS else prefix + "/")
        except ValueError as exc:
            raise DiscoveryError(str(exc)) from exc
        self._read_buckets.add(bucket)
        directory = self.root / bucket
        out: dict[str, bytes] = {}
        now = time.time()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise DiscoveryError(f"cannot list {directory}: {exc}") from exc
        for entry in entries:
            if entry.name.startswith(".tmp_"):
                continue
            key_rest = keys.decode_file_name(entry.name)
            if not key_rest.startswith(rest):
                continue
            try:
                if now - entry.stat().st_mtime > self.ttl:
                    if self.reap:
                        self._reap(Path(entry.path), f"{bucket}/{key_rest}")
                    continue
                # Records are a few KiB on a local disk: reading inline is
                # cheaper than a thread hop.
                with open(entry.path, "rb") as f:  # noqa: ASYNC230
                    out[f"{bucket}/{key_rest}"] = f.read()
            except OSError:
                continue
        return out

    def _reap(self, path: Path, key: str) -> None:
        # Look again right before deleting: the owner may just have touched it.
        try:
            if time.time() - path.stat().st_mtime <= self.ttl:
                return
            path.unlink()
        except OSError:
            return
        self.reaped += 1
        logger.info("file store: expired %s", key)

    def reap_once(self) -> int:
        """Delete expired files in every bucket this store has listed."""
        before = self.reaped
        now = time.time()
        for bucket in sorted(self._read_buckets):
            try:
                entries = list(os.scandir(self.root / bucket))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".tmp_"):
                    continue
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > self.ttl:
                        key = f"{bucket}/{keys.decode_file_name(entry.name)}"
                        if key not in self._owned:
                            self._reap(Path(entry.path), key)
        return self.reaped - before

    def touch_once(self) -> bool:
        """Refresh our files' mtimes; write back any that vanished. True if any did."""
        recovered = False
        for key, value in list(self._owned.items()):
            try:
                os.utime(self.path_for(key))
            except FileNotFoundError:
                # Reaped while we were stalled (or removed by hand): write it
                # back so routing resumes under the same instance id.
                try:
                    self._write(key, value)
                    recovered = True
                except DiscoveryError as exc:
                    logger.warning("file store: cannot restore %s: %s", key, exc)
            except OSError as exc:
                logger.warning("file store: cannot refresh %s: %s", key, exc)
        return recovered

    async def keep_alive(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Touch our files every ``touch_interval`` (and reap, if asked) until cancelled."""
        task_status.started()
        while True:
            await anyio.sleep(self.touch_interval)
            recovered = self.touch_once()
            if self.reap:
                self.reap_once()
            if recovered:
                await self._notify(self.on_recovered, "file records restored after expiry")

    def remove_owned_files(self) -> None:
        """Synchronously delete every file this store wrote (used at exit)."""
        for key in list(self._owned):
            self._owned.pop(key, None)
            with contextlib.suppress(OSError, ValueError):
                self.path_for(key).unlink()

    async def close(self) -> None:
        self.remove_owned_files()
        _OPEN_STORES.discard(self)
