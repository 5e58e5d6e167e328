#!/usr/bin/env python3
"""Where the dynamo_lite worker spends its time: a cProfile under P1 load, and imports.

    python bench/hotspots.py                       # c=32, 64 tokens, 5 s, both reports
    python bench/hotspots.py --concurrency 128 --tokens 16 --top 30
    python bench/hotspots.py --imports-only

1. The worker (examples/sample_engine.py, as in run.py) runs under ``python -m
   cProfile`` behind the stock frontend; the load generator streams at the
   given concurrency; then the worker gets SIGTERM and the profile is printed
   sorted by own time, with each function's cost per streamed token. cProfile
   roughly doubles the cost of small Python functions, so read the shares,
   not the absolute numbers.
2. ``-X importtime`` of the worker's imports (what P4 and the idle RSS of P6
   pay for), with the RSS after importing.
"""

from __future__ import annotations

import argparse
import io
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the ``bench`` package importable from the checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import settings as bench
from bench.items import NAMES
from bench.procs import (
    LOOPBACK,
    Proc,
    install_cleanup,
    loopback_env,
    raise_fd_limit,
    stop_all,
)
from bench.workers import make_models, model_dir, session, start_loadgen


def profile(
    s: bench.Settings, concurrency: int, tokens: int, seconds: float, top: int, kv: bool = False
) -> None:
    kind = s.kinds[1]
    prof = s.workdir / "worker.prof"
    with session(s, [s.kinds[0]], "hotspots", delay=0.0) as (fe, _, root):
        assert fe is not None
        # The profiled worker joins the session's discovery root and frontend.
        argv = [
            str(kind.python), "-m", "cProfile", "-o", str(prof), str(s.lite_engine),
            "--model-name", str(model_dir(s, kind)), "--namespace", "dynamo",
            "--component", kind.component, "--discovery-backend", "file", "--delay", "0",
            *([] if kv else ["--disable-kv-routing"]),
        ]  # fmt: skip
        home = s.workdir / "home-lite"
        home.mkdir(exist_ok=True)
        env = loopback_env(
            home,
            DYN_FILE_KV=str(root),
            DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0",
            PYTHONPATH=str(bench.REPO),
        )
        worker = Proc(argv, env, s.workdir / "logs" / "hotspots-profiled.log", name="lite")
        fe.wait_model(str(model_dir(s, kind)), alive=worker)
        lg = start_loadgen(s)
        model = str(model_dir(s, kind))
        out = lg.call(op="closed", host=LOOPBACK, port=fe.port, model=model,
                      concurrency=concurrency, tokens=tokens, warmup=0.5, duration=seconds,
                      pids={"worker": worker.pid})  # fmt: skip
        lg.stop()
        worker.signal(signal.SIGTERM)
        worker.popen.wait(30)
        worker.stop()
    # The profile covers the warm-up too: the window's rate times the whole run.
    total_tokens = out["tokens_per_s"] * (seconds + 0.5)
    print(f"## cProfile of the dynamo_lite worker, c={concurrency}, {tokens} tokens/request\n")
    print(f"window: {out['tokens_per_s']:.0f} tokens/s (under cProfile), worker CPU "
          f"{out['cpu']['worker'] / out['tokens_in_window'] * 1e6:.1f} µs/token\n")  # fmt: skip
    stats = pstats.Stats(str(prof))
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    print("```")
    print(_trim(buf.getvalue()))
    print("```")
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    print(f"\nprofiled own time {total:.2f} s over ≈{total_tokens:.0f} tokens; per token:\n")
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    print("| function | calls/token | own µs/token | share |")
    print("| --- | --- | --- | --- |")
    for (file, line, func), (_cc, nc, tt, _ct, _callers) in rows:
        where = f"{Path(file).name}:{line} {func}" if line else func
        print(f"| `{where}` | {nc / total_tokens:.2f} | {tt / total_tokens * 1e6:.2f} | "
              f"{tt / total:.0%} |")  # fmt: skip


def _trim(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(re.sub(r"/\S*/site-packages/", "", ln) for ln in lines[-60:])


def imports(s: bench.Settings, top: int) -> None:
    code = (
        "import sys, re; sys.path.insert(0, sys.argv[1]); import sample_engine\n"
        "rss = int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "print('RSS_KIB', rss)"
    )
    env = loopback_env(s.workdir, PYTHONPATH=str(bench.REPO))
    res = subprocess.run(
        [str(s.lite_python), "-X", "importtime", "-c", code, str(bench.REPO / "examples")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    entries: list[tuple[int, int, str]] = []
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            entries.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    rss = re.search(r"RSS_KIB (\d+)", res.stdout)
    bare = subprocess.run(
        [str(s.lite_python), "-c", "import re; print(re.search(r'VmRSS:\\s+(\\d+)', "
         "open('/proc/self/status').read()).group(1))"],
        capture_output=True, text=True,
    )  # fmt: skip
    total = max((e[0] for e in entries), default=0)
    print("\n## Imports of the dynamo_lite worker (-X importtime)\n")
    print(f"total {total / 1000:.0f} ms; RSS after imports "
          f"{int(rss.group(1)) / 1024 if rss else float('nan'):.1f} MiB "
          f"(bare interpreter {int(bare.stdout or 0) / 1024:.1f} MiB)\n")  # fmt: skip
    print("| cumulative ms | module (dynamo_lite's and top-level packages) |")
    print("| --- | --- |")
    picked = [e for e in entries if e[2].startswith("dynamo_lite") or "." not in e[2]]
    for cumulative, _depth, name in sorted(picked, reverse=True)[:top]:
        print(f"| {cumulative / 1000:.1f} | {name} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--imports-only", action="store_true")
    p.add_argument("--kv", action="store_true", help="KV routing on (events for every request)")
    p.add_argument("--stock-venv")
    a = p.parse_args()
    argv = ["--variants", "none",
            "--workdir", tempfile.mkdtemp(prefix="dynlite-hotspots-")]  # fmt: skip
    if a.stock_venv:
        argv += ["--stock-venv", a.stock_venv]
    parser = bench.parser(None, NAMES)
    s = bench.from_args(parser.parse_args(argv), parser, NAMES)
    install_cleanup()
    raise_fd_limit()
    try:
        make_models(s)
        if not a.imports_only:
            profile(s, a.concurrency, a.tokens, a.seconds, a.top, kv=a.kv)
        imports(s, a.top)
    finally:
        stop_all()
        shutil.rmtree(s.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
