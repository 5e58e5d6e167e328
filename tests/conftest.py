"""Shared fixtures: real etcd/nats servers, the tiny model, the stock Dynamo frontend
and a process spawner. Every fixture that starts something stops it on teardown."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from dynamo_lite.tiny_model import write_tiny_model
from tests.support.cluster import Cluster, copy_model
from tests.support.netns import Lab, lab_or_fail
from tests.support.services import (
    EtcdServer,
    ManagedProcess,
    NatsServer,
    install_signal_handlers,
)
from tests.support.stock import (
    StockFrontend,
    StockSampleWorker,
    stock_python,
)

# Tests using these fixtures get the matching marker automatically, so
# `-m "not interop"` / `-m "not services"` select correctly without
# every test having to remember the decorator.
_INTEROP_FIXTURES = frozenset(
    {
        "stock_python_path",
        "stock_frontend",
        "stock_frontend_file",
        "stock_frontend_etcd",
        "stock_sample_worker",
        "cluster",
    }
)
_SERVICE_FIXTURES = frozenset({"etcd", "etcd_session", "nats", "nats_session"})


def pytest_configure(config: pytest.Config) -> None:
    install_signal_handlers()
    # In-process clients advertise a call-home address chosen like the stock
    # frontend's; tests outside the namespaces they make stay on loopback.
    os.environ.setdefault("DYN_TCP_RESPONSE_STREAM_HOST", "127.0.0.1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _INTEROP_FIXTURES and item.get_closest_marker("interop") is None:
            item.add_marker(pytest.mark.interop)
        if names & (_SERVICE_FIXTURES | {"stock_frontend_etcd"}) and (
            item.get_closest_marker("services") is None
        ):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# -- model ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny byte-level BPE model (built once per session).

    The package's own generator (``dynamo-lite tiny-model``), so the tests serve
    exactly what the demo and the benchmarks serve.
    """
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


# -- etcd / nats ---------------------------------------------------------------


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd per test; free to ``kill()`` / ``restart()``."""
    server = EtcdServer(tmp_path / "etcd")
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def etcd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd shared by the session: faster, but do not stop it and use unique
    key prefixes / namespaces per test."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd-session"))
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server (JetStream on) per test."""
    server = NatsServer(tmp_path / "nats")
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def nats_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-session"))
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Network-namespace hosts (tests/support/netns.py), all removed afterwards.

    Skips when namespaces cannot be made, but fails under CI.
    """
    lab_or_fail()
    with Lab(tmp_path / "lab") as made:
        yield made


@pytest.fixture
def cluster(lab: Lab, tiny_model: Path, tmp_path: Path) -> Iterator[Cluster]:
    """etcd on an ``infra`` host, a ``frontend`` host that cannot see the model
    directory and a ``client`` host (tests/support/cluster.py); no frontend or
    worker is started yet."""
    made = Cluster(lab, copy_model(tiny_model, tmp_path / "models" / "tiny-model"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def file_kv(tmp_path: Path) -> Path:
    """An empty directory for the file discovery backend (``DYN_FILE_KV``)."""
    path = tmp_path / "file-kv"
    path.mkdir()
    return path


# -- processes -----------------------------------------------------------------


class Spawn(Protocol):
    def __call__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        stop_timeout: float = 10.0,
        start: bool = True,
    ) -> ManagedProcess: ...


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Factory for :class:`ManagedProcess`; everything it made is stopped at teardown.

    ``env`` is the child's full environment (build it with
    ``tests.support.stock.loopback_env(...)``); ``None`` inherits ours. Logs go to
    ``tmp_path/<name>-<n>.log`` unless ``log_path`` is given.
    """
    procs: list[ManagedProcess] = []

    def _spawn(
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        stop_timeout: float = 10.0,
        start: bool = True,
    ) -> ManagedProcess:
        label = name or Path(os.fspath(argv[0])).name
        proc = ManagedProcess(
            argv,
            env=env,
            name=label,
            cwd=cwd,
            log_path=log_path or tmp_path / f"{label}-{len(procs)}.log",
            stop_timeout=stop_timeout,
        )
        procs.append(proc)
        return proc.start() if start else proc

    try:
        yield _spawn
    finally:
        _close_all(procs)


def _close_all(items: Sequence[Any]) -> None:
    # Newest first, so workers go down before the frontend or servers they use.
    errors: list[BaseException] = []
    for item in reversed(items):
        try:
            item.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


# -- stock Dynamo --------------------------------------------------------------


@pytest.fixture(scope="session")
def stock_python_path() -> Path:
    """The stock venv's python (skips, or fails under CI, when not installed)."""
    return stock_python()


StockFrontendFactory = Callable[..., StockFrontend]
StockWorkerFactory = Callable[..., StockSampleWorker]


@pytest.fixture
def stock_frontend(tmp_path: Path, stock_python_path: Path) -> Iterator[StockFrontendFactory]:
    """Factory: ``stock_frontend(discovery=..., file_kv=..., etcd_endpoint=..., ...)``
    takes :class:`StockFrontend`'s arguments and returns it started."""
    made: list[StockFrontend] = []

    def _make(*args: Any, **kwargs: Any) -> StockFrontend:
        kwargs.setdefault("workdir", tmp_path / f"frontend-{len(made)}")
        kwargs.setdefault("python", stock_python_path)
        fe = StockFrontend(*args, **kwargs)
        made.append(fe)
        return fe.start()

    try:
        yield _make
    finally:
        _close_all(made)


@pytest.fixture
def stock_frontend_file(stock_frontend: StockFrontendFactory, file_kv: Path) -> StockFrontend:
    """A started stock frontend on the file backend, watching the ``file_kv`` dir."""
    return stock_frontend(discovery="file", file_kv=file_kv)


@pytest.fixture
def stock_frontend_etcd(stock_frontend: StockFrontendFactory, etcd: EtcdServer) -> StockFrontend:
    """A started stock frontend using the per-test ``etcd`` fixture."""
    return stock_frontend(discovery="etcd", etcd_endpoint=etcd.endpoint)


@pytest.fixture
def stock_sample_worker(tmp_path: Path, stock_python_path: Path) -> Iterator[StockWorkerFactory]:
    """Factory: ``stock_sample_worker(model_dir, discovery=..., file_kv=...,
    frontend=fe)`` returns a started :class:`StockSampleWorker`; with ``frontend``
    it waits until that frontend lists the model."""
    made: list[StockSampleWorker] = []

    def _make(
        *args: Any,
        frontend: StockFrontend | None = None,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> StockSampleWorker:
        kwargs.setdefault("workdir", tmp_path / f"sample-worker-{len(made)}")
        kwargs.setdefault("python", stock_python_path)
        worker = StockSampleWorker(*args, **kwargs)
        made.append(worker)
        return worker.start(frontend=frontend, timeout=timeout)

    try:
        yield _make
    finally:
        _close_all(made)
