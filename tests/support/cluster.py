"""A Dynamo cluster spread over :mod:`tests.support.netns` hosts.

:class:`Cluster` lays out the topology of a small deployment, one namespace
host each: ``infra`` (etcd, NATS), ``frontend`` (the stock frontend, which
cannot see the model directory) and ``client`` (where the test's own HTTP
requests come from); workers get a host each via :meth:`Cluster.worker_host`.
No ``DYN_*_HOST`` variable is set anywhere: every process picks the address it
advertises itself, as on real machines.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support.lite import PROBE_ENGINE, worker_argv, worker_env
from tests.support.netns import Host, Lab, Segment
from tests.support.services import EtcdServer, ManagedProcess, NatsServer
from tests.support.stock import loopback_env, stock_python

__all__ = ["NO_HOSTS", "Cluster", "etcd_on", "nats_on"]

#: Unset every pinned address: processes choose their own, as on real hosts.
NO_HOSTS: dict[str, str | None] = {
    "DYN_TCP_RPC_HOST": None,
    "DYN_TCP_RESPONSE_STREAM_HOST": None,
    "DYN_EVENT_PLANE_HOST": None,
    "DYN_SYSTEM_HOST": None,
    "DYN_HTTP_HOST": None,
}
HTTP_PORT = 8000


def unpinned(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the pinned ``DYN_*_HOST`` addresses."""
    return {k: v for k, v in env.items() if k not in NO_HOSTS}


class _EtcdOnHost(EtcdServer):
    def __init__(self, host_ns: Host, workdir: Path) -> None:
        self.host_ns = host_ns
        super().__init__(workdir, host=host_ns.addr)

    def _pick_ports(self) -> None:
        # A private namespace: the well-known ports are always free.
        self.client_port, self.peer_port = 2379, 2380

    def _argv(self) -> list[str]:
        return self.host_ns.argv(super()._argv())

    def _wait_ready(self, proc: ManagedProcess, deadline: float) -> None:
        with self.host_ns.entered():
            super()._wait_ready(proc, deadline)

    def _raw(
        self, path: str, body: Any, token: str | None = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        with self.host_ns.entered():
            return super()._raw(path, body, token, timeout)


class _NatsOnHost(NatsServer):
    def __init__(self, host_ns: Host, workdir: Path) -> None:
        self.host_ns = host_ns
        super().__init__(workdir, host="0.0.0.0")

    def _pick_ports(self) -> None:
        self.port, self.monitor_port = 4222, None

    def _argv(self) -> list[str]:
        return self.host_ns.argv(super()._argv())

    def _wait_ready(self, proc: ManagedProcess, deadline: float) -> None:
        with self.host_ns.entered():
            super()._wait_ready(proc, deadline)


def etcd_on(host: Host, workdir: Path) -> EtcdServer:
    """etcd on ``host`` (client port 2379), reachable as ``http://<host name>:2379``."""
    return _EtcdOnHost(host, workdir)


def nats_on(host: Host, workdir: Path) -> NatsServer:
    """nats-server on ``host`` (port 4222, all addresses)."""
    return _NatsOnHost(host, workdir)


class Cluster:
    """infra + frontend + client hosts on one segment, workers added on demand."""

    def __init__(self, lab: Lab, model_dir: Path, *, nats: bool = False) -> None:
        self.lab = lab
        self.workdir = lab.workdir
        self.seg: Segment = lab.segment("cluster", "10.201.0.0/24")
        self.infra = lab.host("infra", self.seg)
        # The frontend is given no access to the model: it must fetch the
        # files from the worker's self-hosted URLs.
        self.model_dir = model_dir
        self.fe_host = lab.host("frontend", self.seg, hide=[model_dir])
        self.client = lab.host("client", self.seg)
        self.etcd = etcd_on(self.infra, self.workdir / "etcd")
        self._servers: list[EtcdServer | NatsServer] = [self.etcd]
        self.nats: NatsServer | None = None
        if nats:
            self.nats = nats_on(self.infra, self.workdir / "nats")
            self._servers.append(self.nats)
        self.frontend: ManagedProcess | None = None
        for server in self._servers:
            server.start()

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{self.infra.name}:2379"

    @property
    def nats_url(self) -> str:
        return f"nats://{self.infra.name}:4222"

    @property
    def base_url(self) -> str:
        return f"http://{self.fe_host.addr}:{HTTP_PORT}"

    def env(self, **extra: str | None) -> dict[str, str]:
        """Process environment on a cluster host: no pinned addresses."""
        overrides: dict[str, str | None] = {
            **NO_HOSTS,
            "ETCD_ENDPOINTS": self.etcd_endpoint,
            "NATS_SERVER": self.nats_url if self.nats else None,
            **extra,
        }
        return loopback_env(**overrides)

    # -- processes -----------------------------------------------------------------

    def start_frontend(self, *args: str, **env: str | None) -> ManagedProcess:
        home = self.workdir / "frontend-home"
        home.mkdir(exist_ok=True)
        argv = [
            str(stock_python()), "-m", "dynamo.frontend",
            "--http-host", "0.0.0.0", "--http-port", str(HTTP_PORT),
            "--discovery-backend", "etcd", *args,
        ]  # fmt: skip
        self.frontend = self.fe_host.spawn(
            argv, env=self.env(HOME=str(home), **env), name="frontend", cwd=home
        )
        self.wait_http(lambda r: r.status_code == 200, "/v1/models", what="frontend up")
        return self.frontend

    def worker_host(self, name: str, *segments: Segment) -> Host:
        return self.lab.host(name, *(segments or (self.seg,)))

    def start_lite_worker(
        self,
        host: Host,
        *,
        events: Path | None = None,
        script: Path = PROBE_ENGINE,
        extra: Sequence[str] = (),
        name: str | None = None,
        delay: float = 0.01,
        **env: str | None,
    ) -> ManagedProcess:
        # The system port serves the model files to the frontend, which cannot read them.
        env = {"DYN_SYSTEM_PORT": "9090", **env}
        argv = worker_argv(
            self.model_dir, discovery="etcd", script=script, extra=extra, delay=delay
        )
        full_env = worker_env(etcd_endpoint=self.etcd_endpoint, events=events)
        full_env.update({k: v for k, v in self.env(**env).items() if k not in ("PYTHONPATH",)})
        for key, value in {**NO_HOSTS, **env}.items():
            if value is None:
                full_env.pop(key, None)
        return host.spawn(argv, env=full_env, name=name or f"lite-{host.name}")

    def start_stock_worker(
        self, host: Host, *, extra: Sequence[str] = (), name: str | None = None, **env: str | None
    ) -> ManagedProcess:
        home = self.workdir / f"{host.name}-home"
        home.mkdir(exist_ok=True)
        argv = [
            str(stock_python()), "-m", "dynamo.common.backend.sample_main",
            "--model-name", str(self.model_dir), "--namespace", "dynamo",
            "--discovery-backend", "etcd", "--disable-kv-routing", *extra,
        ]  # fmt: skip
        env = {"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "0", "DYN_SYSTEM_PORT": "9090", **env}
        return host.spawn(
            argv, env=self.env(HOME=str(home), **env), name=name or f"stock-{host.name}"
        )

    # -- talking to the frontend from the client host --------------------------------

    @contextlib.contextmanager
    def http(self, timeout: float = 30.0) -> Iterator[httpx.Client]:
        with (
            self.client.entered(),
            httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False) as client,
        ):
            yield client

    def wait_http(
        self, check: Any, path: str, timeout: float = 60.0, what: str = ""
    ) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            if self.frontend is not None and not self.frontend.running:
                raise RuntimeError(f"frontend exited\n{self.frontend.describe_log()}")
            with contextlib.suppress(httpx.HTTPError), self.http(5.0) as c:
                resp = c.get(path)
                last = resp.status_code, resp.text[:300]
                if check(resp):
                    return resp
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what or path}: not ready in {timeout}s (last {last!r})")
            time.sleep(0.1)

    def models(self) -> list[str]:
        with self.http(5.0) as c:
            return [m["id"] for m in c.get("/v1/models").json().get("data", [])]

    def wait_instances(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until etcd holds ``count`` generate instances; return their records."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.instance_records()
            if len(records) == count:
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(records)} instances in etcd, wanted {count}")
            time.sleep(0.1)

    def _range(self, prefix: str) -> dict[str, dict[str, Any]]:
        import base64

        raw = prefix.encode()
        end = raw[:-1] + bytes([raw[-1] + 1])
        reply = self.etcd.call(
            "/v3/kv/range",
            {"key": base64.b64encode(raw).decode(), "range_end": base64.b64encode(end).decode()},
        )
        return {
            base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
            for kv in reply.get("kvs", []) or []
        }

    def instance_records(self) -> list[dict[str, Any]]:
        """The ``generate`` endpoint records in etcd."""
        return [v for k, v in self._range("v1/instances/dynamo/").items() if "/generate/" in k]

    def card_records(self) -> list[dict[str, Any]]:
        return list(self._range("v1/mdc/dynamo/").values())

    def serving_hosts(self, *hosts: Host) -> list[Host]:
        """Those of ``hosts`` with a call-home connection open to the frontend."""
        out = []
        for host in hosts:
            rpc_ports = {
                tcp_port_of(r) for r in self.instance_records() if tcp_host_of(r) == host.addr
            }
            res = host.run(["ss", "-tnH", "state", "established", "dst", self.fe_host.addr])
            for line in res.stdout.splitlines():
                local = line.split()[-2]
                if int(local.rpartition(":")[2]) not in rpc_ports:
                    out.append(host)
                    break
        return out

    def chat(
        self, content: str = "hello", max_tokens: int = 4, stream: bool = False, **kw: Any
    ) -> httpx.Response:
        body = {
            "model": str(self.model_dir),
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "stream": stream,
            **kw,
        }
        with self.http() as c:
            return c.post("/v1/chat/completions", json=body)

    def close(self) -> None:
        # Workers and the frontend first, while etcd can still take their goodbyes.
        for host in self.lab.hosts.values():
            if host is not self.infra:
                host.stop_all()
        for server in reversed(self._servers):
            with contextlib.suppress(Exception):
                server.close()


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tcp_port_of(record: Mapping[str, Any]) -> int:
    tcp = str(record["transport"]["tcp"])
    return int(tcp.partition("/")[0].rpartition(":")[2])


def tcp_host_of(record: Mapping[str, Any]) -> str:
    tcp = str(record["transport"]["tcp"])
    host = tcp.partition("/")[0].rpartition(":")[0]
    return host.strip("[]")
