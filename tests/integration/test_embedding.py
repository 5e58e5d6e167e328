"""A worker hosted inside another asyncio program: ``serve()``, signals, typed
startup errors, and nothing left behind after a thousand requests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import dynamo_lite
from dynamo_lite import (
    Context,
    DiscoveryUnreachable,
    EngineStartFailed,
    GenerateChunk,
    GenerateRequest,
    RuntimeSettings,
    SetupFailed,
    ShutDownBeforeServing,
    Worker,
    WorkerConfig,
)
from dynamo_lite.client import Client, ClientError, RemoteError
from dynamo_lite.discovery import FileStore, MemoryStore
from dynamo_lite.lifecycle import State
from dynamo_lite.protocol import control
from dynamo_lite.tiny_model import write_tiny_model
from tests.support.inproc import ScriptedEngine

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("embed") / "tiny")


def make_config(model_dir: Path, component: str = "embed") -> WorkerConfig:
    return WorkerConfig(
        namespace="dynamo", component=component, model_name=str(model_dir), discovery_backend="file"
    )


def settings(**kw: Any) -> RuntimeSettings:
    kw.setdefault("tcp_host", "127.0.0.1")
    kw.setdefault("grace_period", 0.0)
    return RuntimeSettings(**kw)


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# --- serve() ----------------------------------------------------------------------


async def test_serve_yields_a_serving_worker_and_leaving_shuts_it_down(
    model_dir: Path, tmp_path: Path
) -> None:
    engine = ScriptedEngine()
    engine.model = str(model_dir)
    root = tmp_path / "kv"
    async with dynamo_lite.serve(
        engine, make_config(model_dir), settings=settings(), store=FileStore(root)
    ) as worker:
        assert worker.lifecycle.state is State.SERVING
        assert len(files(root)) == 2  # the card and the instance record
        async with Client("dynamo", "embed", "generate", store=FileStore(root)) as client:
            items = await (await client.generate({"token_ids": [1]})).collect()
        assert items[-1]["finish_reason"] == "length"
    assert worker.lifecycle.state is State.STOPPED
    assert await worker.wait_stopped() == 0
    assert engine.calls[-1] == "cleanup" and engine.calls.count("cleanup") == 1
    assert files(root) == []


async def test_an_exception_in_the_block_shuts_down_in_order_then_propagates(
    model_dir: Path, tmp_path: Path
) -> None:
    engine = ScriptedEngine()
    engine.model = str(model_dir)
    root = tmp_path / "kv"
    with pytest.raises(LookupError, match="the host failed"):
        async with dynamo_lite.serve(
            engine, make_config(model_dir), settings=settings(), store=FileStore(root)
        ) as worker:
            raise LookupError("the host failed")
    assert worker.lifecycle.state is State.STOPPED
    # The graceful path, not the cancelled one: grace and drain ran.
    assert State.GRACE in worker.lifecycle.visited and not worker.lifecycle.hurried
    assert engine.calls.count("cleanup") == 1
    assert files(root) == []


async def test_a_worker_that_stops_on_its_own_is_awaitable(model_dir: Path, tmp_path: Path) -> None:
    engine = ScriptedEngine()
    engine.model = str(model_dir)
    async with dynamo_lite.serve(
        engine, make_config(model_dir), settings=settings(), store=FileStore(tmp_path)
    ) as worker:
        worker.shutdown()
        worker.shutdown()  # once under way, a second call changes nothing
        with anyio.fail_after(10):
            assert await worker.wait_stopped() == 0
        assert not worker.lifecycle.hurried


class FailingEngine(ScriptedEngine):
    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    async def start(self, worker_id: int) -> Any:
        if self.where == "start":
            self.calls.append("start")
            raise RuntimeError("no GPU today")
        return await super().start(worker_id)

    async def on_endpoint_ready(self, endpoint: Any) -> None:
        if self.where == "setup":
            raise RuntimeError("hook failed")


@pytest.mark.parametrize(
    ("where", "error"),
    [("start", EngineStartFailed), ("setup", SetupFailed)],
)
async def test_startup_failures_raise_typed_errors_after_cleanup(
    where: str, error: type[Exception], model_dir: Path, tmp_path: Path
) -> None:
    engine = FailingEngine(where)
    engine.model = str(model_dir)
    root = tmp_path / "kv"
    with pytest.raises(error) as info:
        async with dynamo_lite.serve(
            engine, make_config(model_dir), settings=settings(), store=FileStore(root)
        ):
            pytest.fail("the block must not run")
    assert isinstance(info.value, dynamo_lite.StartupError)
    assert engine.calls.count("cleanup") == 1  # start() was called
    assert files(root) == []


async def test_unreachable_discovery_raises_a_typed_error(model_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store wants its root")
    engine = ScriptedEngine()
    engine.model = str(model_dir)
    with pytest.raises(DiscoveryUnreachable):
        async with dynamo_lite.serve(
            engine, make_config(model_dir), settings=settings(), store=FileStore(blocker / "kv")
        ):
            pytest.fail("the block must not run")
    assert engine.calls == []  # nothing started, nothing cleaned up


async def test_a_shutdown_before_serving_raises(model_dir: Path, tmp_path: Path) -> None:
    class SlowStart(ScriptedEngine):
        async def start(self, worker_id: int) -> Any:
            worker.shutdown()  # e.g. a SIGTERM while the model loads
            return await super().start(worker_id)

    engine = SlowStart()
    engine.model = str(model_dir)
    worker: Worker
    real_worker = Worker

    def capture(*args: Any, **kwargs: Any) -> Worker:
        nonlocal worker
        worker = real_worker(*args, **kwargs)
        return worker

    import dynamo_lite.embedding as embedding

    embedding.Worker = capture  # type: ignore[misc,assignment]
    try:
        with pytest.raises(ShutDownBeforeServing):
            async with dynamo_lite.serve(
                engine, make_config(model_dir), settings=settings(), store=FileStore(tmp_path)
            ):
                pytest.fail("the block must not run")
    finally:
        embedding.Worker = real_worker  # type: ignore[misc]
    assert engine.calls.count("cleanup") == 1


async def test_an_embedded_watchdog_overrun_cancels_the_run_instead_of_exiting(
    model_dir: Path, tmp_path: Path
) -> None:
    class HangingCleanup(ScriptedEngine):
        async def cleanup(self) -> None:
            self.calls.append("cleanup")
            await asyncio.sleep(3600)

    engine = HangingCleanup()
    engine.model = str(model_dir)
    root = tmp_path / "kv"
    with anyio.fail_after(20):
        async with dynamo_lite.serve(
            engine,
            make_config(model_dir),
            settings=settings(shutdown_timeout=1),
            store=FileStore(root),
        ) as worker:
            pass
    # The process is still here; the run ended in order, with the watchdog's status.
    assert await worker.wait_stopped() == 911
    assert worker.lifecycle.state is State.STOPPED
    assert engine.calls.count("cleanup") == 1
    assert files(root) == []


# --- signals ----------------------------------------------------------------------


@pytest.fixture
def program_sigterm() -> Iterator[list[int]]:
    """A SIGTERM handler of the hosting program's own, recording what reaches it."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _serve_until_sigterm(worker: Worker) -> int:
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        assert await worker.wait_serving()
        os.kill(os.getpid(), signal.SIGTERM)
        with anyio.fail_after(10):
            return await worker.wait_stopped()
    raise AssertionError("unreachable")


async def test_two_workers_one_after_the_other_each_handle_sigterm(
    model_dir: Path, tmp_path: Path, program_sigterm: list[int]
) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    for n in range(2):
        engine = ScriptedEngine()
        engine.model = str(model_dir)
        worker = Worker(
            engine,
            make_config(model_dir, f"sig{n}"),
            settings=settings(),
            store=FileStore(tmp_path / f"kv{n}"),
        )
        assert await _serve_until_sigterm(worker) == 0
        assert worker.lifecycle.shutdown_reason is dynamo_lite.lifecycle.Reason.SIGTERM
        assert engine.calls.count("cleanup") == 1
        # Given back after each run: the program's handler, no patch left on the loop.
        assert signal.getsignal(signal.SIGTERM) is handler
        assert "add_signal_handler" not in loop.__dict__
    # Worker.run() (the CLI path) does not hand the signal on: its status says it all.
    assert program_sigterm == []


async def test_serve_hands_the_signal_to_the_programs_own_handler_afterwards(
    model_dir: Path, tmp_path: Path, program_sigterm: list[int]
) -> None:
    engine = ScriptedEngine()
    engine.model = str(model_dir)
    async with dynamo_lite.serve(
        engine, make_config(model_dir), settings=settings(), store=FileStore(tmp_path)
    ) as worker:
        os.kill(os.getpid(), signal.SIGTERM)
        with anyio.fail_after(10):
            await worker.wait_stopped()
    # The worker had it while it ran (a graceful shutdown), then the program.
    assert worker.lifecycle.shutdown_reason is dynamo_lite.lifecycle.Reason.SIGTERM
    with anyio.fail_after(5):
        while not program_sigterm:
            await asyncio.sleep(0.01)
    assert program_sigterm == [signal.SIGTERM]


async def test_a_loop_handler_of_the_program_comes_back(model_dir: Path, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    loop.add_signal_handler(signal.SIGTERM, seen.append, "program")
    try:
        engine = ScriptedEngine()
        engine.model = str(model_dir)
        worker = Worker(
            engine, make_config(model_dir), settings=settings(), store=FileStore(tmp_path)
        )
        assert await _serve_until_sigterm(worker) == 0
        assert seen == []
        os.kill(os.getpid(), signal.SIGTERM)
        with anyio.fail_after(5):
            while not seen:
                await asyncio.sleep(0.01)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


async def test_engines_cannot_take_sigterm_while_the_worker_runs(
    model_dir: Path, tmp_path: Path
) -> None:
    class Grabby(ScriptedEngine):
        async def start(self, worker_id: int) -> Any:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, lambda: self.calls.append("engine-sigterm"))
            return await super().start(worker_id)

    engine = Grabby()
    engine.model = str(model_dir)
    before = signal.getsignal(signal.SIGTERM)
    worker = Worker(engine, make_config(model_dir), settings=settings(), store=FileStore(tmp_path))
    assert await _serve_until_sigterm(worker) == 0
    assert "engine-sigterm" not in engine.calls
    assert signal.getsignal(signal.SIGTERM) is before


async def test_handle_signals_false_leaves_the_program_alone(
    model_dir: Path, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    engine = ScriptedEngine()
    engine.model = str(model_dir)
    async with dynamo_lite.serve(
        engine,
        make_config(model_dir),
        settings=settings(),
        store=FileStore(tmp_path),
        handle_signals=False,
    ):
        assert {sig: signal.getsignal(sig) for sig in before} == before
        assert "add_signal_handler" not in loop.__dict__
        handlers = getattr(loop, "_signal_handlers", {})
        assert signal.SIGTERM not in handlers and signal.SIGINT not in handlers
    assert {sig: signal.getsignal(sig) for sig in before} == before


# --- no leaks ---------------------------------------------------------------------


async def _stream_then_fail(request: GenerateRequest, ctx: Context) -> AsyncGenerator[Any, None]:
    yield {"token_ids": [1], "index": 0}
    raise RuntimeError("engine fault")


async def _slow(request: GenerateRequest, ctx: Context) -> AsyncGenerator[GenerateChunk, None]:
    for i in range(1000):
        if ctx.is_stopped():
            yield {"token_ids": [], "index": 0, "finish_reason": "cancelled"}
            return
        yield {"token_ids": [i], "index": 0}
        await asyncio.sleep(0.002)


async def _waits_on_its_context(
    request: GenerateRequest, ctx: Context
) -> AsyncGenerator[GenerateChunk, None]:
    # The dynamo._core spelling; it must leave no task behind either way.
    waiter = ctx.async_killed_or_stopped()
    yield {"token_ids": [1], "index": 0, "finish_reason": "length"}
    assert not waiter.done()


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def _settled(
    tasks_before: set[asyncio.Task[Any]], fds_before: set[str], timeout: float = 5.0
) -> tuple[set[asyncio.Task[Any]], set[str]]:
    """Wait (bounded) until no task or fd beyond ``*_before`` is left; return what is left.

    Closing callbacks run on later loop turns: this waits for them rather than
    for a fixed time. An empty ``fds_before`` means: do not look at fds.
    """
    me = asyncio.current_task()
    left_tasks: set[asyncio.Task[Any]] = set()
    left_fds: set[str] = set()
    with anyio.move_on_after(timeout):
        while True:
            left_tasks = {
                t for t in asyncio.all_tasks() - tasks_before if not t.done() and t is not me
            }
            left_fds = _fds() - fds_before if fds_before else set()
            if not left_tasks and not left_fds:
                break
            await asyncio.sleep(0.01)
    return left_tasks, left_fds


async def _thousand_requests(worker_store: FileStore, root: Path) -> dict[str, int]:
    outcomes = {"ok": 0, "cancelled": 0, "killed": 0, "failed": 0}
    async with Client("dynamo", "leak", "generate", store=FileStore(root)) as client:
        await client.wait_for_instances(10)
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            kind = ("ok", "stop", "kill", "fail", "ctx")[i % 5]
            mode = {"stop": "slow", "kill": "slow", "fail": "fail", "ctx": "ctx"}.get(kind, "count")
            async with sem:
                stream = await client.generate({"token_ids": [1], "mode": mode})
                try:
                    async for _ in stream:
                        if kind in ("stop", "kill"):
                            sig = control.StreamControl.STOP if kind == "stop" else None
                            await stream.cancel(sig or control.StreamControl.KILL)
                            outcomes["cancelled" if kind == "stop" else "killed"] += 1
                            break
                    else:
                        outcomes["ok"] += 1
                except RemoteError:
                    outcomes["failed"] += 1

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(one, i)
    return outcomes


async def test_a_thousand_requests_and_a_shutdown_leave_nothing_behind(
    model_dir: Path, tmp_path: Path
) -> None:
    behaviours = {"fail": _stream_then_fail, "slow": _slow, "ctx": _waits_on_its_context}

    async def one_worker(n: int, requests: bool) -> tuple[ScriptedEngine, dict[str, int]]:
        engine = ScriptedEngine(behaviours)
        engine.model = str(model_dir)
        root = tmp_path / f"kv{n}"
        store = FileStore(root)
        outcomes: dict[str, int] = {}
        async with dynamo_lite.serve(
            engine,
            make_config(model_dir, "leak"),
            settings=settings(system_port=0),
            store=store,
            handle_signals=False,
        ):
            if requests:
                outcomes = await _thousand_requests(store, root)
        assert files(root) == []
        return engine, outcomes

    # A first run warms up whatever the loop and the libraries create once.
    warm_up_tasks = asyncio.all_tasks()
    await one_worker(0, requests=False)
    await _settled(warm_up_tasks, set())  # its fds may stay (created once); its tasks must not
    tasks_before, fds_before = asyncio.all_tasks(), _fds()
    engine, outcomes = await one_worker(1, requests=True)
    left_tasks, left_fds = await _settled(tasks_before, fds_before)
    assert sum(outcomes.values()) == 1000, outcomes
    assert outcomes["failed"] == 200 and outcomes["killed"] == 200, outcomes
    assert len(engine.aborts) == 400  # every stop and kill, exactly once
    assert not left_tasks, left_tasks
    assert left_fds == set()


async def test_async_killed_or_stopped_creates_no_task() -> None:
    ctx = Context("r1")
    before = asyncio.all_tasks()
    fut = ctx.async_killed_or_stopped()
    assert asyncio.all_tasks() == before
    ctx.stop_generating()
    assert await fut is True
    other = Context("r2")
    pending = other.async_killed_or_stopped()
    other._end()  # the request ended without a cancellation
    assert await pending is False


# --- the example ------------------------------------------------------------------


def test_the_embedded_example_runs_a_worker_beside_another_service(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DYN_FILE_KV": str(tmp_path / "kv"),
        "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "0",
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "embedded.py"), "--self-test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-test passed" in proc.stdout
    assert files(tmp_path / "kv") == []


def test_public_names_stay_importable() -> None:
    from dynamo_lite import Worker as W
    from dynamo_lite.client import Client as C

    assert W is Worker and C is Client
    assert dynamo_lite.serve is not None and issubclass(ClientError, Exception)
    assert MemoryStore is not None and uuid is not None
