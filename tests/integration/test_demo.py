"""``dynamo-lite demo`` works with no services: no etcd, NATS or frontend."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_without_services() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ETCD_ENDPOINTS", "NATS_SERVER")}
    env["DYN_LITE_CHECKSUM_CACHE"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "dynamo_lite", "demo", "--grace", "0.2", "--delay", "0.005"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for needle in (
        "lifecycle registering → serving",
        "discovered instance",
        "request 1 done: 4 tokens",
        "finish_reason=length",
        "sent 'kill'",
        "request cancellation received",
        "aborted",
        "SIGTERM received",
        "Endpoint unregistered from discovery",
        "lifecycle serving → grace  (SIGTERM",
        "lifecycle teardown → stopped",
        "worker exited with status 0; records left in the store: 0",
    ):
        assert needle in out, f"{needle!r} missing from:\n{out}"
