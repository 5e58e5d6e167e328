"""A rolling restart across hosts under continuous load: zero failed requests.

Two workers on two hosts serve a steady stream of chats from the client host.
Each is replaced in turn (SIGTERM, wait for its exit, start the replacement on
a fresh host, wait until it is registered). The grace period after
unregistering lets the frontend stop routing to a worker before it closes its
endpoint; requests already running finish during the drain, and the frontend
migrates (``--migration-limit``) the few it drops itself at the moment of the
unregistration.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.services import ManagedProcess

pytestmark = pytest.mark.interop

GRACE = "2"


@dataclass
class Load:
    cluster: Cluster
    threads: int = 3
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        body = {
            "model": str(self.cluster.model_dir),
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 20,
        }
        # Each thread enters the client host's network itself (setns is per thread).
        with self.cluster.http(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    resp = client.post("/v1/chat/completions", json=body)
                    good = resp.status_code == 200 and bool(
                        resp.json()["choices"][0]["message"]["content"]
                    )
                    detail = f"{resp.status_code} {resp.text[:200]}"
                except httpx.HTTPError as exc:
                    good, detail = False, repr(exc)
                with self._lock:
                    if good:
                        self.ok += 1
                    else:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {detail}")

    def start(self) -> None:
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)

    def count(self) -> int:
        with self._lock:
            return self.ok

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(90)


def _wait_more(load: Load, n: int) -> None:
    from tests.support.lite import wait_until

    target = load.count() + n
    wait_until(lambda: load.count() >= target, timeout=60, what=f"{n} more requests")


@pytest.mark.parametrize("kind", ["lite", "stock"])
def test_rolling_restart_under_load_fails_no_request(
    cluster: Cluster, tmp_path: Path, kind: str
) -> None:
    def start(name: str) -> ManagedProcess:
        host = cluster.worker_host(name)
        env = {"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": GRACE}
        if kind == "lite":
            return cluster.start_lite_worker(host, **env)
        return cluster.start_stock_worker(host, **env)

    workers = [start("w1"), start("w2")]
    # The stock frontend drops, as soon as a worker unregisters, the requests
    # whose response stream that worker has not opened yet ("discovery-driven
    # cleanup"): without migration those few fail with 503, whatever the worker.
    cluster.start_frontend("--migration-limit", "3")
    cluster.wait_instances(2)
    cluster.wait_http(lambda r: str(cluster.model_dir) in r.text, "/v1/models", what="model")
    load = Load(cluster)
    load.start()
    try:
        _wait_more(load, 10)
        for i, old in enumerate(list(workers)):
            old.send_signal(signal.SIGTERM)
            assert old.wait(60) == 0, old.log_tail()
            _wait_more(load, 5)  # served by the other worker alone
            workers[i] = start(f"w{i + 3}")
            cluster.wait_instances(2)
            _wait_more(load, 10)
    finally:
        load.stop()
    assert load.failures == []
    assert load.ok >= 40
