"""What a measured item is: its definition, its target, its rows, and its measuring hooks.

Each item (``bench/items/p*.py``) subclasses :class:`Item`. Items measured in a
shared phase implement that phase's hook: ``round`` for the steady session in
which every flavour is up behind one frontend (P1-P3, see
:mod:`bench.phases`), ``trial`` for the start → listed → idle → stop trials
(P4, P5, P6 idle). ``run`` is an item's own phase, run after the shared ones.
``rows`` and ``notes`` turn the results (live or loaded from a file) into the
item's table rows and footnotes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from bench.report import Row
from bench.results import Results
from bench.settings import Layout, Settings

if TYPE_CHECKING:
    from bench.phases import Steady, Trial

Check = Callable[[float, float], bool]


class Item:
    #: "P1" … "P8": the ``--only`` name and the table's first column.
    name: ClassVar[str]
    #: What is measured and how (the README's table says the same at length).
    measures: ClassVar[str]
    #: The target as printed in the table, "" for an item without one.
    target: ClassVar[str] = ""
    #: Takes part in the steady session, at this place in each round (None: not).
    steady_order: ClassVar[int | None] = None
    #: Takes part in the start → listed → idle → stop trials.
    in_lifecycle: ClassVar[bool] = False
    #: Its trial hook ends the worker, so it runs after the other items' hooks.
    ends_worker: ClassVar[bool] = False
    #: Has a phase of its own (``run``).
    runs_alone: ClassVar[bool] = False

    def setup(self, run: Steady) -> None:
        """Before the steady session's first round (after every flavour is listed)."""

    def round(self, run: Steady, rnd: int) -> None:
        """One alternating round of the steady session."""

    def teardown(self, run: Steady) -> None:
        """After the steady session's last round."""

    def trial(self, t: Trial) -> None:
        """One start → listed → idle trial of one flavour; the worker is idle."""

    def run(self, s: Settings, res: Results) -> None:
        """The item's own phase."""

    def rows(self, lay: Layout, res: Results) -> list[Row]:
        return []

    def notes(self, lay: Layout, res: Results) -> list[str]:
        return []


def lite_kinds(lay: Layout) -> list[str]:
    """``lite`` and the variants, in table order."""
    return ["lite", *lay.variants]


def row(
    res: Results,
    item: str,
    metric: str,
    key: str,
    unit: str,
    target: str = "",
    check: Check | None = None,
    lite_kind: str = "lite",
    per_request: int = 0,
) -> list[Row]:
    """The row comparing ``lite_kind`` with stock on ``key``: none when neither was
    measured, or when a variant was not (see the notes)."""
    stock_vals, lite_vals = res.get(key, "stock"), res.get(key, lite_kind)
    if not lite_vals and lite_kind != "lite":
        return []
    if not stock_vals and not lite_vals:
        return []
    note = lite_kind if lite_kind != "lite" else ""
    return [Row(item, metric, unit, stock_vals, lite_vals, target, check, note, per_request)]


def variant_rows(
    lay: Layout,
    res: Results,
    item: str,
    metric: str,
    key: str,
    unit: str,
    target: str = "",
    check: Check | None = None,
) -> list[Row]:
    """:func:`row` for ``lite`` and then each variant, in table order."""
    return [
        r
        for kind in lite_kinds(lay)
        for r in row(res, item, metric, key, unit, target, check, lite_kind=kind)
    ]
