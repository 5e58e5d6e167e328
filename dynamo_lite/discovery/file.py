"""File discovery backend (``--discovery-backend file``, root ``DYN_FILE_KV``).

One file per key: ``$DYN_FILE_KV/<bucket>/<percent-encoded key>``, holding the
same JSON value etcd would. Readers (the stock frontend) watch the bucket
directories with inotify and read a file once, at the event, so a file must
appear complete: we write ``.tmp_<random>`` beside it and ``rename()`` it into
place. Liveness is the mtime: every process touches its own files every
``TTL/3`` (3.33 s) and anyone may delete a file older than ``TTL`` (10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from pathlib import Path

from . import keys
from .base import DiscoveryError, KvStore

logger = logging.getLogger(__name__)

FILE_TTL = 10.0
TOUCH_INTERVAL = max(FILE_TTL / 3, 1.0)


class FileStore(KvStore):
    def __init__(self, root: Path | str, *, instance_id: int | None = None) -> None:
        self.root = Path(root)
        # Random ids below 2**63 stay exact in every JSON reader.
        self._id = instance_id if instance_id is not None else secrets.randbits(63) or 1
        self._owned: dict[str, bytes] = {}
        self._touch_task: asyncio.Task[None] | None = None

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
        if self._touch_task is None:
            self._touch_task = asyncio.create_task(self._touch_loop(), name="file-kv-touch")
        return self._id

    def _write(self, key: str, value: bytes) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp_{secrets.token_hex(8)}"
        try:
            with open(tmp, "wb") as f:
                f.write(value)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise DiscoveryError(f"cannot write {path}: {exc}") from exc

    async def put(self, key: str, value: bytes) -> None:
        self._write(key, value)
        self._owned[key] = value

    async def delete(self, key: str) -> None:
        self._owned.pop(key, None)
        try:
            self.path_for(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise DiscoveryError(f"cannot delete {key}: {exc}") from exc

    async def list(self, prefix: str) -> dict[str, bytes]:
        bucket, rest = keys.split_bucket(prefix if prefix not in keys.BUCKETS else prefix + "/")
        directory = self.root / bucket
        out: dict[str, bytes] = {}
        now = time.time()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return out
        for entry in entries:
            if entry.name.startswith(".tmp_"):
                continue
            key_rest = keys.decode_file_name(entry.name)
            if not key_rest.startswith(rest):
                continue
            try:
                if now - entry.stat().st_mtime > FILE_TTL:
                    continue
                # Records are a few KiB on a local disk: reading inline is
                # cheaper than a thread hop.
                with open(entry.path, "rb") as f:  # noqa: ASYNC230
                    out[f"{bucket}/{key_rest}"] = f.read()
            except OSError:
                continue
        return out

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(TOUCH_INTERVAL)
            recovered = False
            for key, value in list(self._owned.items()):
                path = self.path_for(key)
                try:
                    os.utime(path)
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
            if recovered and self.on_recovered is not None:
                await self.on_recovered("file records restored after expiry")

    async def close(self) -> None:
        task, self._touch_task = self._touch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for key in list(self._owned):
            with contextlib.suppress(DiscoveryError):
                await self.delete(key)
