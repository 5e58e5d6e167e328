"""Measured values per metric and flavour, and the results file (bench/results/*.json).

The file holds ``values`` (metric → flavour → one value per round), ``info``
(the load generator's details, broken flavours, P7 trials, the run's
:class:`~bench.settings.Layout` under ``layout``) and ``report`` (the printed
text). :func:`load` reads files written before ``layout`` was stored too.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any


class Results:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.info: dict[str, Any] = {}
        #: Cores used by processes outside the benchmark, per P1-P3 window.
        self.foreign: list[float] = []
        #: Cores the load generator used, per window.
        self.loadgen_cores: list[float] = []

    def add(self, metric: str, kind: str, value: float) -> None:
        self.values[metric][kind].append(value)

    def get(self, metric: str, kind: str) -> list[float]:
        return list(self.values.get(metric, {}).get(kind, []))

    def note_machine(self, out: dict[str, Any]) -> None:
        """Keep a window's outside load and load-generator CPU for the table's footer."""
        self.foreign.append(out["foreign"])
        if "loadgen" in out["cpu"]:
            self.loadgen_cores.append(out["cpu"]["loadgen"] / out["elapsed"])

    def save(self, path: Path, report: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"values": self.values, "info": self.info, "report": report},
                indent=1,
                default=str,
            )
        )


def load(path: Path) -> tuple[Results, str]:
    """The results of a file and the report printed when it was written."""
    raw = json.loads(path.read_text())
    res = Results()
    for metric, per_kind in raw["values"].items():
        for kind, values in per_kind.items():
            for value in values:
                res.add(metric, kind, value)
    res.info = dict(raw.get("info", {}))
    return res, str(raw.get("report", ""))
