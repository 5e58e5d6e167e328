"""P4: process start → the model listed by the frontend, on the file backend."""

from __future__ import annotations

from bench.item import Item, variant_rows
from bench.phases import Trial
from bench.report import Row
from bench.results import Results
from bench.settings import Layout


class Startup(Item):
    name = "P4"
    measures = (
        "Popen of the worker → its model listed in the frontend's /v1/models (polled every "
        "5 ms), file discovery backend, side by side with the stock sample worker (and "
        "the variants) in alternating rounds (5; quick: 2)"
    )
    target = "≤ 1.0x stock"
    in_lifecycle = True

    def trial(self, t: Trial) -> None:
        t.res.add("p4:listed", t.kind.name, t.listed_at - t.proc.started_at)

    def rows(self, lay: Layout, res: Results) -> list[Row]:
        return variant_rows(
            lay,
            res,
            self.name,
            "process start → listed in /v1/models",
            "p4:listed",
            "s",
            self.target,
            lambda a, b: b <= a,
        )
