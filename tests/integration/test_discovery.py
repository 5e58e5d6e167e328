"""Discovery stores: key layout, the file backend and etcd over its JSON gateway."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from dynamo_lite.discovery import EndpointId, EtcdOptions, EtcdStore, FileStore, MemoryStore, keys
from dynamo_lite.discovery import file as file_mod
from tests.support.services import EtcdServer

VEC = Path(__file__).parents[1] / "vectors" / "discovery"


def test_file_names_match_the_stock_tree() -> None:
    names = {p.name for p in (VEC / "file_backend_tree" / "v1" / "instances").iterdir()}
    for name in names:
        assert keys.encode_file_name(keys.decode_file_name(name)) == name
    assert keys.encode_file_name("dynamo/sample/generate/310c8506e07ed7fe") in names
    assert keys.encode_file_name("a.b-c_d") == "a%2Eb%2Dc%5Fd"


def test_instance_record_matches_stock_shape() -> None:
    dump = json.loads((VEC / "etcd_sample_worker_sharedstorage.decoded.json").read_text())
    stock = next(
        kv for kv in dump["kvs"] if kv["key"].startswith("v1/instances/dynamo/sample/generate/")
    )
    ep = EndpointId("dynamo", "sample", "generate")
    iid = stock["value"]["instance_id"]
    host_port = stock["value"]["transport"]["tcp"].split("/")[0]
    host, port = host_port.split(":")
    ours = keys.instance_record(ep, iid, keys.tcp_transport(host, int(port), ep, iid))
    assert ours == stock["value"]
    assert ep.instance_key(iid) == stock["key"]
    assert list(ours) == list(stock["value"])


def test_endpoint_names_are_validated() -> None:
    with pytest.raises(ValueError):
        EndpointId("dyn/amo", "c", "e")


@pytest.mark.anyio
async def test_file_store_writes_atomically_and_cleans_up(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    iid = await store.open()
    ep = EndpointId("dynamo", "sample", "generate")
    await store.put(ep.mdc_key(iid), b'{"card":1}')
    await store.put(ep.instance_key(iid), b'{"inst":1}')
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    enc = keys.encode_file_name(f"dynamo/sample/generate/{iid:x}")
    assert files == [f"v1/instances/{enc}", f"v1/mdc/{enc}"]
    assert not list(tmp_path.rglob(".tmp_*"))
    listed = await store.list(ep.instance_prefix())
    assert listed == {ep.instance_key(iid): b'{"inst":1}'}
    await store.close()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.anyio
async def test_file_store_refreshes_mtime_and_restores_reaped_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_mod, "TOUCH_INTERVAL", 0.05)
    import anyio

    store = FileStore(tmp_path)
    recovered: list[str] = []

    async def on_recovered(reason: str) -> None:
        recovered.append(reason)

    store.on_recovered = on_recovered
    key = "v1/instances/a/b/c/1"
    async with store.alive():
        await store.put(key, b"{}")
        path = store.path_for(key)
        old = time.time() - 100
        os.utime(path, (old, old))
        with anyio.fail_after(5):
            while time.time() - path.stat().st_mtime > 5:
                await anyio.sleep(0.02)
        path.unlink()
        with anyio.fail_after(5):
            while not recovered:
                await anyio.sleep(0.02)
        assert path.read_bytes() == b"{}"
    assert not path.exists()  # leaving alive() closed the store


@pytest.mark.anyio
async def test_file_store_ignores_stale_and_temp_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    (tmp_path / "v1" / "instances").mkdir(parents=True)
    stale = tmp_path / "v1" / "instances" / keys.encode_file_name("a/b/c/2")
    stale.write_text("{}")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    (tmp_path / "v1" / "instances" / ".tmp_x").write_text("{}")
    assert await store.list("v1/instances/") == {}


@pytest.mark.anyio
async def test_memory_store() -> None:
    a, b = MemoryStore("t1"), MemoryStore("t1")
    await a.put("v1/instances/x/y/z/1", b"1")
    assert await b.list("v1/instances/") == {"v1/instances/x/y/z/1": b"1"}
    await a.close()
    assert await b.list("v1/") == {}


# --- etcd ---------------------------------------------------------------------------


def _lease_ttl(etcd: EtcdServer, lease: int) -> int:
    r = httpx.post(etcd.endpoint + "/v3/lease/timetolive", json={"ID": str(lease), "keys": True})
    return int(r.json().get("TTL", -1))


@pytest.mark.anyio
async def test_etcd_store_lease_keys_and_revoke(etcd: EtcdServer) -> None:
    store = EtcdStore(EtcdOptions((etcd.endpoint,), ttl=10))
    lease = await store.open()
    assert lease > 0
    ep = EndpointId("dynamo", "sample", "generate")
    await store.put(ep.mdc_key(lease), b"card")
    await store.put(ep.instance_key(lease), b"inst")
    assert (await store.list("v1/")).keys() == {ep.mdc_key(lease), ep.instance_key(lease)}
    assert 0 < _lease_ttl(etcd, lease) <= 10
    await store.close()
    other = EtcdStore(EtcdOptions((etcd.endpoint,)))
    assert await other.list("v1/") == {}
    assert _lease_ttl(etcd, lease) == -1
    await other.close()


@pytest.mark.anyio
async def test_etcd_keepalive_and_recovery_after_empty_restart(etcd: EtcdServer) -> None:
    import anyio

    store = EtcdStore(EtcdOptions((etcd.endpoint,), ttl=2))
    recovered: list[str] = []

    async def on_recovered(reason: str) -> None:
        recovered.append(reason)

    async with store.alive() as lease:
        await store.put("v1/instances/a/b/c/" + f"{lease:x}", b"x")
        await anyio.sleep(2.5)  # longer than the TTL: only keepalives keep it
        assert store.renewals >= 1
        assert await store.list("v1/instances/")
        store.on_recovered = on_recovered
        etcd.restart(keep_data=False)
        with anyio.fail_after(15):
            while not recovered:
                await anyio.sleep(0.1)
        # Same lease id, same records.
        assert store.instance_id == lease
        assert await store.list("v1/instances/") == {"v1/instances/a/b/c/" + f"{lease:x}": b"x"}


@pytest.mark.anyio
async def test_etcd_unreachable_at_startup_is_bounded() -> None:
    import anyio

    from dynamo_lite.discovery import DiscoveryUnavailable
    from tests.support.ports import free_port

    store = EtcdStore(EtcdOptions((f"http://127.0.0.1:{free_port()}",), startup_timeout=1.5))
    # The bound only catches a store that keeps retrying past its startup timeout.
    with anyio.fail_after(30), pytest.raises(DiscoveryUnavailable):
        await store.open()
    await store.close()


@pytest.mark.anyio
async def test_etcd_endpoint_failover(etcd: EtcdServer) -> None:
    from tests.support.ports import free_port

    store = EtcdStore(EtcdOptions((f"http://127.0.0.1:{free_port()}", etcd.endpoint), ttl=5))
    assert await store.open() > 0
    await store.close()
