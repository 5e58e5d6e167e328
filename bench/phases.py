"""The shared phases: the steady session (P1-P3) and the lifecycle trials (P4, P5, P6 idle).

Steady: every flavour is up at once behind one frontend (each is its own
model), a load generator drives them; each round runs the items' ``round``
hooks in ``steady_order``, and inside those each flavour in turn (alternating).

Lifecycle: one frontend on a fresh file-discovery root; per round, per flavour
(stock, lite and the variants, alternating; a variant the steady session found
broken is left out): the worker process is started, the frontend's ``/v1/models``
is polled every 5 ms until the model is listed, the worker is left idle until
:data:`IDLE` after that, then each item's ``trial`` hook runs (the one that
ends the worker last), then the worker is stopped and the next start waits
until the frontend dropped the model.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.item import Item
from bench.measure import alternate, log, measured
from bench.procs import LOOPBACK, Helper, Proc
from bench.results import Results
from bench.settings import Kind, Settings
from bench.workers import (
    Frontend,
    broken,
    model_dir,
    pids,
    session,
    start_loadgen,
    start_worker,
)

#: How long a started worker idles after it is listed before the trial hooks run.
IDLE = 1.0


@dataclass
class Steady:
    """The running steady session, as the items' hooks see it."""

    s: Settings
    res: Results
    fe: Frontend
    workers: dict[str, Proc]
    kv: Path
    loadgen: Helper
    #: The flavours still measured (a broken one is left out after the warm-up).
    kinds: list[Kind]
    pids: dict[str, int]
    #: Helpers an item started in ``setup``, stopped after the last round.
    helpers: dict[str, Helper] = field(default_factory=dict)

    @property
    def base(self) -> list[Kind]:
        """stock and lite, without the variants."""
        return [k for k in self.kinds if k in self.s.kinds]

    def closed(self, kind: Kind, c: int, n: int, duration: float, warmup: float) -> dict[str, Any]:
        """A closed-loop window through the frontend: ``c`` users, ``n`` tokens per request."""
        out = measured(
            lambda: self.loadgen.call(
                op="closed",
                host=LOOPBACK,
                port=self.fe.port,
                model=str(model_dir(self.s, kind)),
                concurrency=c,
                tokens=n,
                warmup=warmup,
                duration=duration,
                pids=self.pids,
            ),
            f"{kind.name} c={c} n={n}",
            self.s.attempts,
        )
        if out["errors"]:
            log(f"  {kind.name} c={c} n={n}: {out['errors']} errors {out['error_samples']}")
        self.res.note_machine(out)
        return out


def steady(s: Settings, res: Results, items: Sequence[Item]) -> None:
    ordered = sorted(
        (i for i in items if i.steady_order is not None), key=lambda i: i.steady_order or 0
    )
    kinds = s.kinds + s.variants
    with session(s, kinds, "steady", delay=0.0) as (fe, workers, kv):
        assert fe is not None
        lg = start_loadgen(s)
        res.info["loadgen"] = lg.ready
        run = Steady(s, res, fe, workers, kv, lg, kinds, pids(workers, fe))
        try:
            for item in ordered:
                item.setup(run)
            # Warm the frontend's per-model pipeline and the workers.
            for kind in list(run.kinds):
                out = run.closed(kind, 8, 16, 1.0, 0.3)
                if broken(res, kind, out, workers[kind.name]):
                    run.kinds.remove(kind)
            for rnd in range(s.rounds):
                log(f"steady round {rnd + 1}/{s.rounds}")
                for item in ordered:
                    item.round(run, rnd)
            for item in ordered:
                item.teardown(run)
        finally:
            for helper in (lg, *run.helpers.values()):
                helper.stop()


@dataclass
class Trial:
    """One flavour's start → listed → idle trial, as the items' hooks see it."""

    s: Settings
    res: Results
    kind: Kind
    proc: Proc
    #: ``time.monotonic()`` when the frontend first listed the model.
    listed_at: float


def lifecycle(s: Settings, res: Results, items: Sequence[Item]) -> None:
    hooks = sorted((i for i in items if i.in_lifecycle), key=lambda i: i.ends_worker)
    kv = Path(tempfile.mkdtemp(prefix="kv-startstop-", dir=s.workdir))
    broken_kinds = res.info.get("broken", {})
    kinds = s.kinds + [v for v in s.variants if v.name not in broken_kinds]
    fe = Frontend(s, kv, "startstop")
    try:
        for rnd in range(s.lifecycle_rounds):
            log(f"start/stop round {rnd + 1}/{s.lifecycle_rounds}")
            for kind in alternate(kinds, rnd):
                name = str(model_dir(s, kind))
                proc = start_worker(s, kind, kv, "startstop", delay=0.0)
                try:
                    listed = fe.wait_model(name, interval=0.005, alive=proc)
                    time.sleep(max(0.0, listed + IDLE - time.monotonic()))
                    t = Trial(s, res, kind, proc, listed)
                    for item in hooks:
                        item.trial(t)
                finally:
                    proc.stop()
                # The next start must be seen as new: wait for the record to go.
                with contextlib.suppress(TimeoutError):
                    fe.wait_model(name, present=False, timeout=20)
    finally:
        fe.stop()


def per_token_us(cpu_seconds: float, tokens: float) -> float:
    """CPU µs per token of a window; NaN for a window that streamed nothing."""
    return cpu_seconds / tokens * 1e6 if tokens else math.nan
