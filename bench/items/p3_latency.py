"""P3: request latency through the frontend at max_tokens 1, one user."""

from __future__ import annotations

from bench.item import Item, lite_kinds, row
from bench.measure import alternate
from bench.phases import Steady
from bench.report import Row
from bench.results import Results
from bench.settings import Layout


class Latency(Item):
    name = "P3"
    measures = (
        "through the frontend, max_tokens 1, concurrency 1, 4 s (quick: 1 s): p50 and p99 of "
        "request written → terminating chunk read"
    )
    target = "≤ stock"
    steady_order = 1

    def round(self, run: Steady, rnd: int) -> None:
        for kind in alternate(run.kinds, rnd):
            out = run.closed(kind, 1, 1, run.s.p3_duration, 0.5)
            run.res.add("p3:p50", kind.name, out["latency_p50"])
            run.res.add("p3:p99", kind.name, out["latency_p99"])

    def rows(self, lay: Layout, res: Results) -> list[Row]:
        out: list[Row] = []
        for k in lite_kinds(lay):
            for pct in ("p50", "p99"):
                out += row(
                    res,
                    self.name,
                    f"latency {pct}, max_tokens=1, c=1",
                    f"p3:{pct}",
                    "ms",
                    self.target,
                    lambda a, b: b <= a,
                    lite_kind=k,
                )
        return out
