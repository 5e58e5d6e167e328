"""The lifecycle of real worker processes (conformance.md §9.2 and the stricter proposals).

Each test spawns ``tests/engines/lifecycle_engine.py`` (the sample engine plus
call recording and failure injection) and observes it from outside: exit
status, the recorded calls, discovery and the status server.
"""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo_lite.discovery import keys
from tests.support.extras import require_module
from tests.support.lite import REPO, read_events, wait_until, worker_argv, worker_env
from tests.support.ports import free_port
from tests.support.services import EtcdServer, ManagedProcess

LIFECYCLE = REPO / "tests" / "engines" / "lifecycle_engine.py"


def names(events: Path) -> list[str]:
    return [e["event"] for e in read_events(events)]


def instance_files(kv: Path) -> list[Path]:
    # The serving endpoint's records (not the KV query endpoint's).
    return [
        p
        for p in (kv / "v1" / "instances").glob("*")
        if p.is_file() and "worker%5Fkv%5Fquery" not in p.name
    ]


def etcd_instance_keys(etcd: EtcdServer) -> list[str]:
    import base64

    r = httpx.post(
        etcd.endpoint + "/v3/kv/range",
        timeout=5,
        json={
            "key": base64.b64encode(b"v1/instances/").decode(),
            "range_end": base64.b64encode(b"v1/instances0").decode(),
        },
    )
    return [base64.b64decode(kv["key"]).decode() for kv in r.json().get("kvs", [])]


def start_worker(
    spawn: Any,
    model: Path,
    kv: Path,
    events: Path,
    *,
    argv_extra: tuple[str, ...] = (),
    wait: bool = True,
    **knobs: Any,
) -> ManagedProcess:
    env = worker_env(file_kv=kv, events=events, **knobs)
    proc: ManagedProcess = spawn(
        worker_argv(model, script=LIFECYCLE, extra=argv_extra), env=env, name="lifecycle"
    )
    if wait:
        wait_until(
            lambda: instance_files(kv) or not proc.running, timeout=20, what="instance registration"
        )
        assert proc.running, proc.log_tail()
    return proc


def test_startup_order_and_worker_id(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    proc = start_worker(spawn, tiny_model, file_kv, events, PROBE_DP_RANKS="1")
    (inst,) = instance_files(file_kv)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    order = names(events)
    expected = [
        "from_args", "start", "start_done", "register_prometheus", "component_metrics_dp_ranks",
        "kv_event_sources", "push_source_on_ready", "attach_snapshot_publisher",
        "on_endpoint_ready", "supported_controls", "supported_updates", "health_check_payload",
        "drain", "cleanup",
    ]  # fmt: skip
    assert order == expected
    calls = {e["event"]: e for e in read_events(events)}
    # Card and instance appear exactly where the stock worker writes them.
    assert not calls["on_endpoint_ready"]["card"] and not calls["on_endpoint_ready"]["instance"]
    assert calls["supported_controls"]["card"] and not calls["supported_controls"]["instance"]
    assert not calls["health_check_payload"]["instance"]
    key = keys.decode_file_name(inst.name)
    assert int(key.rsplit("/", 1)[1], 16) == calls["start"]["worker_id"]


def test_health_and_live_follow_the_lifecycle(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    port = free_port()
    events = tmp_path / "events.jsonl"
    proc = start_worker(
        spawn,
        tiny_model,
        file_kv,
        events,
        wait=False,
        DYN_SYSTEM_PORT=port,
        PROBE_DELAY_START="1.5",
        DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="2",
    )
    base = f"http://127.0.0.1:{port}"

    def probe(path: str = "/health") -> httpx.Response | None:
        try:
            return httpx.get(base + path, timeout=2)
        except httpx.HTTPError:
            return None

    starting = wait_until(probe, timeout=10, what="system server")
    assert starting.status_code == 503
    assert starting.json()["status"] == "notready"
    assert starting.headers["content-type"] == "text/plain; charset=utf-8"
    ready = wait_until(
        lambda: (r := probe()) is not None and r.status_code == 200 and r, timeout=10, what="ready"
    )
    body = ready.json()
    assert body["status"] == "ready" and body["endpoints"] == {"generate": "ready"}
    assert set(body["uptime"]) == {"secs", "nanos"}
    live = probe("/live")
    assert live is not None and live.status_code == 200
    assert httpx.head(base + "/health", timeout=2).status_code == 200
    assert httpx.post(base + "/health", timeout=2).status_code == 405
    assert httpx.get(base + "/nope", timeout=2).status_code == 404
    proc.send_signal(signal.SIGTERM)
    after = probe()
    assert after is not None and after.status_code == 503
    assert after.json()["endpoints"] == {"generate": "notready"}
    assert (r := probe("/live")) is not None and r.status_code == 503
    assert proc.wait(20) == 0


def test_signal_during_discovery_connect_exits_0_without_start(
    spawn: Any, tiny_model: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    env = worker_env(
        events=events,
        ETCD_ENDPOINTS=f"http://127.0.0.1:{free_port()}",
        ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS="60",
    )
    proc = spawn(worker_argv(tiny_model, script=LIFECYCLE, discovery="etcd"), env=env)
    wait_until(
        lambda: "etcd not reachable yet" in proc.log_text(), timeout=20, what="discovery connect"
    )
    proc.send_signal(signal.SIGTERM)
    # Well inside the 60 s connect timeout: the signal ended the connect.
    assert proc.wait(20) == 0
    assert names(events) == ["from_args"]


def test_discovery_unreachable_at_startup_exits_1(
    spawn: Any, tiny_model: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    env = worker_env(
        events=events,
        ETCD_ENDPOINTS=f"http://127.0.0.1:{free_port()}",
        ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS="1.5",
    )
    proc = spawn(worker_argv(tiny_model, script=LIFECYCLE, discovery="etcd"), env=env)
    assert proc.wait(15) == 1
    assert names(events) == ["from_args"]
    assert "could not connect to etcd within 1.5s" in proc.log_text()


def test_signal_during_start_finishes_start_then_cleans_up(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    proc = start_worker(spawn, tiny_model, file_kv, events, wait=False, PROBE_DELAY_START="1.5")
    wait_until(lambda: "start" in names(events), timeout=10, what="start()")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    order = names(events)
    assert order[:3] == ["from_args", "start", "start_done"]
    assert order[-1] == "cleanup" and order.count("cleanup") == 1
    assert "supported_controls" not in order  # never served
    assert not instance_files(file_kv)


@pytest.mark.parametrize(
    "hook", ["start", "register_prometheus", "kv_event_sources", "on_endpoint_ready"]
)
def test_start_or_setup_failure_cleans_up_once_and_exits_1(
    hook: str, spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    proc = start_worker(spawn, tiny_model, file_kv, events, wait=False, PROBE_FAIL=hook)
    assert proc.wait(15) == 1
    assert names(events).count("cleanup") == 1
    assert names(events)[-1] == "cleanup"
    assert not [p for p in file_kv.rglob("*") if p.is_file()]


def test_from_args_failure_exits_1_without_cleanup(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    proc = start_worker(spawn, tiny_model, file_kv, events, wait=False, PROBE_FAIL="from_args")
    assert proc.wait(15) == 1
    assert names(events) == ["from_args"]
    assert "probe: from_args failed on purpose" in proc.log_text()


def test_cleanup_failure_still_exits_0(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    proc = start_worker(spawn, tiny_model, file_kv, events, PROBE_FAIL="cleanup")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert "engine cleanup failed" in proc.log_text()
    assert not [p for p in file_kv.rglob("*") if p.is_file()]


def test_watchdog_force_exits_with_143(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    proc = start_worker(
        spawn,
        tiny_model,
        file_kv,
        events,
        PROBE_DELAY_CLEANUP="30",
        DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT="1",
        DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0.5",
    )
    proc.send_signal(signal.SIGTERM)
    # The watchdog (1 s) cut the 30 s cleanup short: exit(911), as the stock worker.
    assert proc.wait(20) == 143
    assert "cleanup" in names(events)
    assert "force-exiting with code 911" in proc.log_text()


@pytest.mark.parametrize("ignored", [False, True], ids=["default-sigint", "ignored-sigint"])
def test_sigint_is_graceful_whatever_the_inherited_disposition(
    ignored: bool, spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    argv = worker_argv(tiny_model, script=LIFECYCLE)
    if ignored:
        # `trap "" INT` makes the exec'd worker inherit SIGINT as ignored.
        argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]
    proc = spawn(argv, env=worker_env(file_kv=file_kv, events=events), name="sigint")
    wait_until(lambda: instance_files(file_kv), timeout=20, what="registration")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    assert names(events).count("cleanup") == 1
    assert not instance_files(file_kv)


def test_second_signal_skips_grace_and_drain(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    import anyio

    from dynamo_lite.client import Client, RemoteError
    from dynamo_lite.discovery import FileStore

    events = tmp_path / "events.jsonl"
    proc = start_worker(
        spawn, tiny_model, file_kv, events, DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="30"
    )

    async def scenario() -> str:
        # Well inside the 30 s grace: the second signal skipped it.
        with anyio.fail_after(20):
            return await cut_stream()

    async def cut_stream() -> str:
        async with Client("dynamo", "sample", "generate", store=FileStore(file_kv)) as client:
            stream = await client.generate(
                {"token_ids": [1], "stop_conditions": {"max_tokens": 100_000}}
            )
            got = 0
            try:
                async for _ in stream:
                    got += 1
                    if got == 3:
                        proc.send_signal(signal.SIGTERM)
                    if got == 20:
                        proc.send_signal(signal.SIGTERM)
            except RemoteError as err:
                return err.error_class
            return "no error"

    assert anyio.run(scenario) == "Unavailable"
    assert proc.wait(10) == 0
    assert names(events).count("cleanup") == 1


def test_lease_loss_reregisters_and_keeps_serving(
    spawn: Any, tiny_model: Path, etcd: EtcdServer, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    env = worker_env(etcd_endpoint=etcd.endpoint, events=events, ETCD_LEASE_TTL="2")
    proc = spawn(worker_argv(tiny_model, script=LIFECYCLE, discovery="etcd"), env=env)

    # The serving endpoint's record is written last (the KV query endpoint's comes first).
    wait_until(
        lambda: any("worker_kv_query" not in k for k in etcd_instance_keys(etcd)),
        timeout=20,
        what="registration",
    )
    before = etcd_instance_keys(etcd)
    etcd.restart(keep_data=False)
    wait_until(lambda: etcd_instance_keys(etcd) == before, timeout=20, what="re-registration")
    # The records come back first, then the worker is told (and logs it).
    wait_until(
        lambda: "discovery liveness restored" in proc.log_text(), timeout=10, what="recovery log"
    )
    assert proc.running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_lease_loss_can_restore_the_stock_exit(
    spawn: Any, tiny_model: Path, etcd: EtcdServer, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    env = worker_env(
        etcd_endpoint=etcd.endpoint,
        events=events,
        ETCD_LEASE_TTL="2",
        DYN_LITE_EXIT_ON_LEASE_LOSS="1",
    )
    proc = spawn(worker_argv(tiny_model, script=LIFECYCLE, discovery="etcd"), env=env)
    wait_until(lambda: "health_check_payload" in names(events), timeout=20, what="serving")
    wait_until(lambda: etcd_instance_keys(etcd), timeout=20, what="registration")
    etcd.restart(keep_data=False)
    assert proc.wait(20) == 0
    assert names(events).count("cleanup") == 1
    assert "lease lost" in proc.log_text()


def test_prefill_drain_polls_is_quiescent(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    proc = start_worker(
        spawn,
        tiny_model,
        file_kv,
        events,
        argv_extra=("--disaggregation-mode", "prefill"),
        PROBE_QUIESCENT="3",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    recorded = read_events(events)
    polls = [e for e in recorded if e["event"] == "is_quiescent"]
    assert [p["n"] for p in polls] == [1, 2, 3]
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(polls)]
    # Polled every 0.5 s: never faster (a slow machine may only make it slower).
    assert all(g >= 0.4 for g in gaps), gaps
    order = names(events)
    assert order.index("is_quiescent") < order.index("cleanup")
    assert "polling is_quiescent" in proc.log_text()


def test_unregister_is_immediate_and_grace_is_honoured(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    proc = start_worker(
        spawn, tiny_model, file_kv, events, DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="1.5"
    )
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: not instance_files(file_kv), timeout=20, what="instance record removed")
    assert proc.wait(20) == 0
    # Unregistered first, then the grace period, then the drain; never a shorter grace.
    log = proc.log_text()
    unregistered = log.index("Endpoint unregistered from discovery")
    assert unregistered < log.index("Grace period 1.50s before drain")
    order = names(events)
    assert order.index("drain") < order.index("cleanup")
    assert time.monotonic() - t0 >= 1.5


@pytest.mark.parametrize("uvloop", ["1", "0"])
def test_worker_serves_with_and_without_uvloop(
    uvloop: str, spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    import anyio

    from dynamo_lite.client import Client
    from dynamo_lite.discovery import FileStore

    require_module("uvloop")
    events = tmp_path / "events.jsonl"
    proc = start_worker(spawn, tiny_model, file_kv, events, DYN_LITE_UVLOOP=uvloop)

    async def request() -> list[dict[str, Any]]:
        async with Client("dynamo", "sample", "generate", store=FileStore(file_kv)) as client:
            stream = await client.generate({"token_ids": [1], "stop_conditions": {"max_tokens": 3}})
            return await stream.collect()

    assert anyio.run(request)[-1]["finish_reason"] == "length"
    (start,) = [e for e in read_events(events) if e["event"] == "start"]
    assert start["loop"].startswith("uvloop") == (uvloop == "1")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
