"""P6: the worker's resident memory, idle and with 1,000 open streams."""

from __future__ import annotations

import math
import time

from bench.item import Item, row, variant_rows
from bench.measure import alternate, log
from bench.phases import Trial
from bench.report import Row
from bench.results import Results
from bench.settings import Layout, Settings
from bench.workers import session, start_direct


class Memory(Item):
    name = "P6"
    measures = (
        "idle: VmRSS 1 s after the model is listed, in the P4 trials (file backend, "
        "alternating rounds, 5; quick: 2; the variants too); loaded: a fresh worker with "
        "--delay 0.25, 1,000 streams opened with the pure-Python client, 100 at a time, "
        "each waited for until its first token, then the peak VmRSS over the next second"
    )
    target = "≤ 0.4x stock"  # idle; with open streams ≤ 0.5x stock
    in_lifecycle = True
    runs_alone = True

    def trial(self, t: Trial) -> None:
        t.res.add("p6:idle", t.kind.name, t.proc.rss())

    def run(self, s: Settings, res: Results) -> None:
        for rnd in range(s.p6_rounds):
            log(f"memory round {rnd + 1}/{s.p6_rounds}")
            for kind in alternate(s.kinds, rnd):
                # A long engine delay keeps 1,000 streams open without flooding the client.
                with session(s, [kind], "memory", delay=0.25, frontend=False) as (_, workers, kv):
                    proc = workers[kind.name]
                    client = start_direct(s, "lite", kv)
                    try:
                        client.call(op="connect", component=kind.component)
                        out = client.call(
                            op="hold",
                            component=kind.component,
                            streams=s.p6_streams,
                            tokens=2000,
                            batch_timeout=60,
                            timeout=300,
                        )
                        time.sleep(1.0)
                        peak = 0
                        for _ in range(10):
                            peak = max(peak, proc.rss())
                            time.sleep(0.1)
                        res.add("p6:streams", kind.name, peak if out["errors"] == 0 else math.nan)
                        res.add("p6:open", kind.name, out["open"])
                        if out["errors"]:
                            log(f"  P6 {kind.name}: {out['errors']} errors {out['error_samples']}")
                    finally:
                        client.stop()

    def rows(self, lay: Layout, res: Results) -> list[Row]:
        return [
            *variant_rows(
                lay,
                res,
                self.name,
                "RSS idle",
                "p6:idle",
                "MiB",
                self.target,
                lambda a, b: b <= 0.4 * a,
            ),
            *row(
                res,
                self.name,
                f"RSS with {lay.p6_streams} open streams",
                "p6:streams",
                "MiB",
                "≤ 0.5x stock",
                lambda a, b: b <= 0.5 * a,
            ),
        ]

    def notes(self, lay: Layout, res: Results) -> list[str]:
        out = []
        for kind in ("stock", "lite"):
            opened = res.get("p6:open", kind)
            if opened and min(opened) < lay.p6_streams:
                out.append(f"- P6 {kind}: only {int(min(opened))} streams open")
        return out
