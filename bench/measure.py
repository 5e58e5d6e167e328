"""Alternation and noise-checked windows, shared by every item; the progress log.

Every measurement runs the flavours in turn, A B in even rounds and B A in odd
ones (:func:`alternate`), so both see the same machine state. A window in
which processes outside the benchmark used more than :data:`NOISE_CORES`
is run once more and the quieter one kept (:func:`measured`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: A window in which other processes used more CPU than this (cores) is repeated.
NOISE_CORES = 0.4


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def alternate(kinds: Sequence[T], round_no: int) -> list[T]:
    """A B … in even rounds, … B A in odd ones, so neither side always goes first."""
    return list(kinds) if round_no % 2 == 0 else list(reversed(kinds))


def foreign_cores(out: dict[str, Any]) -> float:
    """CPU (in cores) that processes outside the benchmark used during a window."""
    cpu: dict[str, float] = out["cpu"]
    ours = sum(v for k, v in cpu.items() if k != "machine" and not math.isnan(v))
    return max(0.0, cpu["machine"] - ours) / float(out["elapsed"])


def measured(call: Callable[[], dict[str, Any]], what: str, attempts: int) -> dict[str, Any]:
    """Run ``call``; with ``attempts`` 2, run it once more if other processes took more
    than NOISE_CORES of the 2 cores, and keep the quieter window."""
    best: dict[str, Any] | None = None
    for attempt in range(attempts):
        out = call()
        out["foreign"] = foreign_cores(out)
        if best is None or out["foreign"] < best["foreign"]:
            best = out
        if out["foreign"] <= NOISE_CORES or attempt + 1 == attempts:
            break
        log(f"  {what}: other processes used {out['foreign']:.2f} cores, "
            f"{'repeating' if attempt < 1 else 'keeping the quieter window'}")  # fmt: skip
        time.sleep(1.0)
    assert best is not None
    return best
