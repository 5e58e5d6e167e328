"""P5: SIGTERM to the idle worker → its exit, with no graceful-shutdown grace period."""

from __future__ import annotations

import math
import signal
import subprocess
import time

from bench.item import Item, lite_kinds, variant_rows
from bench.phases import Trial
from bench.report import Row
from bench.results import Results
from bench.settings import Layout


class Sigterm(Item):
    name = "P5"
    measures = (
        "SIGTERM to the worker, idle since it was listed 1 s before (DYN_GRACEFUL_SHUTDOWN_"
        "GRACE_PERIOD_SECS=0) → waitpid returns; in the P4 trials"
    )
    target = "≤ 0.15 s"
    in_lifecycle = True
    ends_worker = True

    def trial(self, t: Trial) -> None:
        t0 = time.monotonic()
        t.proc.signal(signal.SIGTERM)
        try:
            code = t.proc.popen.wait(30)
            t.res.add("p5:exit", t.kind.name, time.monotonic() - t0)
            t.res.add("p5:code", t.kind.name, code)
        except subprocess.TimeoutExpired:
            t.res.add("p5:exit", t.kind.name, math.nan)

    def rows(self, lay: Layout, res: Results) -> list[Row]:
        return variant_rows(
            lay,
            res,
            self.name,
            "SIGTERM → exit, grace 0",
            "p5:exit",
            "s",
            self.target,
            lambda a, b: b <= 0.15,
        )

    def notes(self, lay: Layout, res: Results) -> list[str]:
        out = []
        for kind in ("stock", *lite_kinds(lay)):
            codes = res.get("p5:code", kind)
            if codes and any(c != 0 for c in codes):
                out.append(f"- P5 {kind}: exit codes {sorted({int(c) for c in codes})}")
        return out
