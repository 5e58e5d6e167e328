"""KV-aware routing: the stock frontend in ``--router-mode kv`` places requests on
dynamo_lite workers by the KV blocks they announce, as it does on stock workers.

Two workers run ``tests/engines/prefix_cache_engine.py`` (announces every full
16-token block of each prompt, never evicts). Per prompt family, 12 sequential
requests with the same long prompt; affinity = share of the family's requests
on its most-used worker. Round-robin gives about 0.5, two stock workers 1.00.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo_lite.discovery import keys as dkeys
from dynamo_lite.kv.publisher import KvEventPublisher, LocalIndexer
from dynamo_lite.kv.xxh3 import block_tokens_hash
from dynamo_lite.protocol import kv_events as kve
from dynamo_lite.protocol import zmtp
from dynamo_lite.transport.zmq_plane import ZmqPubServer
from tests.support.lite import REPO, wait_until
from tests.support.stock import loopback_env, stock_python

ENGINE = REPO / "tests" / "engines" / "prefix_cache_engine.py"
FAMILIES = ["apple banana cherry " * 25, "delta echo foxtrot " * 25, "golf hotel india " * 25]
ROUNDS = 12


# --- in-process: publisher → ZMQ PUB → a ZMTP subscriber ----------------------------


async def _subscribe(
    port: int, topic: bytes
) -> tuple[asyncio.StreamReader, zmtp.ZmtpConnection, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = zmtp.ZmtpConnection(b"SUB")
    writer.write(conn.start())
    while not conn.ready:
        conn.feed(await reader.read(4096))
        writer.write(conn.data_to_send())
    writer.write(conn.send_subscribe(topic))
    await writer.drain()
    # The writer must stay referenced: collecting it closes the connection.
    return reader, conn, writer


async def _next_messages(
    reader: asyncio.StreamReader, conn: zmtp.ZmtpConnection, n: int
) -> list[zmtp.Message]:
    got: list[zmtp.Message] = []
    while len(got) < n:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "publisher closed the connection"
        got += [e for e in conn.feed(data) if isinstance(e, zmtp.Message)]
    return got


@pytest.mark.anyio
async def test_publisher_from_a_thread_reaches_a_subscriber() -> None:
    server = ZmqPubServer("127.0.0.1")
    port = await server.start()
    indexer = LocalIndexer()
    from dynamo_lite.kv.channels import EventChannel, ZmqEventTransport

    transport = ZmqEventTransport("127.0.0.1", "127.0.0.1")
    transport.server = server
    channel = EventChannel(dkeys.EndpointId("dynamo", "c", "generate"), kve.KV_EVENTS, transport)

    def emit(revs: list[dict[str, Any]]) -> None:
        for rev in revs:
            indexer.record(rev)
        channel.publish(revs)

    pub = KvEventPublisher(
        worker_id=7, kv_block_size=16, dp_rank=0, emit=emit, loop=asyncio.get_running_loop()
    )
    reader, conn, _writer = await _subscribe(port, b"kv-events")
    while not any(len(s.topics) for s in server.subscribers):
        await asyncio.sleep(0.01)
    tokens = list(range(40))

    def engine_thread() -> None:
        pub.publish_stored(tokens[:32], [16, 16], [-5, 6])
        pub.publish_removed([6])
        pub.publish_batch(
            [
                {"type": "stored", "token_ids": tokens[:16], "num_block_tokens": [16],
                 "block_hashes": [9], "parent_hash": -5},
                {"type": "removed", "block_hashes": [9]},
            ]
        )  # fmt: skip

    t = threading.Thread(target=engine_thread)
    t.start()
    t.join()
    msgs = await _next_messages(reader, conn, 3)
    envs = [kve.decode_zmq_message(m.parts) for m in msgs]
    assert [e.sequence for e in envs] == [0, 1, 2]
    batches = [e.value() for e in envs]
    assert [[r["event"]["event_id"] for r in b] for b in batches] == [[1], [2], [3, 4]]
    stored = batches[0][0]["event"]["data"]["stored"]
    assert [b["block_hash"] for b in stored["blocks"]] == [2**64 - 5, 6]
    assert stored["blocks"][1]["tokens_hash"] == block_tokens_hash(tokens[16:32])
    assert batches[2][0]["event"]["data"]["stored"]["parent_hash"] == 2**64 - 5
    # The local indexer answers a restarted frontend and a gap replay.
    dump = indexer.answer({"start_event_id": None}, 7, 0)
    assert dump["data"]["TreeDump"]["last_event_id"] == 4
    assert len(dump["data"]["TreeDump"]["events"]) == 4
    replay = indexer.answer({"start_event_id": 3}, 7, 0)
    assert [e["event"]["event_id"] for e in replay["data"]["Events"]["events"]] == [3, 4]
    await server.close()


def test_indexer_rebuilds_a_dump_from_live_blocks() -> None:
    ix = LocalIndexer(max_log=2)
    for i, data in enumerate(
        [
            kve.stored_data([kve.stored_block(1, 11), kve.stored_block(2, 22)]),
            kve.removed_data([2]),
            kve.stored_data([kve.stored_block(3, 33)], parent_hash=1),
        ],
        start=1,
    ):
        ix.record(kve.router_event(5, i, data))
    events = ix.answer({"start_event_id": None}, 5, 0)["data"]["TreeDump"]["events"]
    chain = [
        (e["event"]["data"]["stored"]["parent_hash"], e["event"]["data"]["stored"]["blocks"][0])
        for e in events
    ]
    assert [(p, b["block_hash"]) for p, b in chain] == [(None, 1), (1, 3)]


def test_slow_subscribers_lose_messages_instead_of_blocking() -> None:
    async def main() -> None:
        server = ZmqPubServer("127.0.0.1", high_water=1024)
        port = await server.start()
        reader, _conn, writer = await _subscribe(port, b"")
        while not any(len(s.topics) for s in server.subscribers):
            await asyncio.sleep(0.01)
        # Never read: the kernel buffers fill, then messages are dropped.
        for _ in range(2000):
            server.send([b"t", b"x" * 4096])
        assert server.dropped > 0
        del reader
        writer.close()
        await server.close()

    asyncio.run(main())


# --- interop with the stock frontend ---------------------------------------------------


def _start_workers(
    spawn: Any,
    tiny_model: Path,
    tmp_path: Path,
    discovery_env: dict[str, str],
    extra: list[str],
    kinds: list[str],
    procs: list[Any] | None = None,
) -> list[Path]:
    logs = []
    for i, kind in enumerate(kinds):
        log = tmp_path / f"prefix-{i}.jsonl"
        logs.append(log)
        env = loopback_env(
            PREFIX_ENGINE_LOG=str(log),
            PYTHONPATH=str(REPO),
            DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0",
            **discovery_env,
            **({"PREFIX_ENGINE_STOCK": "1"} if kind == "stock" else {}),
        )
        python = str(stock_python()) if kind == "stock" else sys.executable
        proc = spawn(
            [python, str(ENGINE), "--model-name", str(tiny_model), *extra],
            env=env,
            name=f"prefix-{kind}-{i}",
        )
        if procs is not None:
            procs.append(proc)
    return logs


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _affinity(base_url: str, model: str, logs: list[Path]) -> list[list[int]]:
    per_family = []
    with httpx.Client(timeout=30, trust_env=False) as client:
        for fam in FAMILIES:
            before = [_lines(p) for p in logs]
            for _ in range(ROUNDS):
                r = client.post(
                    base_url + "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": fam}],
                        "max_tokens": 2,
                    },
                )
                r.raise_for_status()
            wait_until(
                lambda b=before: sum(_lines(p) for p in logs) - sum(b) >= ROUNDS,
                what="engine logs",
            )
            per_family.append([_lines(p) - b for p, b in zip(logs, before, strict=True)])
    return per_family


def _score(counts: list[list[int]]) -> float:
    return sum(max(c) / sum(c) for c in counts) / len(counts)


def _wait_kv_ready(fe: Any, n: int) -> None:
    # The router adds a worker once it has the card and the event channels.
    wait_until(lambda: fe.log_text().count("Adding worker") >= n, timeout=60, what="router workers")


@pytest.mark.interop
def test_kv_router_affinity_file_backend(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv, extra_args=["--router-mode", "kv"])
    logs = _start_workers(
        spawn, tiny_model, tmp_path, {"DYN_FILE_KV": str(file_kv)}, [], ["lite", "lite"]
    )
    fe.wait_model(str(tiny_model), timeout=60)
    _wait_kv_ready(fe, 2)
    counts = _affinity(fe.base_url, str(tiny_model), logs)
    assert _score(counts) >= 0.95, counts


@pytest.mark.interop
@pytest.mark.services
def test_kv_router_affinity_etcd_nats(
    spawn: Any, tiny_model: Path, etcd: Any, nats: Any, tmp_path: Path, stock_frontend: Any
) -> None:
    env = {"ETCD_ENDPOINTS": etcd.endpoint, "NATS_SERVER": nats.url, "DYN_EVENT_PLANE": "nats"}
    fe = stock_frontend(
        discovery="etcd",
        etcd_endpoint=etcd.endpoint,
        extra_args=["--router-mode", "kv", "--event-plane", "nats"],
        env={"NATS_SERVER": nats.url, "DYN_EVENT_PLANE": "nats"},
    )
    logs = _start_workers(
        spawn,
        tiny_model,
        tmp_path,
        env,
        ["--discovery-backend", "etcd", "--event-plane", "nats"],
        ["lite", "lite"],
    )
    fe.wait_model(str(tiny_model), timeout=60)
    _wait_kv_ready(fe, 2)
    counts = _affinity(fe.base_url, str(tiny_model), logs)
    assert _score(counts) >= 0.95, counts


def _records(file_kv: Path) -> dict[str, Any]:
    """The file backend's records; one caught mid-write is read again."""
    out = {}
    for p in (file_kv / "v1").rglob("*"):
        if not p.is_file():
            continue
        value = wait_until(lambda p=p: _parse(p), timeout=5, what=f"a complete {p.name}")
        if value != "gone":
            out[f"{p.parent.name}/{dkeys.decode_file_name(p.name)}"] = value
    return out


def _parse(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return "gone"
    except ValueError:
        return None


@pytest.mark.interop
def test_records_written_and_removed(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    procs: list[Any] = []
    _start_workers(spawn, tiny_model, tmp_path, {"DYN_FILE_KV": str(file_kv)}, [], ["lite"], procs)
    wait_until(
        lambda: any(k.startswith("instances/dynamo/prefix/generate/") for k in _records(file_kv)),
        timeout=30,
        what="registration",
    )
    recs = _records(file_kv)
    topics = sorted(v["topic"] for k, v in recs.items() if k.startswith("event_channels/"))
    assert topics == ["active_sequences_events", "kv-events", "kv_metrics"]
    (source,) = [v for k, v in recs.items() if k.startswith("event_sources/")]
    kv_channel = next(
        v for k, v in recs.items() if k.startswith("event_channels/") and v["topic"] == "kv-events"
    )
    assert source["publisher_id"] == kv_channel["instance_id"]
    assert kv_channel["transport"]["kind"] == "Zmq"
    assert kv_channel["transport"]["config"]["endpoint"].startswith("tcp://127.0.0.1:")
    query = source["metadata"]["recovery_target"]
    assert query["endpoint"] == f"worker_kv_query_source_{source['publisher_id']:x}"
    assert f"instances/dynamo/prefix/{query['endpoint']}/{query['instance_id']:x}" in recs
    (mdc,) = [v for k, v in recs.items() if k.startswith("mdc/")]
    assert mdc["card_json"]["runtime_config"]["enable_local_indexer"] is True
    procs[0].send_signal(signal.SIGTERM)
    assert procs[0].wait(20) == 0
    assert _records(file_kv) == {}


@pytest.mark.interop
def test_disable_kv_routing_writes_no_kv_records(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    _start_workers(
        spawn,
        tiny_model,
        tmp_path,
        {"DYN_FILE_KV": str(file_kv)},
        ["--disable-kv-routing"],
        ["lite"],
    )
    wait_until(
        lambda: any(k.startswith("instances/") for k in _records(file_kv)),
        timeout=30,
        what="registration",
    )
    recs = _records(file_kv)
    assert sorted(k.split("/")[0] for k in recs) == ["instances", "mdc"]
    (mdc,) = [v for k, v in recs.items() if k.startswith("mdc/")]
    assert mdc["card_json"]["runtime_config"]["enable_local_indexer"] is False


@pytest.mark.interop
def test_kv_router_affinity_mixed_stock_and_lite(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv, extra_args=["--router-mode", "kv"])
    logs = _start_workers(
        spawn, tiny_model, tmp_path, {"DYN_FILE_KV": str(file_kv)}, [], ["stock", "lite"]
    )
    fe.wait_model(str(tiny_model), timeout=60)
    _wait_kv_ready(fe, 2)
    counts = _affinity(fe.base_url, str(tiny_model), logs)
    assert _score(counts) >= 0.95, counts


@pytest.mark.interop
@pytest.mark.parametrize("plane", ["tcp", "nats"])
def test_restarted_frontend_recovers_cached_prefixes(
    plane: str,
    spawn: Any,
    tiny_model: Path,
    file_kv: Path,
    tmp_path: Path,
    stock_frontend: Any,
    request: pytest.FixtureRequest,
) -> None:
    """Recovery through the local indexers, over either request plane."""
    env: dict[str, str] = {}
    if plane == "nats":
        env = {"NATS_SERVER": request.getfixturevalue("nats").url}
    fe_args = ["--router-mode", "kv", "--request-plane", plane]
    fe = stock_frontend(discovery="file", file_kv=file_kv, extra_args=fe_args, env=env)
    procs: list[Any] = []
    logs = _start_workers(
        spawn,
        tiny_model,
        tmp_path,
        {"DYN_FILE_KV": str(file_kv), **env},
        ["--request-plane", plane],
        ["lite", "lite"],
        procs,
    )
    fe.wait_model(str(tiny_model), timeout=60)
    _wait_kv_ready(fe, 2)
    first = _affinity(fe.base_url, str(tiny_model), logs)
    owners = [c.index(max(c)) for c in first]
    fe.stop()
    dumps = [p.log_text().count("KV query answered: TreeDump") for p in procs]
    # A new frontend knows nothing but what the workers' local indexers tell it.
    fe2 = stock_frontend(discovery="file", file_kv=file_kv, extra_args=fe_args, env=env)
    fe2.wait_model(str(tiny_model), timeout=60)
    _wait_kv_ready(fe2, 2)
    # Each worker's local indexer was asked for its blocks again.
    wait_until(
        lambda: (
            [p.log_text().count("KV query answered: TreeDump") for p in procs]
            == [d + 1 for d in dumps]
        ),
        timeout=30,
        what="recovery queries",
    )
    again = _affinity(fe2.base_url, str(tiny_model), logs)
    assert [c[o] for c, o in zip(again, owners, strict=True)] == [ROUNDS] * len(FAMILIES), (
        first,
        again,
    )


@pytest.mark.interop
def test_sample_engine_publishes_what_the_stock_sample_publishes(
    spawn: Any, tiny_model: Path, file_kv: Path
) -> None:
    """The sample engine's synthetic blocks on the wire, against the captured stock ones."""
    from dynamo_lite.client import Client
    from dynamo_lite.config import RuntimeSettings
    from tests.support.lite import SAMPLE_ENGINE, worker_argv, worker_env

    spawn(
        worker_argv(tiny_model, script=SAMPLE_ENGINE), env=worker_env(file_kv=file_kv), name="lite"
    )
    wait_until(
        lambda: any(k.startswith("event_sources/") for k in _records(file_kv)),
        timeout=30,
        what="KV records",
    )
    recs = _records(file_kv)
    channel = next(
        v for k, v in recs.items() if k.startswith("event_channels/") and v["topic"] == "kv-events"
    )
    port = int(channel["transport"]["config"]["endpoint"].rsplit(":", 1)[1])
    stock_first = next(
        kve.decode_envelope(bytes.fromhex(json.loads(line)["hex"])).value()[0]
        for line in (Path(__file__).parents[1] / "vectors/kv/nats_capture.jsonl")
        .read_text()
        .splitlines()
        if json.loads(line)["subject"].endswith(".kv-events")
    )
    stock_blocks = stock_first["event"]["data"]["stored"]["blocks"]

    async def main() -> dict[str, Any]:
        reader, conn, writer = await _subscribe(port, b"kv-events")
        settings = RuntimeSettings.from_env({"DYN_FILE_KV": str(file_kv)})
        async with Client(
            "dynamo", "sample", "generate", discovery_backend="file", settings=settings
        ) as client:
            for _ in range(20):
                stream = await client.generate(
                    {"token_ids": list(range(16 * len(stock_blocks))),
                     "stop_conditions": {"max_tokens": 1}}
                )  # fmt: skip
                _ = [item async for item in stream]
                try:
                    msgs = await asyncio.wait_for(_next_messages(reader, conn, 1), 2)
                except TimeoutError:
                    continue  # the subscription raced the first request
                writer.close()
                env = kve.decode_zmq_message(msgs[0].parts)
                value: dict[str, Any] = env.value()[0]
                return value
        raise AssertionError("no KV event arrived")

    rev = asyncio.run(main())
    assert set(rev) == set(stock_first)
    assert rev["storage_tier"] == "device" and rev["residency_domain"] == "worker"
    blocks = rev["event"]["data"]["stored"]["blocks"]
    assert [b["tokens_hash"] for b in blocks] == [b["tokens_hash"] for b in stock_blocks]
    hashes = [b["block_hash"] for b in blocks]
    assert hashes == list(range(hashes[0], hashes[0] + len(stock_blocks)))


# --- ZmqSource: relaying an engine's own (vLLM-format) events --------------------------


def test_relay_converts_tagged_arrays_and_maps() -> None:
    from dynamo_lite.kv.relay import apply_batch

    async def main() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        pub = KvEventPublisher(
            worker_id=1, kv_block_size=4, dp_rank=0, emit=out.extend,
            loop=asyncio.get_running_loop(),
        )  # fmt: skip
        batch = [
            1.5,
            [
                ["BlockStored", [10, -11], None, list(range(7)), 4, None, "GPU"],
                {"type": "BlockStored", "block_hashes": [12], "parent_block_hash": -11,
                 "token_ids": [7, 8, 9, 10], "block_size": 4},
                ["BlockRemoved", [12], "GPU"],
                ["AllBlocksCleared"],
            ],
            0,
        ]  # fmt: skip
        assert apply_batch(pub, batch, 4) == 4
        with pytest.raises(ValueError):
            apply_batch(pub, [1.0, [["Nonsense"]], 0], 4)
        with pytest.raises(ValueError):
            apply_batch(pub, [1.0, []], 4)  # no dp_rank: refused, as stock
        pub.flush()
        return out

    revs = asyncio.run(main())
    datas = [r["event"]["data"] for r in revs]
    first = datas[0]["stored"]
    # 7 tokens make one full block of 4: the short tail is dropped, as stock.
    assert [b["block_hash"] for b in first["blocks"]] == [10]
    assert first["blocks"][0]["tokens_hash"] == block_tokens_hash([0, 1, 2, 3])
    assert datas[1]["stored"]["parent_hash"] == 2**64 - 11
    assert datas[2] == {"removed": {"block_hashes": [12]}}
    assert datas[3] == kve.CLEARED_DATA
    assert [r["event"]["event_id"] for r in revs] == [1, 2, 3, 4]


@pytest.mark.interop
def test_kv_router_affinity_with_a_relayed_zmq_source(
    spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv, extra_args=["--router-mode", "kv"])
    logs = _start_workers(
        spawn, tiny_model, tmp_path, {"DYN_FILE_KV": str(file_kv)}, ["--zmq-source"],
        ["lite", "lite"],
    )  # fmt: skip
    fe.wait_model(str(tiny_model), timeout=60)
    _wait_kv_ready(fe, 2)
    counts = _affinity(fe.base_url, str(tiny_model), logs)
    assert _score(counts) >= 0.95, counts


@pytest.mark.parametrize("disabled", [False, True])
def test_disable_kv_routing_skips_the_kv_hooks(
    disabled: bool, spawn: Any, tiny_model: Path, file_kv: Path, tmp_path: Path
) -> None:
    """As stock: no ``kv_event_sources()`` and no snapshot publisher when disabled."""
    from tests.support.lite import read_events, worker_argv, worker_env

    events = tmp_path / "events.jsonl"
    proc = spawn(
        worker_argv(
            tiny_model,
            script=REPO / "tests" / "engines" / "lifecycle_engine.py",
            extra=["--disable-kv-routing"] if disabled else [],
        ),
        env=worker_env(file_kv=file_kv, events=events, PROBE_DP_RANKS="1"),
        name="lifecycle",
    )
    wait_until(
        lambda: any(e["event"] == "health_check_payload" for e in read_events(events)),
        timeout=30,
        what="registration",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    names = {e["event"] for e in read_events(events)}
    kv_hooks = {"kv_event_sources", "push_source_on_ready", "attach_snapshot_publisher"}
    assert (names & kv_hooks) == (set() if disabled else kv_hooks)


@pytest.mark.anyio
async def test_a_kv_routing_worker_leaves_nothing_behind(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KV sockets, relay and sender tasks, records: all gone after the worker stops."""
    import os

    import dynamo_lite
    from dynamo_lite import PushSource, RuntimeSettings, WorkerConfig, ZmqSource
    from dynamo_lite.discovery import FileStore
    from tests.support.inproc import ScriptedEngine

    monkeypatch.setenv("DYN_EVENT_PLANE_HOST", "127.0.0.1")
    engine_pub = ZmqPubServer("127.0.0.1")
    await engine_pub.start()
    got: list[Any] = []

    class KvEngine(ScriptedEngine):  # type: ignore[misc]
        async def kv_event_sources(self) -> list[Any]:
            return [
                PushSource(on_ready=got.append, dp_rank=0),
                ZmqSource(endpoint=f"tcp://127.0.0.1:{engine_pub.port}", dp_rank=1),
            ]

        def component_metrics_dp_ranks(self) -> list[int]:
            return [0]

    def fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    async def one(n: int) -> None:
        root = tmp_path / f"kv{n}"
        engine = KvEngine({})
        engine.model = str(tiny_model)
        config = WorkerConfig(
            namespace="dynamo", component="kv", model_name=str(tiny_model), discovery_backend="file"
        )
        async with dynamo_lite.serve(
            engine,
            config,
            settings=RuntimeSettings(tcp_host="127.0.0.1", grace_period=0.0),
            store=FileStore(root),
            handle_signals=False,
        ) as worker:
            assert worker.kv.enabled and len(worker.kv.sources) == 2
            got[-1].publish_stored(list(range(16)), [16], [1])
            while not any(
                v["topic"] == "kv-events" for v in _records(root).values() if "topic" in v
            ):
                await asyncio.sleep(0.01)
        assert [p for p in root.rglob("*") if p.is_file()] == []

    await one(0)
    await asyncio.sleep(0.05)
    tasks_before, fds_before = asyncio.all_tasks(), fds()
    await one(1)
    await asyncio.sleep(0.05)
    left = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
    assert not left, left
    assert fds() - fds_before == set()
    await engine_pub.close()


@pytest.mark.anyio
async def test_first_token_marks_prefill_completed_on_active_sequences(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the stock worker: one ``MarkPrefillCompleted`` per request, after its first token."""
    import msgpack

    import dynamo_lite
    from dynamo_lite import PushSource, RuntimeSettings, WorkerConfig
    from dynamo_lite.client import Client
    from dynamo_lite.discovery import FileStore
    from tests.support.inproc import ScriptedEngine

    monkeypatch.setenv("DYN_EVENT_PLANE_HOST", "127.0.0.1")

    class KvEngine(ScriptedEngine):  # type: ignore[misc]
        async def kv_event_sources(self) -> list[Any]:
            return [PushSource(on_ready=lambda publisher: None, dp_rank=0)]

    engine = KvEngine({})
    engine.model = str(tiny_model)
    root = tmp_path / "kv"
    config = WorkerConfig(
        namespace="dynamo",
        component="kvactive",
        model_name=str(tiny_model),
        discovery_backend="file",
    )
    async with dynamo_lite.serve(
        engine,
        config,
        settings=RuntimeSettings(tcp_host="127.0.0.1", grace_period=0.0),
        store=FileStore(root),
        handle_signals=False,
    ) as worker:
        channel = worker.kv.active_channel
        assert channel is not None
        port = int(channel.transport.descriptor()["config"]["endpoint"].rpartition(":")[2])
        reader, conn, writer = await _subscribe(port, kve.ACTIVE_SEQUENCES.encode())
        # A PUB socket sends only to subscriptions it has seen: wait until it has.
        pub = channel.transport.server
        topic = kve.ACTIVE_SEQUENCES.encode()
        while not any(sub.wants(topic) for sub in pub.subscribers):
            await asyncio.sleep(0.01)
        async with Client("dynamo", "kvactive", "generate", store=FileStore(root)) as client:
            await client.wait_for_instances(10)
            stream = await client.generate({"token_ids": [1, 2, 3]})
            items = await stream.collect()
        assert items[-1]["finish_reason"] == "length"
        [message] = await _next_messages(reader, conn, 1)
        env = kve.decode_zmq_message(message.parts)
        [event] = msgpack.unpackb(env.payload)["events"]
        assert event == kve.active_sequence_event(stream.request_id, worker.instance_id)
        writer.close()
