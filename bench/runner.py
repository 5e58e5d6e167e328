"""Benchmark dynamo_lite against the stock Dynamo 1.6.1 worker; prints one markdown table.

    python bench/run.py                 # full run (~15 min on 2 cores)
    python bench/run.py --quick         # ~3 min, fewer rounds and shorter windows
    python bench/run.py --only P1,P3    # some items only
    python bench/run.py --rounds 7      # more alternating rounds
    python bench/run.py --render bench/results/<time>.json   # an earlier run's table

The stock worker is ``python -m dynamo.common.backend.sample_main`` from the
stock venv, the dynamo_lite worker ``examples/sample_engine.py`` (same flags,
same engine behaviour). Both run the file discovery backend on 127.0.0.1 under
the stock frontend. Every measurement alternates the workers (A B, then B A
in the next round) and the table shows medians over rounds with the min-max.
See bench/README.md for what each item measures and how.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import phases
from bench.item import Item
from bench.items import ITEMS, NAMES
from bench.measure import NOISE_CORES, log
from bench.procs import cpu_model, install_cleanup, raise_fd_limit, stop_all
from bench.report import Row, median, table
from bench.results import Results, load
from bench.settings import BENCH, REPO, Layout, Settings, from_args, parser
from bench.workers import compile_sources, make_models


def rows(lay: Layout, res: Results, items: Sequence[Item] = ITEMS) -> list[Row]:
    return [r for item in items for r in item.rows(lay, res)]


def notes(lay: Layout, res: Results, items: Sequence[Item] = ITEMS) -> str:
    out = [
        f"- {kind}: every request failed, so it was not measured: {why}"
        for kind, why in res.info.get("broken", {}).items()
    ]
    for item in items:
        out += item.notes(lay, res)
    return "\n".join(out)


def render(lay: Layout, res: Results) -> str:
    """The table and its notes (the printed report without the environment footer)."""
    return "\n\n".join(part for part in (table(rows(lay, res)), notes(lay, res)) if part)


def render_file(path: Path) -> str:
    res, _ = load(path)
    return render(Layout.from_results(res.values, res.info), res)


def measure(s: Settings, res: Results, items: Sequence[Item]) -> None:
    """The shared phases first (one session for all their items), then each item's own."""
    if any(i.steady_order is not None for i in items):
        phases.steady(s, res, items)
    if any(i.in_lifecycle for i in items):
        phases.lifecycle(s, res, items)
    for item in items:
        if item.runs_alone:
            item.run(s, res)


def _python_info(python: Path) -> dict[str, Any]:
    code = (
        "import json, sys, importlib.util as u\n"
        "try:\n import msgpack; m = msgpack.Packer.__module__\n"
        "except Exception: m = None\n"
        "print(json.dumps({'version': sys.version.split()[0], 'msgpack': m,\n"
        " 'uvloop': bool(u.find_spec('uvloop')), 'blake3': bool(u.find_spec('blake3'))}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    info: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {}
    return info


def _revision() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "dynamo_lite", "examples", "bench")
    return head + (" with uncommitted changes" if dirty else "")


def environment(s: Settings, res: Results) -> str:
    lite = _python_info(s.lite_python)
    stock = _python_info(s.stock_python)
    lg = res.info.get("loadgen", {})
    lines = [
        f"- dynamo_lite revision: {_revision()}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}",
        f"- dynamo_lite worker: Python {lite.get('version')}, uvloop "
        f"{'installed' if lite.get('uvloop') else 'not installed'}, msgpack "
        f"{'C extension' if '_cmsgpack' in str(lite.get('msgpack')) else 'pure Python'}, "
        f"blake3 package {'installed' if lite.get('blake3') else 'not installed'}",
        f"- stock worker and frontend: ai-dynamo 1.6.1, Python {stock.get('version')} "
        f"(the stock runtime always runs on uvloop)",
        f"- dynamo_lite engine: {_shown(s.lite_engine)}",
        f"- load generator: bench/loadgen.py, Python {lg.get('python', '?')}, loop "
        f"{lg.get('loop', '?')}",
        f"- rounds: {s.rounds} (P1-P3), {s.lifecycle_rounds} (P4/P5 and P6 idle), "
        f"{s.p6_rounds} (P6 streams), {s.p8_rounds} (P8); window {s.duration:g} s after "
        f"{s.warmup:g} s warm-up" + (" — quick mode" if s.quick else ""),
    ]
    if res.loadgen_cores:
        lines.append(
            f"- load generator CPU in the P1/P3 windows: median {median(res.loadgen_cores):.2f}, "
            f"max {max(res.loadgen_cores):.2f} cores"
        )
    if res.foreign:
        repeat = f" (a window above {NOISE_CORES} cores is run once more)" if s.attempts > 1 else ""
        lines.append(
            f"- CPU used by processes outside the benchmark in the P1-P3 windows{repeat}: "
            f"median {median(res.foreign):.2f}, max {max(res.foreign):.2f} cores"
        )
    return "\n".join(lines)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, NAMES)
    a = p.parse_args(argv)
    if a.render:
        print(render_file(Path(a.render)))
        return 0
    s = from_args(a, p, NAMES)
    items = [i for i in ITEMS if i.name in s.items]
    install_cleanup()
    raise_fd_limit()
    res = Results()
    res.info["layout"] = s.layout().to_json()
    started = time.monotonic()
    log(
        f"workdir {s.workdir}; items {sorted(s.items)}; kinds "
        f"{[k.name for k in s.kinds + s.variants]}"
    )
    try:
        make_models(s)
        compile_sources(s)
        measure(s, res, items)
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    lay = s.layout()
    report = "\n\n".join(
        part for part in (
            table(rows(lay, res)),
            environment(s, res) + f"\n- run time: {elapsed / 60:.1f} min",
            notes(lay, res),
        ) if part
    )  # fmt: skip
    print(report)
    path = s.json_path or BENCH / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    res.save(path, report)
    if s.remove_workdir:
        shutil.rmtree(s.workdir, ignore_errors=True)
        log(f"raw results: {path}")
    else:
        log(f"raw results: {path}; logs: {s.workdir / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
