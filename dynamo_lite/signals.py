"""SIGTERM/SIGINT for the length of one run, then given back; and the shutdown watchdog.

Theory of operation
-------------------
:func:`captured_signals` is a context manager (the uvicorn pattern). On entry
it remembers, per signal, the Python-level handler and the event loop's own
handler if the program had installed one, then routes the signal to the
worker through ``loop.add_signal_handler`` (which works on asyncio's loop and
on uvloop alike). While it is active, an engine that calls
``loop.add_signal_handler`` for SIGTERM or SIGINT is politely ignored (the
worker owns shutdown); that guard is an attribute on the loop instance and is
taken off on exit. On exit every signal gets its previous handler back, so a
second worker started later on the same loop, or the program hosting it,
handles signals exactly as before.

With ``redeliver=True`` (what ``dynamo_lite.serve()`` asks for) a signal the
worker consumed is delivered once more after the restore when the program
had a handler of its own for it (a Python callable, such as the SIGINT
handler of ``asyncio.run``, or a loop handler), so a host that shuts down on
the signal still hears it. Default dispositions get nothing: the worker
already handled the signal gracefully, and re-raising would kill the process
after an orderly exit. The CLI path (``Worker.run()``) never re-delivers: its
exit status says how the worker ended.

Outside the main thread signals cannot be handled at all; the worker then
runs without them and says so.

:class:`Watchdog` bounds a graceful shutdown: armed by the first shutdown
request, it calls its ``fire`` callback once the budget has passed (the CLI
worker exits the process with status 911, as stock does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["HANDLED", "Watchdog", "captured_signals"]

HANDLED: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

_GUARD_ATTR = "_dynamo_lite_signal_guard"


class _Saved:
    __slots__ = ("loop_handler", "python_handler")

    def __init__(self, python_handler: Any, loop_handler: asyncio.Handle | None) -> None:
        self.python_handler = python_handler
        self.loop_handler = loop_handler

    @property
    def program_owned(self) -> bool:
        """Did the program install a handler of its own (not a default disposition)?"""
        if self.loop_handler is not None:
            return True
        h = self.python_handler
        return callable(h) and h is not signal.default_int_handler


def _loop_handler(loop: asyncio.AbstractEventLoop, sig: int) -> asyncio.Handle | None:
    # asyncio's Unix loop keeps its handlers here; uvloop does not expose them,
    # and there only the Python-level handler can be given back.
    handlers = getattr(loop, "_signal_handlers", None)
    handle = handlers.get(sig) if isinstance(handlers, dict) else None
    return handle if isinstance(handle, asyncio.Handle) else None


@contextlib.contextmanager
def captured_signals(
    on_signal: Callable[[signal.Signals], None], *, redeliver: bool = False
) -> Iterator[list[int]]:
    """Route SIGTERM/SIGINT to ``on_signal`` inside the block; restore on exit.

    Yields the list of signals received, in order.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        logger.warning("not in the main thread: SIGTERM/SIGINT are left to the program")
        yield received
        return
    loop = asyncio.get_running_loop()
    cls_add = type(loop).add_signal_handler
    saved: dict[signal.Signals, _Saved] = {}
    guard: Callable[..., None] | None = None

    def deliver(sig: signal.Signals) -> None:
        received.append(sig)
        on_signal(sig)

    try:
        for sig in HANDLED:
            saved[sig] = _Saved(signal.getsignal(sig), _loop_handler(loop, sig))
            cls_add(loop, sig, deliver, sig)
        guard = _install_guard(loop, cls_add)
        yield received
    finally:
        if guard is not None and loop.__dict__.get("add_signal_handler") is guard:
            del loop.__dict__["add_signal_handler"]
        for sig, prev in saved.items():
            _restore(loop, sig, prev, cls_add)
    for got in dict.fromkeys(received) if redeliver else ():
        before = saved.get(signal.Signals(got))
        if before is not None and before.program_owned:
            signal.raise_signal(got)


def _restore(
    loop: asyncio.AbstractEventLoop,
    sig: signal.Signals,
    prev: _Saved,
    cls_add: Callable[..., None],
) -> None:
    with contextlib.suppress(Exception):
        loop.remove_signal_handler(sig)
    try:
        if prev.loop_handler is not None and not prev.loop_handler.cancelled():
            cb = prev.loop_handler._callback  # type: ignore[attr-defined]
            args = prev.loop_handler._args
            cls_add(loop, sig, cb, *args)
        else:
            signal.signal(sig, prev.python_handler if prev.python_handler is not None else 0)
    except (ValueError, OSError, RuntimeError) as exc:
        logger.warning("could not restore the handler of %s: %s", sig.name, exc)


def _install_guard(
    loop: asyncio.AbstractEventLoop, cls_add: Callable[..., None]
) -> Callable[..., None]:
    """Keep engines from replacing the worker's SIGTERM/SIGINT handling (until exit)."""

    def add_signal_handler(sig: int, callback: Callable[..., object], *args: Any) -> None:
        if sig in HANDLED:
            logger.info(
                "Suppressed engine loop.add_signal_handler(%s); the worker owns shutdown", sig
            )
            return None
        return cls_add(loop, sig, callback, *args)

    setattr(add_signal_handler, _GUARD_ATTR, True)
    loop.add_signal_handler = add_signal_handler  # type: ignore[method-assign,assignment]
    return add_signal_handler


class Watchdog:
    """Calls ``fire(budget)`` once ``budget`` seconds after :meth:`arm`, unless disarmed."""

    __slots__ = ("_fire", "_handle")

    def __init__(self, fire: Callable[[float], None]) -> None:
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, budget: float) -> None:
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(budget, self._fire, budget)

    def disarm(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
