"""dynamo_lite.tasks: services in a task group, and the per-request task sets."""

from __future__ import annotations

import asyncio
import logging

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from dynamo_lite.tasks import TaskSet, start_service

pytestmark = pytest.mark.anyio

HANG = 5.0


class Probe:
    """A service that records what happened to it."""

    def __init__(self) -> None:
        self.started = False
        self.cancelled = False
        self.release = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.started = True
        task_status.started()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise

    async def stubborn(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Ignores cancellation until released."""
        task_status.started()
        with anyio.CancelScope(shield=True):
            await self.release.wait()


async def test_start_returns_once_started_and_stop_ends_it() -> None:
    probe = Probe()
    async with anyio.create_task_group() as tg:
        service = await start_service(tg, probe.run, name="probe")
        assert probe.started and service.running
        assert await service.stop(HANG)
        assert probe.cancelled and not service.running
        # Stopping again is harmless.
        assert await service.stop(HANG)


async def test_stop_is_shielded_from_the_callers_cancellation() -> None:
    probe = Probe()
    async with anyio.create_task_group() as tg:
        service = await start_service(tg, probe.run, name="probe")
        with anyio.CancelScope() as scope:
            scope.cancel()  # the caller is being cancelled while tearing down
            stopped = await service.stop(HANG)
        assert stopped and not service.running and probe.cancelled


async def test_stop_is_bounded() -> None:
    probe = Probe()
    async with anyio.create_task_group() as tg:
        service = await start_service(tg, probe.stubborn, name="stubborn")
        assert await service.stop(0.01) is False
        assert service.running
        probe.release.set()
        with anyio.fail_after(HANG):
            while service.running:
                await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()


async def test_failure_before_started_is_raised_to_the_starter() -> None:
    async def broken(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        raise OSError("address in use")

    async with anyio.create_task_group() as tg:
        with pytest.raises(OSError, match="address in use"):
            await start_service(tg, broken, name="broken")


async def test_failure_after_started_is_logged_and_spares_the_group(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fail = anyio.Event()

    async def flaky(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await fail.wait()
        raise RuntimeError("loop bug")

    probe = Probe()
    with caplog.at_level(logging.ERROR, logger="dynamo_lite.tasks"):
        async with anyio.create_task_group() as tg:
            sibling = await start_service(tg, probe.run, name="sibling")
            service = await start_service(tg, flaky, name="flaky")
            fail.set()
            with anyio.fail_after(HANG):
                while service.running:
                    await anyio.lowlevel.checkpoint()
            assert sibling.running and not probe.cancelled
            assert await sibling.stop(HANG)
    assert any(r.getMessage() == "flaky failed" and r.exc_info for r in caplog.records)


async def test_service_arguments_are_passed() -> None:
    seen: list[int] = []

    async def with_args(a: int, b: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        seen.extend((a, b))
        task_status.started()

    async with anyio.create_task_group() as tg:
        service = await start_service(tg, with_args, 1, 2, name="args")
        assert await service.stop(HANG)
    assert seen == [1, 2]


# --- TaskSet -------------------------------------------------------------------


async def test_taskset_forgets_finished_tasks() -> None:
    tasks = TaskSet("t")
    gate = asyncio.Event()
    task = tasks.spawn(gate.wait(), name="waiter")
    assert len(tasks) == 1 and task.get_name() == "waiter"
    gate.set()
    assert await tasks.join(HANG)
    assert len(tasks) == 0


async def test_taskset_failure_is_logged_and_spares_siblings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskSet("requests")
    gate = asyncio.Event()

    async def boom() -> None:
        raise ValueError("one request failed")

    sibling = tasks.spawn(gate.wait())
    with caplog.at_level(logging.ERROR, logger="dynamo_lite.tasks"):
        failing = tasks.spawn(boom(), name="bad")
        await asyncio.wait([failing])
        await asyncio.sleep(0)  # let the done callback run
    assert not sibling.done()
    assert any("requests task bad failed" in r.getMessage() for r in caplog.records)
    gate.set()
    assert await tasks.join(HANG)


async def test_taskset_join_is_bounded_and_cancel_finishes_the_rest() -> None:
    tasks = TaskSet("t")
    task = tasks.spawn(asyncio.Event().wait())
    assert await tasks.join(0.01) is False
    assert len(tasks) == 1
    await tasks.cancel(HANG)
    assert task.cancelled() and len(tasks) == 0


async def test_taskset_cancel_is_shielded_and_bounded() -> None:
    tasks = TaskSet("t")
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # ignores cancellation

    task = tasks.spawn(stubborn())
    await asyncio.sleep(0)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await tasks.cancel(0.01)  # returns although the task outlives it
    assert not task.done()
    release.set()
    assert await tasks.join(HANG)
