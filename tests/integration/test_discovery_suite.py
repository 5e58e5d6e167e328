"""Discovery stores against real services.

The etcd section runs every test over both etcd clients (the JSON gateway and
gRPC); the gRPC parameter skips when the ``grpc`` extra is missing, and fails
instead under ``CI`` or ``DYN_LITE_REQUIRE_INTEROP``. Tests that never stop
etcd share the session server (each under its own key prefix); the others get
their own. TTLs are 2-3 s so that expiry and keepalive are observable quickly.

The file section checks what the stock frontend relies on: a file appears
whole or not at all, stale files are reaped only by readers that opt in and
only in buckets they read, and a store leaves nothing behind on exit.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from dynamo_lite.config import RuntimeSettings
from dynamo_lite.discovery import (
    DiscoveryError,
    DiscoveryUnavailable,
    EtcdClientTls,
    EtcdGrpcStore,
    EtcdLeaseStore,
    EtcdOptions,
    EtcdStore,
    FileStore,
    KvStore,
    grpc_available,
    keys,
    open_store,
)
from tests.support.ports import LOOPBACK, free_port
from tests.support.services import EtcdServer, EtcdTls, make_test_pki

REPO = Path(__file__).resolve().parents[2]
IMPLS = ("gateway", "grpc")


# --- helpers -----------------------------------------------------------------------


def _require_grpc() -> None:
    if grpc_available():
        return
    message = "the grpc extra (etcd3aio) is not installed: pip install -e '.[grpc]'"
    if os.environ.get("CI") or os.environ.get("DYN_LITE_REQUIRE_INTEROP"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "grpc":
        _require_grpc()
    return name


def store_type(impl: str) -> type[EtcdLeaseStore]:
    return EtcdGrpcStore if impl == "grpc" else EtcdStore


def make_store(impl: str, endpoints: list[str], **kwargs: Any) -> EtcdLeaseStore:
    kwargs.setdefault("startup_timeout", 5.0)
    return store_type(impl)(EtcdOptions(tuple(endpoints), **kwargs))


@asynccontextmanager
async def closing_store(store: EtcdLeaseStore) -> AsyncIterator[EtcdLeaseStore]:
    """Run the store's keepalive once the test has opened it; close it on exit.

    This is the owner's half of the store contract, as the worker does it.
    """
    async with anyio.create_task_group() as tg:
        tg.start_soon(_keep_alive_once_open, store)
        try:
            yield store
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), anyio.fail_after(10):
                await store.close()


async def _keep_alive_once_open(store: KvStore) -> None:
    while True:
        try:
            store.instance_id  # noqa: B018  (raises until open() succeeded)
            break
        except DiscoveryError:
            await anyio.sleep(0.01)
    await store.keep_alive()


def unique_prefix() -> str:
    return f"v1/instances/t{uuid.uuid4().hex[:12]}/c/e/"


def etcd_keys(server: EtcdServer, prefix: str) -> dict[str, bytes]:
    """What etcd holds under ``prefix``, read with the server's own client."""
    raw = prefix.encode()
    end = raw[:-1] + bytes([raw[-1] + 1])
    reply = server.call(
        "/v3/kv/range",
        {"key": base64.b64encode(raw).decode(), "range_end": base64.b64encode(end).decode()},
    )
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
        for kv in reply.get("kvs", []) or []
    }


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; return how long it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout:g}s")
        await anyio.sleep(0.05)
    return time.monotonic() - start


def recorder() -> tuple[list[str], Callable[[str], Awaitable[None]]]:
    seen: list[str] = []

    async def callback(reason: str) -> None:
        seen.append(reason)

    return seen, callback


def dead_endpoint() -> str:
    return f"http://{LOOPBACK}:{free_port()}"


# --- etcd: basics (shared server) ---------------------------------------------------


@pytest.mark.anyio
async def test_lease_is_the_instance_id_and_carries_every_record(
    impl: str, etcd_session: EtcdServer
) -> None:
    prefix = unique_prefix()
    store = make_store(impl, [etcd_session.endpoint], ttl=5)
    with pytest.raises(DiscoveryError):
        _ = store.instance_id
    async with closing_store(store):
        lease = await store.open()
        assert lease > 0 and store.instance_id == lease
        assert await store.open() == lease  # idempotent
        a, b = f"{prefix}{lease:x}", f"{prefix}{lease:x}-b"
        await store.put(a, b'{"a":1}')
        await store.put(b, b'{"b":2}')
        ttl, on_lease = etcd_session.lease_ttl(lease)
        assert 0 < ttl <= 5 and sorted(on_lease) == sorted([a, b])
        assert await store.list(prefix) == {a: b'{"a":1}', b: b'{"b":2}'}
        await store.put(a, b'{"a":3}')  # overwrite keeps it on the lease
        await store.delete(b)
        await store.delete(b)  # missing keys are fine
        assert await store.list(prefix) == {a: b'{"a":3}'}
        assert etcd_keys(etcd_session, prefix) == {a: b'{"a":3}'}
    # close() revoked the lease: every record went with it.
    assert etcd_keys(etcd_session, prefix) == {}
    assert etcd_session.lease_ttl(lease)[0] == -1
    with pytest.raises(DiscoveryError):
        await store.list(prefix)


@pytest.mark.anyio
async def test_list_works_without_open_and_sees_other_owners(
    impl: str, etcd_session: EtcdServer
) -> None:
    prefix = unique_prefix()
    async with closing_store(make_store(impl, [etcd_session.endpoint])) as owner:
        lease = await owner.open()
        await owner.put(f"{prefix}{lease:x}", b"x")
        async with closing_store(make_store(impl, [etcd_session.endpoint])) as reader:
            assert await reader.list(prefix) == {f"{prefix}{lease:x}": b"x"}


@pytest.mark.anyio
async def test_keepalive_every_half_ttl_keeps_records_past_the_ttl(
    impl: str, etcd_session: EtcdServer
) -> None:
    prefix = unique_prefix()
    async with closing_store(make_store(impl, [etcd_session.endpoint], ttl=2)) as store:
        lease = await store.open()
        await store.put(f"{prefix}{lease:x}", b"x")
        began = time.monotonic()
        await anyio.sleep(3.3)  # well past the TTL: only keepalives keep it
        # Every TTL/2 = 1 s: at least one renewal, and never faster than that cadence
        # (a loaded machine may only make renewals rarer).
        most = (time.monotonic() - began) / 1.0 + 1
        assert 1 <= store.renewals <= most, store.renewals
        assert store.losses == 0 and store.recoveries == 0
        assert etcd_keys(etcd_session, prefix) == {f"{prefix}{lease:x}": b"x"}
        assert etcd_session.lease_ttl(lease)[0] > 0


@pytest.mark.anyio
async def test_lease_revoked_behind_our_back_is_regranted_with_the_same_id(
    impl: str, etcd_session: EtcdServer
) -> None:
    prefix = unique_prefix()
    async with closing_store(make_store(impl, [etcd_session.endpoint], ttl=2)) as store:
        seen, store.on_recovered = recorder()
        lease = await store.open()
        key = f"{prefix}{lease:x}"
        await store.put(key, b"x")
        etcd_session.call("/v3/lease/revoke", {"ID": str(lease)})
        assert etcd_keys(etcd_session, prefix) == {}
        await eventually(lambda: etcd_keys(etcd_session, prefix) == {key: b"x"}, 3, "restored")
        assert store.instance_id == lease
        assert etcd_session.lease_ttl(lease)[1] == [key]
        await eventually(lambda: bool(seen), 1, "on_recovered")
        assert store.recoveries == 1


@pytest.mark.anyio
async def test_put_after_a_lost_lease_restores_it_first(
    impl: str, etcd_session: EtcdServer
) -> None:
    prefix = unique_prefix()
    async with closing_store(make_store(impl, [etcd_session.endpoint], ttl=30)) as store:
        lease = await store.open()
        await store.put(f"{prefix}a", b"a")
        etcd_session.call("/v3/lease/revoke", {"ID": str(lease)})
        await store.put(f"{prefix}b", b"b")  # the keepalive has not noticed yet
        assert etcd_keys(etcd_session, prefix) == {f"{prefix}a": b"a", f"{prefix}b": b"b"}
        assert sorted(etcd_session.lease_ttl(lease)[1]) == [f"{prefix}a", f"{prefix}b"]


@pytest.mark.anyio
async def test_without_recovery_a_lost_lease_is_reported(
    impl: str, etcd_session: EtcdServer
) -> None:
    store = make_store(impl, [etcd_session.endpoint], ttl=2, recover=False)
    async with closing_store(store):
        lost, store.on_lost = recorder()
        lease = await store.open()
        etcd_session.call("/v3/lease/revoke", {"ID": str(lease)})
        await eventually(lambda: bool(lost), 3, "on_lost")
        assert store.recoveries == 0 and etcd_session.lease_ttl(lease)[0] == -1
        with pytest.raises(DiscoveryError):
            await store.put(unique_prefix() + "x", b"x")


# --- etcd: restarts and outages (own server) --------------------------------------


@pytest.mark.anyio
async def test_restart_with_data_keeps_the_lease_and_records(impl: str, etcd: EtcdServer) -> None:
    prefix = unique_prefix()
    async with closing_store(make_store(impl, [etcd.endpoint], ttl=3)) as store:
        lease = await store.open()
        await store.put(f"{prefix}{lease:x}", b"x")
        await anyio.to_thread.run_sync(lambda: etcd.restart(keep_data=True))
        before = store.renewals
        await eventually(lambda: store.renewals > before, 4, "keepalive after restart")
        assert store.instance_id == lease and store.recoveries == 0 and store.losses == 0
        assert await store.list(prefix) == {f"{prefix}{lease:x}": b"x"}
        assert etcd.lease_ttl(lease)[0] > 0


@pytest.mark.anyio
@pytest.mark.parametrize("down_for", [0.0, 2.6], ids=["brief", "longer-than-ttl"])
async def test_empty_restart_regrants_the_same_id_and_restores_records(
    impl: str, etcd: EtcdServer, down_for: float
) -> None:
    prefix = unique_prefix()
    async with closing_store(make_store(impl, [etcd.endpoint], ttl=2)) as store:
        seen, store.on_recovered = recorder()
        lease = await store.open()
        records = {f"{prefix}{lease:x}": b"inst", f"{prefix}{lease:x}-mdc": b"card"}
        for key, value in records.items():
            await store.put(key, value)
        await anyio.to_thread.run_sync(lambda: etcd.restart(keep_data=False, down_for=down_for))
        took = await eventually(lambda: etcd_keys(etcd, prefix) == records, 5, "restored")
        assert store.instance_id == lease
        assert sorted(etcd.lease_ttl(lease)[1]) == sorted(records)
        await eventually(lambda: bool(seen), 1, "on_recovered")
        assert store.recoveries == 1 and store.losses == 1
        print(f"records back {took:.2f}s after etcd returned")


@pytest.mark.anyio
async def test_etcd_down_longer_than_the_ttl_then_back(impl: str, etcd: EtcdServer) -> None:
    prefix = unique_prefix()
    async with closing_store(make_store(impl, [etcd.endpoint], ttl=2)) as store:
        lease = await store.open()
        key = f"{prefix}{lease:x}"
        await store.put(key, b"x")
        etcd.kill()
        # Past the TTL with no keepalive, "Unable to maintain lease" is reported once.
        await eventually(lambda: store.losses >= 1, 30, "lease loss reported")
        assert store.losses == 1
        with pytest.raises(DiscoveryUnavailable):
            await store.list(prefix)
        await anyio.to_thread.run_sync(etcd.start)
        await eventually(lambda: etcd_keys(etcd, prefix) == {key: b"x"}, 5, "records back")
        renewed = store.renewals
        await eventually(lambda: store.renewals > renewed, 3, "keepalive resumed")
        assert store.instance_id == lease and etcd.lease_ttl(lease)[0] > 0


# --- etcd: endpoints, startup -----------------------------------------------------


@pytest.mark.anyio
async def test_several_endpoints_with_the_first_dead(impl: str, etcd_session: EtcdServer) -> None:
    prefix = unique_prefix()
    endpoints = [dead_endpoint(), etcd_session.endpoint.removeprefix("http://")]
    async with closing_store(make_store(impl, endpoints, ttl=2)) as store:
        lease = await store.open()
        await store.put(f"{prefix}{lease:x}", b"x")
        await eventually(lambda: store.renewals >= 1, 15, "a renewal through the live endpoint")
        assert await store.list(prefix) == {f"{prefix}{lease:x}": b"x"}
    assert etcd_keys(etcd_session, prefix) == {}


@pytest.mark.anyio
async def test_startup_failure_is_bounded(impl: str) -> None:
    store = make_store(impl, [dead_endpoint(), dead_endpoint()], startup_timeout=1.5)
    start = time.monotonic()
    with anyio.fail_after(30), pytest.raises(DiscoveryUnavailable, match=r"within 1\.5s"):
        await store.open()
    assert time.monotonic() - start >= 1.4  # kept retrying until its timeout
    await store.close()


@pytest.mark.anyio
async def test_an_endpoint_that_never_answers_times_out(impl: str) -> None:
    with closing(socket.socket()) as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(16)  # accepts the connection, never speaks
        endpoint = f"http://{LOOPBACK}:{silent.getsockname()[1]}"
        store = make_store(impl, [endpoint], request_timeout=0.5, startup_timeout=0)
        # Without the request timeout both calls would hang; the bound catches that.
        with anyio.fail_after(30):
            with pytest.raises(DiscoveryUnavailable):
                await store.list("v1/instances/")
            with pytest.raises(DiscoveryUnavailable):
                await store.open()
        await store.close()


@pytest.mark.anyio
async def test_gateway_garbage_reply_is_a_discovery_error() -> None:
    async def answer(stream: anyio.abc.ByteStream) -> None:
        with anyio.move_on_after(2):
            await stream.receive()
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host=LOOPBACK)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        store = EtcdStore(EtcdOptions((f"http://{LOOPBACK}:{port}",), startup_timeout=1))
        with pytest.raises(DiscoveryError) as info:
            await store.list("v1/instances/")
        assert not isinstance(info.value, DiscoveryUnavailable)
        assert "unexpected reply" in str(info.value)
        await store.close()
        tg.cancel_scope.cancel()
    await listener.aclose()


# --- etcd: auth and TLS ---------------------------------------------------------------


@pytest.fixture
def etcd_auth(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd-auth", auth=("root", "s3cret"))
    try:
        yield server.start()
    finally:
        server.close()


@pytest.mark.anyio
async def test_user_password_auth_and_token_renewal(impl: str, etcd_auth: EtcdServer) -> None:
    prefix = unique_prefix()
    wrong = make_store(
        impl, [etcd_auth.endpoint], username="root", password="nope", startup_timeout=120
    )
    # Not retried: a retry loop would run into the bound long before its 120 s timeout.
    with anyio.fail_after(30), pytest.raises(DiscoveryError, match="authentication failed") as info:
        await wrong.open()
    assert not isinstance(info.value, DiscoveryUnavailable)
    await wrong.close()

    anonymous = make_store(impl, [etcd_auth.endpoint])
    with pytest.raises(DiscoveryError):
        await anonymous.list(prefix)
    await anonymous.close()

    store = make_store(impl, [etcd_auth.endpoint], ttl=3, username="root", password="s3cret")
    async with closing_store(store):
        lease = await store.open()
        await store.put(f"{prefix}{lease:x}", b"x")
        assert await store.list(prefix) == {f"{prefix}{lease:x}": b"x"}
        # An expired token is answered "invalid auth token": log in again.
        store._token = "expired"
        store._t_set_token("expired")
        assert await store.list(prefix) == {f"{prefix}{lease:x}": b"x"}
        assert store._token not in (None, "expired")
        # etcd forgets every token when it restarts: the store logs in again.
        await anyio.to_thread.run_sync(lambda: etcd_auth.restart(keep_data=True))
        assert await store.list(prefix) == {f"{prefix}{lease:x}": b"x"}
        await store.put(f"{prefix}{lease:x}", b"y")
        before = store.renewals
        await eventually(lambda: store.renewals > before, 3, "keepalive after re-login")
        assert etcd_keys(etcd_auth, prefix) == {f"{prefix}{lease:x}": b"y"}
    assert etcd_keys(etcd_auth, prefix) == {}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> EtcdTls:
    try:
        return make_test_pki(tmp_path_factory.mktemp("pki"))
    except FileNotFoundError as exc:
        if os.environ.get("CI") or os.environ.get("DYN_LITE_REQUIRE_INTEROP"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def etcd_tls(tmp_path_factory: pytest.TempPathFactory, pki: EtcdTls) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd-tls"), tls=pki)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.mark.anyio
async def test_tls_with_ca_and_client_certificate(
    impl: str, etcd_tls: EtcdServer, pki: EtcdTls
) -> None:
    assert etcd_tls.endpoint.startswith("https://")
    prefix = unique_prefix()
    as_paths = EtcdClientTls.from_values(pki.ca, pki.client_cert, pki.client_key)
    as_text = EtcdClientTls.from_values(
        pki.ca.read_text(), pki.client_cert.read_text(), pki.client_key.read_text()
    )
    assert as_paths is not None and as_text is not None
    assert as_paths.cert is not None and as_paths.cert.path == pki.client_cert
    assert as_text.cert is not None and as_text.cert.path is None
    host_port = etcd_tls.endpoint.removeprefix("https://")
    # A bare host:port means https once TLS is configured.
    for tls, endpoint in ((as_paths, etcd_tls.endpoint), (as_text, host_port)):
        async with closing_store(make_store(impl, [endpoint], ttl=3, tls=tls)) as store:
            lease = await store.open()
            await store.put(f"{prefix}{lease:x}", b"tls")
            assert await store.list(prefix) == {f"{prefix}{lease:x}": b"tls"}
        assert etcd_keys(etcd_tls, prefix) == {}

    # The server insists on a client certificate.
    ca_only = EtcdClientTls.from_values(pki.ca)
    store = make_store(impl, [etcd_tls.endpoint], tls=ca_only, startup_timeout=1)
    with pytest.raises(DiscoveryUnavailable):
        await store.open()
    await store.close()

    # The whole configuration from the environment, PEM contents as the stock
    # runtime passes them.
    env = {
        "ETCD_ENDPOINTS": f"{dead_endpoint()},{etcd_tls.endpoint}",
        "ETCD_LEASE_TTL": "3",
        "ETCD_AUTH_CA": pki.ca.read_text(),
        "ETCD_AUTH_CLIENT_CERT": pki.client_cert.read_text(),
        "ETCD_AUTH_CLIENT_KEY": str(pki.client_key),
        "DYN_LITE_ETCD_CLIENT": impl,
    }
    built = open_store("etcd", RuntimeSettings.from_env(env), env)
    assert isinstance(built, store_type(impl))
    async with closing_store(built) as store:
        lease = await store.open()
        await store.put(f"{prefix}{lease:x}", b"env")
        assert etcd_keys(etcd_tls, prefix) == {f"{prefix}{lease:x}": b"env"}


# --- configuration -----------------------------------------------------------------------


def test_open_store_reads_the_etcd_environment(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    env = {
        "ETCD_ENDPOINTS": "http://a:2379, b:2379",
        "ETCD_LEASE_TTL": "7",
        "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS": "3",
        "ETCD_AUTH_USERNAME": "alice",
        "ETCD_AUTH_PASSWORD": "pw",
        "ETCD_AUTH_CA": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        "ETCD_AUTH_CLIENT_CERT": "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----",
        "ETCD_AUTH_CLIENT_KEY": str(key),
        "DYN_LITE_EXIT_ON_LEASE_LOSS": "1",
    }
    # Certificates are only parsed when a connection is made (gRPC) or an SSL
    # context is built (gateway), so check the parsed config directly.
    tls = EtcdClientTls.from_env(env)
    assert tls is not None and tls.ca is not None and tls.cert is not None
    assert tls.ca.path is None and tls.ca.data.startswith(b"-----BEGIN CERTIFICATE-----\nAAAA")
    assert tls.key is not None and tls.key.path == key
    assert "AAAA" not in repr(tls)

    plain = {k: v for k, v in env.items() if not k.startswith("ETCD_AUTH_C")}
    plain["ETCD_AUTH_CA"] = ""
    store = open_store("etcd", RuntimeSettings.from_env(plain), plain)
    assert isinstance(store, EtcdStore)
    assert store.endpoints == ["http://a:2379", "b:2379"]
    assert store.ttl == 7 and store.startup_timeout == 3 and store.recover is False
    assert store._credentials == ("alice", "pw")
    assert store.tls is None

    with pytest.raises(DiscoveryError, match="DYN_LITE_ETCD_CLIENT"):
        open_store("etcd", None, {"DYN_LITE_ETCD_CLIENT": "carrier-pigeon"})
    with pytest.raises(DiscoveryError, match="both"):
        EtcdClientTls.from_values(None, env["ETCD_AUTH_CLIENT_CERT"], None)
    with pytest.raises(DiscoveryError, match="cannot read"):
        EtcdClientTls.from_values(tmp_path / "missing.pem")
    with pytest.raises(DiscoveryError, match="unusable"):
        EtcdClientTls.from_env(env).ssl_context()  # type: ignore[union-attr]
    if grpc_available():
        grpc_env = {**plain, "DYN_LITE_ETCD_CLIENT": "GRPC"}
        store = open_store("etcd", RuntimeSettings.from_env(grpc_env), grpc_env)
        assert isinstance(store, EtcdGrpcStore)
        assert store._targets == [("a:2379", False), ("b:2379", False)]


def test_grpc_client_without_the_extra_is_a_clear_error() -> None:
    script = (
        "import sys\n"
        "sys.modules['etcd3aio'] = None\n"  # as if the extra were not installed
        "from dynamo_lite.discovery import DiscoveryError, grpc_available, open_store\n"
        "assert 'grpc' not in sys.modules\n"  # only imported when asked for
        "assert not grpc_available()\n"
        "try:\n"
        "    open_store('etcd', None, {'DYN_LITE_ETCD_CLIENT': 'grpc'})\n"
        "except DiscoveryError as exc:\n"
        "    print('ERR', exc)\n"
        "print('gateway', type(open_store('etcd', None, {})).__name__)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert res.returncode == 0, res.stderr
    assert "ERR DYN_LITE_ETCD_CLIENT=grpc needs the 'grpc' extra" in res.stdout
    assert "gateway EtcdStore" in res.stdout


# --- file backend ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_file_writes_are_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    iid = await store.open()
    ep = keys.EndpointId("dynamo", "big", "generate")
    bucket = tmp_path / "v1" / "mdc"
    bucket.mkdir(parents=True)
    stop = threading.Event()
    torn: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            for entry in os.scandir(bucket):
                if entry.name.startswith(".tmp_"):
                    continue
                try:
                    with open(entry.path, "rb") as fh:
                        data = fh.read()
                except FileNotFoundError:
                    continue
                reads[0] += 1
                try:
                    json.loads(data)
                except ValueError:
                    torn.append(f"{entry.name}: {len(data)} bytes")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for i in range(60):
            pad = "x" * (1_500_000 + 7919 * i)  # ~1.5 MB, a different size every time
            value = json.dumps({"i": i, "pad": pad}).encode()
            await store.put(ep.mdc_key(iid + i % 3), value)
    finally:
        stop.set()
        thread.join(10)
    assert reads[0] > 0 and not torn, torn[:5]
    assert not list(bucket.glob(".tmp_*"))
    listed = await store.list(f"{keys.MDC}/")
    assert len(listed) == 3 and all(json.loads(v)["i"] >= 57 for v in listed.values())
    await store.close()
    assert not list(bucket.iterdir())


def _stale_file(root: Path, bucket: str, rest: str, age: float = 11.0) -> Path:
    path = root / bucket / keys.encode_file_name(rest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


@pytest.mark.anyio
async def test_file_reaping_is_opt_in_and_only_in_buckets_read(tmp_path: Path) -> None:
    dead_inst = _stale_file(tmp_path, keys.INSTANCES, "ns/c/e/dead")
    dead_source = _stale_file(tmp_path, "v1/event_sources", "ns/c/e/dead")
    fresh = _stale_file(tmp_path, keys.INSTANCES, "ns/c/e/live", age=1)

    # A plain reader ignores stale files but leaves them alone.
    plain = FileStore(tmp_path)
    assert await plain.list(f"{keys.INSTANCES}/") == {f"{keys.INSTANCES}/ns/c/e/live": b"{}"}
    assert dead_inst.exists()

    reaper = FileStore(tmp_path, reap=True)
    own_key = f"{keys.INSTANCES}/ns/c/e/{reaper.instance_id:x}"
    await reaper.put(own_key, b"{}")
    assert set(await reaper.list(f"{keys.INSTANCES}/")) == {
        f"{keys.INSTANCES}/ns/c/e/live",
        own_key,
    }
    assert not dead_inst.exists() and fresh.exists() and reaper.reaped == 1
    assert dead_source.exists()  # never listed: not ours to judge

    # The periodic pass covers the listed buckets only, and never our own files.
    again = _stale_file(tmp_path, keys.INSTANCES, "ns/c/e/dead2")
    own = reaper.path_for(own_key)
    os.utime(own, (time.time() - 60, time.time() - 60))
    assert reaper.reap_once() == 1
    assert not again.exists() and own.exists() and dead_source.exists()
    await reaper.close()
    assert not own.exists()

    # The same pass runs on the touch loop (here with a short TTL).
    fast = FileStore(tmp_path, reap=True, ttl=0.6, touch_interval=0.1)
    async with fast.alive():
        await fast.list(f"{keys.INSTANCES}/")
        later = _stale_file(tmp_path, keys.INSTANCES, "ns/c/e/dead3", age=0)
        await eventually(lambda: not later.exists(), 3, "reaped by the touch loop")
        assert dead_source.exists()


_EXIT_SCRIPT = """
import asyncio, sys
from dynamo_lite.discovery import FileStore

async def main(root, how):
    store = FileStore(root)
    iid = await store.open()
    await store.put(f"v1/instances/ns/c/e/{iid:x}", b"{}")
    await store.put(f"v1/mdc/ns/c/e/{iid:x}", b"{}")
    print("files", sum(1 for _ in __import__("pathlib").Path(root).rglob("*%2F*")), flush=True)
    if how == "close":
        await store.close()
    elif how == "exit":
        sys.exit(0)
    else:
        raise RuntimeError("boom")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("how", ["close", "exit", "error"])
def test_file_records_are_removed_on_exit(tmp_path: Path, how: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(tmp_path), how],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert "files 2" in res.stdout, res.stdout + res.stderr
    assert res.returncode == (1 if how == "error" else 0), res.stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
