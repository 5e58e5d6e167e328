"""Settings of one benchmark run: the command line, the worker flavours, the run's layout.

:func:`parse` turns the command line into :class:`Settings` (full or ``--quick``
sizes, the stock venv, the flavours to compare). :class:`Layout` is the part of the
settings the table needs; it is stored with the results so that a results file
renders on its own (``--render``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import log

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

#: The variants in the order they are added (the table lists them so).
VARIANT_ORDER = (
    "lite-pure",
    "lite-kv",
    "lite-uvloop",
    "lite-asyncio",
    "lite-base",
    "lite-base-engine",
)


def find_stock_venv(explicit: str | None) -> Path:
    candidates = [
        explicit,
        os.environ.get("DYN_LITE_STOCK_VENV"),
        str(REPO / ".stock-venv"),
        "/tmp/stockvenv",
    ]
    for cand in candidates:
        if cand and (Path(cand) / "bin" / "python").exists():
            return Path(cand)
    sys.exit(
        "no stock venv found: pass --stock-venv or set DYN_LITE_STOCK_VENV "
        "(scripts/install_stock.sh creates .stock-venv)"
    )


@dataclass(frozen=True)
class Kind:
    """One worker flavour: the stock worker, dynamo_lite, or a dynamo_lite variant."""

    name: str
    component: str
    python: Path
    stock: bool = False
    env: tuple[tuple[str, str], ...] = ()
    #: The engine script, when not the repository's sample engine (a baseline's own).
    script: Path | None = None
    #: Publish KV events (the sample engine's synthetic blocks) instead of --disable-kv-routing.
    kv_routing: bool = False


@dataclass(frozen=True)
class Layout:
    """What the table and its notes need to know of a run besides the measured values."""

    concurrencies: tuple[int, ...] = (1, 8, 32, 128)
    token_counts: tuple[int, ...] = (16, 64, 256)
    variants: tuple[str, ...] = ()
    p6_streams: int = 1000
    p7_lowest: int = 500

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrencies": list(self.concurrencies),
            "token_counts": list(self.token_counts),
            "variants": list(self.variants),
            "p6_streams": self.p6_streams,
            "p7_lowest": self.p7_lowest,
        }

    @classmethod
    def from_results(cls, values: dict[str, Any], info: dict[str, Any]) -> Layout:
        """The stored layout, or for a file written before it was stored, the defaults
        with the variants found among the measured flavours."""
        stored = info.get("layout")
        if isinstance(stored, dict):
            return cls(
                concurrencies=tuple(stored["concurrencies"]),
                token_counts=tuple(stored["token_counts"]),
                variants=tuple(stored["variants"]),
                p6_streams=int(stored["p6_streams"]),
                p7_lowest=int(stored["p7_lowest"]),
            )
        seen = {kind for per in values.values() for kind in per} - {"stock", "lite"}
        known = [v for v in VARIANT_ORDER if v in seen]
        return cls(variants=(*known, *sorted(seen - set(known))))


@dataclass
class Settings:
    stock_python: Path
    lite_python: Path
    loadgen_python: Path
    workdir: Path
    items: set[str]
    rounds: int
    quick: bool
    duration: float
    warmup: float
    concurrencies: list[int]
    token_counts: list[int]
    p2_tokens: int
    p2_concurrency: int
    p3_duration: float
    #: Alternating rounds of the start → listed → idle → SIGTERM trials (P4, P5, P6 idle).
    lifecycle_rounds: int
    #: Alternating rounds of P6 with open streams.
    p6_rounds: int
    p6_streams: int
    p7_levels: list[int]
    p7_refine: bool
    p8_rounds: int
    p8_mib: int
    json_path: Path | None = None
    #: Windows per measurement: 2 repeats one that other processes disturbed.
    attempts: int = 2
    lite_engine: Path = REPO / "examples" / "sample_engine.py"
    #: Remove ``workdir`` after a successful run (it was a temporary directory).
    remove_workdir: bool = False
    kinds: list[Kind] = field(default_factory=list)
    variants: list[Kind] = field(default_factory=list)

    def layout(self) -> Layout:
        return Layout(
            concurrencies=tuple(self.concurrencies),
            token_counts=tuple(self.token_counts),
            variants=tuple(v.name for v in self.variants),
            p6_streams=self.p6_streams,
            p7_lowest=self.p7_levels[0],
        )


def parser(description: str | None, items: tuple[str, ...]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="~3 minutes: fewer rounds, short windows")
    p.add_argument("--only", default=",".join(items), help="items to run, e.g. P1,P3")
    p.add_argument("--rounds", type=int, help="alternating rounds for P1-P3 (default 4, quick 2)")
    p.add_argument("--duration", type=float, help="measured window per P1/P2 run, s")
    p.add_argument(
        "--stock-venv",
        help="stock ai-dynamo 1.6.1 venv (default: "
        "$DYN_LITE_STOCK_VENV, .stock-venv, /tmp/stockvenv)",
    )
    p.add_argument(
        "--lite-python",
        default=sys.executable,
        help="interpreter with dynamo_lite's dependencies (default: this one)",
    )
    p.add_argument(
        "--loadgen-python",
        help="interpreter for the load generator (default: the stock venv's, which has uvloop)",
    )
    p.add_argument(
        "--variants",
        default="pure,uvloop",
        help="extra dynamo_lite flavours for P1 (c=32), P2, P3, P4-P6 idle, P7: 'pure' (no C "
        "msgpack, no uvloop), 'uvloop' (uvloop borrowed from the stock venv), "
        "'asyncio' (the standard loop although uvloop is installed), 'kv' (KV "
        "events published for every request), 'base-engine' (with --baseline: today's "
        "runtime, the baseline's engine), or 'none'",
    )
    p.add_argument(
        "--baseline",
        help="also run dynamo_lite as of this git revision (flavour 'lite-base', same "
        "engine script), so that before/after figures come from one alternating run",
    )
    p.add_argument("--workdir", help="keep models, logs and discovery files here")
    p.add_argument("--json", help="write the raw results here (default bench/results/)")
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="print the table and notes of an earlier run's results file; runs nothing",
    )
    return p


def from_args(
    a: argparse.Namespace, p: argparse.ArgumentParser, known: tuple[str, ...]
) -> Settings:
    stock_venv = find_stock_venv(a.stock_venv)
    quick = a.quick
    items = {x.strip().upper() for x in a.only.split(",") if x.strip()}
    unknown = items - set(known)
    if unknown:
        p.error(f"unknown items {sorted(unknown)}")
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="dynlite-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    s = Settings(
        stock_python=stock_venv / "bin" / "python",
        lite_python=Path(a.lite_python),
        loadgen_python=Path(a.loadgen_python)
        if a.loadgen_python
        else stock_venv / "bin" / "python",
        workdir=workdir,
        items=items,
        rounds=a.rounds or (2 if quick else 4),
        quick=quick,
        duration=a.duration or (0.6 if quick else 2.0),
        warmup=0.4 if quick else 0.8,
        concurrencies=[1, 8, 32, 128],
        token_counts=[16, 64, 256],
        p2_tokens=64,
        p2_concurrency=32,
        p3_duration=1.0 if quick else 4.0,
        lifecycle_rounds=2 if quick else 5,
        p6_rounds=1 if quick else 2,
        p6_streams=1000,
        p7_levels=[500, 1000, 1500] if quick else [500, 750, 1000, 1250, 1500, 2000],
        p7_refine=not quick,
        p8_rounds=1 if quick else 3,
        p8_mib=12,
        json_path=Path(a.json) if a.json else None,
        remove_workdir=not a.workdir,
        attempts=1 if quick else 2,
    )
    s.kinds = [
        Kind("stock", "stock", s.stock_python, stock=True),
        Kind("lite", "lite", s.lite_python),
    ]
    wanted = {v.strip() for v in a.variants.split(",")} - {"none", ""}
    if "pure" in wanted:
        s.variants.append(
            Kind(
                "lite-pure",
                "litepure",
                s.lite_python,
                env=(("MSGPACK_PUREPYTHON", "1"), ("DYN_LITE_UVLOOP", "0")),
            )
        )
    if "kv" in wanted:
        # KV events for every request (synthetic blocks stored and removed), with
        # nobody subscribed: the cost of publishing, against the plain lite worker.
        s.variants.append(Kind("lite-kv", "litekv", s.lite_python, kv_routing=True))
    if "asyncio" in wanted:
        # The lite worker on the standard asyncio loop although uvloop is installed.
        s.variants.append(
            Kind("lite-asyncio", "liteasyncio", s.lite_python, env=(("DYN_LITE_UVLOOP", "0"),))
        )
    if "uvloop" in wanted:
        site = _uvloop_site(s)
        if site is not None:
            s.variants.append(
                Kind("lite-uvloop", "liteuvloop", s.lite_python, env=(("PYTHONPATH+", str(site)),))
            )
        else:
            log("uvloop variant skipped: no uvloop for the lite interpreter's Python version")
    if a.baseline:
        base = _export(s, a.baseline)
        s.variants.append(
            Kind(
                "lite-base",
                "litebase",
                s.lite_python,
                env=(("PYTHONPATH", str(base)),),
                script=base / "examples" / "sample_engine.py",
            )
        )
        if "base-engine" in wanted:
            # Today's runtime with the baseline's engine: what the runtime alone changed.
            s.variants.append(
                Kind(
                    "lite-base-engine",
                    "litebaseengine",
                    s.lite_python,
                    script=base / "examples" / "sample_engine.py",
                )
            )
    return s


def _export(s: Settings, rev: str) -> Path:
    """``dynamo_lite`` and the sample engine as of ``rev``, unpacked into the workdir."""
    target = s.workdir / f"baseline-{rev}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "dynamo_lite", "examples"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def _uvloop_site(s: Settings) -> Path | None:
    """A directory holding only uvloop, borrowed from the stock venv (same Python version)."""
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    versions = {
        subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout
        for py in (s.stock_python, s.lite_python)
    }
    if len(versions) != 1:
        return None
    found = subprocess.run(
        [str(s.stock_python), "-c", "import uvloop, os; print(os.path.dirname(uvloop.__file__))"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        return None
    site = s.workdir / "uvloop-site"
    site.mkdir(exist_ok=True)
    link = site / "uvloop"
    if not link.exists():
        link.symlink_to(found.stdout.strip())
    return site
