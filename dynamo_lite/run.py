"""``run(EngineCls)``: the entry point an engine's ``main`` calls.

``from_args(argv)`` runs first, before anything else exists (raising → exit
status 1, no cleanup); then a :class:`~dynamo_lite.worker.Worker` drives the
engine through the lifecycle and the process exits with its status.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from .config import Settings, WorkerConfig, pin_process_switches
from .engine import BaseEngine
from .logsetup import configure_logging
from .worker import Worker

logger = logging.getLogger("dynamo_lite.run")

EngineFactory = Callable[[list[str] | None], Awaitable[tuple[BaseEngine, WorkerConfig]]]


async def _start(
    engine_cls: type[BaseEngine],
    argv: list[str] | None = None,
    engine_factory: EngineFactory | None = None,
    settings: Settings | None = None,
) -> int:
    """Build the engine (``engine_factory`` or ``engine_cls.from_args``) and run a worker on it."""
    from_args = engine_factory or engine_cls.from_args
    try:
        engine, worker_config = await from_args(argv)
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        return 1
    if settings is None:
        # Stock's own tests patch Worker and expect exactly this call.
        return await Worker(engine, worker_config).run()
    return await Worker(engine, worker_config, settings=settings).run()


_main = _start


def _loop_factory(use_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (and not disabled with DYN_LITE_UVLOOP=0)."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(
    engine_cls: type[BaseEngine],
    argv: list[str] | None = None,
    engine_factory: EngineFactory | None = None,
) -> Any:
    """Run ``engine_cls`` as a worker and exit the process with the worker's status."""
    # The environment is read here, once; every part below gets its settings.
    settings = Settings.from_env()
    pin_process_switches(settings.switches)
    configure_logging(settings.logging)
    if not settings.otel.enabled:  # OTEL_EXPORT_ENABLED; the exporters load only with it
        sys.exit(_run_loop(engine_cls, argv, engine_factory, settings))
    from . import otel_export

    exporting = otel_export.configure_from_env(settings.otel)
    metric_export = otel_export.start_metric_export(settings.otel)
    try:
        code = _run_loop(engine_cls, argv, engine_factory, settings)
    finally:
        if metric_export is not None:
            metric_export.shutdown()
        otel_export.shutdown(exporting)
    sys.exit(code)


def _run_loop(
    engine_cls: type[BaseEngine],
    argv: list[str] | None,
    engine_factory: EngineFactory | None,
    settings: Settings,
) -> int:
    with asyncio.Runner(loop_factory=_loop_factory(settings.switches.uvloop)) as runner:
        return runner.run(_start(engine_cls, argv, engine_factory, settings))
