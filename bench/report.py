"""Medians over rounds, targets, and the markdown table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


def fmt(value: float, unit: str = "") -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "k":
        return f"{value / 1000:.1f} k"
    if unit == "ms":
        return f"{value * 1000:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "MiB":
        return f"{value / 1024:.0f} MiB"
    if unit == "us":
        return f"{value:.1f} µs"
    if unit == "int":
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"


def cell(values: Sequence[float], unit: str, per_request: int = 0) -> str:
    """Median, with the min-max over rounds when there is more than one round.

    With ``per_request`` the values are tokens/s and requests/s is shown first.
    """
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return "n/a"
    text = fmt(median(clean), unit)
    if len(clean) > 1 and unit != "int":
        text += f" ({fmt(min(clean), unit)}-{fmt(max(clean), unit)})"
    if per_request:
        text = f"{median(clean) / per_request:.0f} req/s, {text} tok/s"
    return text


@dataclass
class Row:
    item: str
    metric: str
    unit: str
    stock: list[float] = field(default_factory=list)
    lite: list[float] = field(default_factory=list)
    target: str = ""
    #: (stock median, lite median) → met?; None: no automatic verdict.
    check: Callable[[float, float], bool] | None = None
    note: str = ""
    per_request: int = 0

    @property
    def ratio(self) -> float:
        s, lt = median(self.stock), median(self.lite)
        if math.isnan(s) or math.isnan(lt) or s == 0:
            return float("nan")
        return lt / s

    def verdict(self) -> str:
        if self.check is None:
            return ""
        s, lt = median(self.stock), median(self.lite)
        if math.isnan(lt) or (math.isnan(s) and "stock" in self.target):
            return "n/a"
        return "met" if self.check(s, lt) else "**missed**"


def table(rows: Sequence[Row]) -> str:
    out = [
        "| item | metric | stock | dynamo_lite | lite/stock | target | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = "" if math.isnan(r.ratio) else f"{r.ratio:.2f}"
        stock = cell(r.stock, r.unit, r.per_request) if r.stock else "—"
        metric = r.metric + (f" ({r.note})" if r.note else "")
        out.append(
            f"| {r.item} | {metric} | {stock} | {cell(r.lite, r.unit, r.per_request)} | {ratio} | "
            f"{r.target} | {r.verdict()} |"
        )
    return "\n".join(out)
