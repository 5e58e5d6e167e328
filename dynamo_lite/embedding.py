"""Hosting a worker inside another asyncio program.

``Worker.run()`` is the CLI's entry: it returns an exit status and owns the
process's signals while it runs. A program that serves an engine *beside*
other work wants a scope instead::

    async with dynamo_lite.serve(engine, config) as worker:
        ...  # the worker is SERVING here; the program does its own work
    # leaving the block shut the worker down in order

:func:`serve` starts :meth:`Worker.run` in a task group of its own and
yields once the worker is serving. Leaving the block, normally or with an
exception, asks for the graceful shutdown (grace period, drain, cleanup,
teardown) and waits for it; the exception then propagates. A cancellation of
the enclosing scope cancels the run, which takes the hurried path (streams
cut with an explicit error item, ``cleanup()`` once, records removed) and is
bounded by the shutdown timeout. A startup that fails raises the typed
:class:`~dynamo_lite.lifecycle.StartupError` (discovery unreachable, engine
start failed, setup failed …) after the same cleanup.

Signals: with ``handle_signals=True`` (the default, as uvicorn's
``Server.serve``) SIGTERM and SIGINT shut the worker down gracefully while
the block runs, and the previous handlers come back when it ends; a handler
the program had installed itself then hears the signal too. Pass
``handle_signals=False`` to leave the program's signals alone entirely.
The watchdog never exits an embedding process: an overrun cancels the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import anyio

from .config import RuntimeSettings, Settings, WorkerConfig
from .discovery import KvStore
from .engine import BaseEngine
from .lifecycle import Reason, StartupError
from .worker import Worker

__all__ = ["ShutDownBeforeServing", "serve"]


class ShutDownBeforeServing(StartupError):
    """A shutdown was requested (a signal, ``shutdown()``) before the worker served."""

    reason = Reason.SIGNAL_BEFORE_START


@contextlib.asynccontextmanager
async def serve(
    engine: BaseEngine,
    config: WorkerConfig,
    *,
    settings: Settings | RuntimeSettings | Mapping[str, str] | None = None,
    store: KvStore | None = None,
    handle_signals: bool = True,
) -> AsyncIterator[Worker]:
    """Serve ``engine`` until the block ends; yields the worker once it is serving.

    ``settings``: as :class:`~dynamo_lite.worker.Worker` takes them (a
    :class:`~dynamo_lite.config.Settings`, an environment mapping to read, a
    :class:`~dynamo_lite.config.RuntimeSettings`, or None for the process's).
    """
    worker = Worker(
        engine,
        config,
        settings=settings,
        store=store,
        handle_signals=handle_signals,
        hard_exit=None,
    )
    worker.redeliver_signals = True
    # Errors are raised outside the task group, which would wrap them in an
    # exception group; cancellations pass through it untouched.
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run, name="dynamo_lite worker")
        serving = await worker.wait_serving()
        if serving:
            try:
                yield worker
            except Exception as exc:
                failure = exc
            finally:
                worker.shutdown()
                await worker.wait_stopped()
    if not serving:
        if worker.failure is not None:
            raise worker.failure
        why = worker.lifecycle.shutdown_reason
        raise ShutDownBeforeServing(
            f"the worker shut down before serving ({why.value if why else 'unknown'})"
        )
    if failure is not None:
        raise failure
