#!/usr/bin/env python3
"""Benchmark dynamo_lite against the stock Dynamo 1.6.1 worker; prints one markdown table.

    python bench/run.py                 # full run (~15 min on 2 cores)
    python bench/run.py --quick         # ~3 min, fewer rounds and shorter windows
    python bench/run.py --only P1,P3    # some items only
    python bench/run.py --rounds 7      # more alternating rounds

The stock worker is ``python -m dynamo.common.backend.sample_main`` from the
stock venv, the dynamo_lite worker ``examples/sample_engine.py`` (same flags,
same engine behaviour). Both run the file discovery backend on 127.0.0.1 under
the stock frontend. Every measurement alternates the workers (A B, then B A
in the next round) and the table shows medians over rounds with the min-max.
See bench/README.md for what each item measures and how.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import (
    LOOPBACK,
    Helper,
    Proc,
    cpu_model,
    free_port,
    install_cleanup,
    loopback_env,
    raise_fd_limit,
    stop_all,
)
from report import Row, median, table

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ITEMS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8")
P7_IDEAL = 5.0  # 100 tokens at 50 ms
P7_BOUND = 1.2
#: A window in which other processes used more CPU than this (cores) is repeated.
NOISE_CORES = 0.4


# --- configuration -----------------------------------------------------------------


def _find_stock_venv(explicit: str | None) -> Path:
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
    p45_trials: int
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


# --- the frontend and workers ---------------------------------------------------------


class Frontend:
    """The stock frontend on a free loopback port, watching ``kv``."""

    def __init__(self, s: Settings, kv: Path, tag: str) -> None:
        self.port = free_port()
        home = s.workdir / "home-frontend"
        home.mkdir(exist_ok=True)
        env = loopback_env(home, DYN_FILE_KV=str(kv))
        self.proc = Proc(
            [str(s.stock_python), "-m", "dynamo.frontend", "--http-host", LOOPBACK,
             "--http-port", str(self.port), "--discovery-backend", "file"],
            env, s.workdir / "logs" / f"{tag}-frontend.log", name="frontend",
        )  # fmt: skip
        self._conn: http.client.HTTPConnection | None = None
        deadline = time.monotonic() + 60
        while self.models() is None:
            if not self.proc.running or time.monotonic() > deadline:
                raise RuntimeError(f"frontend did not come up:\n{self.proc.log_tail()}")
            time.sleep(0.1)

    def models(self) -> list[str] | None:
        for _ in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
            try:
                self._conn.request("GET", "/v1/models")
                resp = self._conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    return None
                return [m["id"] for m in json.loads(body).get("data", [])]
            except (OSError, http.client.HTTPException, ValueError):
                self._conn.close()
                self._conn = None
        return None

    def wait_model(
        self,
        name: str,
        present: bool = True,
        timeout: float = 60.0,
        interval: float = 0.05,
        alive: Proc | None = None,
    ) -> float:
        """Poll /v1/models until ``name`` is (not) listed; returns when that was seen."""
        deadline = time.monotonic() + timeout
        while True:
            models = self.models() or []
            now = time.monotonic()
            if (name in models) == present:
                return now
            if now > deadline:
                raise TimeoutError(
                    f"model {name} {'not listed' if present else 'still listed'}"
                    f" after {timeout:.0f}s"
                )
            if alive is not None and not alive.running:
                raise RuntimeError(f"{alive.name} exited:\n{alive.log_tail()}")
            time.sleep(interval)

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.proc.stop()


def model_dir(s: Settings, kind: Kind) -> Path:
    return s.workdir / "models" / kind.component


def start_worker(
    s: Settings, kind: Kind, kv: Path, tag: str, *, delay: float, max_tokens: int = 16
) -> Proc:
    model = model_dir(s, kind)
    flags = [
        "--model-name", str(model), "--namespace", "dynamo", "--component", kind.component,
        "--discovery-backend", "file", "--delay", str(delay), "--max-tokens", str(max_tokens),
    ]  # fmt: skip
    if not kind.kv_routing:
        # The stock worker would otherwise publish KV events; dynamo_lite takes
        # the flag too, so both run the same command line.
        flags.append("--disable-kv-routing")
    if kind.stock:
        argv = [str(kind.python), "-m", "dynamo.common.backend.sample_main", *flags]
        extra: dict[str, str | None] = {}
    else:
        argv = [str(kind.python), str(kind.script or s.lite_engine), *flags]
        extra = {"PYTHONPATH": str(REPO)}
    extra.update(dict(kind.env))
    if "PYTHONPATH+" in extra:
        extra["PYTHONPATH"] = f"{extra.pop('PYTHONPATH+')}{os.pathsep}{extra.get('PYTHONPATH')}"
    home = s.workdir / f"home-{kind.component}"
    home.mkdir(exist_ok=True)
    env = loopback_env(
        home, DYN_FILE_KV=str(kv), DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0", **extra
    )
    return Proc(argv, env, s.workdir / "logs" / f"{tag}-{kind.name}.log", name=kind.name)


def start_loadgen(s: Settings) -> Helper:
    env = loopback_env(s.workdir)
    return Helper(
        [str(s.loadgen_python), str(BENCH / "loadgen.py")],
        env,
        s.workdir / "logs" / "loadgen.log",
        name="loadgen",
    )


def start_direct(s: Settings, client: str, kv: Path) -> Helper:
    python = s.stock_python if client == "stock" else s.lite_python
    home = s.workdir / f"home-client-{client}"
    home.mkdir(exist_ok=True)
    extra = {"DYN_FILE_KV": str(kv)}
    if client == "lite":
        extra["PYTHONPATH"] = str(REPO)
    env = loopback_env(home, **extra)
    return Helper(
        [str(python), str(BENCH / "direct.py"), "--client", client, "--kv", str(kv)],
        env,
        s.workdir / "logs" / f"direct-{client}.log",
        name=f"{client}-client",
    )


def alternate(kinds: list[Kind], round_no: int) -> list[Kind]:
    """A B … in even rounds, … B A in odd ones, so neither side always goes first."""
    return list(kinds) if round_no % 2 == 0 else list(reversed(kinds))


# --- results ----------------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.info: dict[str, Any] = {}
        self.foreign: list[float] = []
        self.loadgen_cores: list[float] = []

    def add(self, metric: str, kind: str, value: float) -> None:
        self.values[metric][kind].append(value)

    def get(self, metric: str, kind: str) -> list[float]:
        return list(self.values.get(metric, {}).get(kind, []))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def session(
    s: Settings,
    kinds: list[Kind],
    tag: str,
    *,
    delay: float,
    frontend: bool = True,
    max_tokens: int = 16,
) -> Iterator[tuple[Frontend | None, dict[str, Proc], Path]]:
    """A fresh discovery root, optionally a frontend, and one worker per kind, all listed."""
    kv = Path(tempfile.mkdtemp(prefix=f"kv-{tag}-", dir=s.workdir))
    fe = Frontend(s, kv, tag) if frontend else None
    workers: dict[str, Proc] = {}
    try:
        for kind in kinds:
            workers[kind.name] = start_worker(s, kind, kv, tag, delay=delay, max_tokens=max_tokens)
        if fe is not None:
            for kind in kinds:
                fe.wait_model(str(model_dir(s, kind)), alive=workers[kind.name])
        yield fe, workers, kv
    finally:
        for proc in workers.values():
            proc.stop()
        if fe is not None:
            fe.stop()


def _pids(workers: dict[str, Proc], fe: Frontend | None) -> dict[str, int]:
    pids = {name: p.pid for name, p in workers.items()}
    if fe is not None:
        pids["frontend"] = fe.proc.pid
    return pids


def _broken(res: Results, kind: Kind, out: dict[str, Any], proc: Proc) -> bool:
    """A flavour whose every request fails is reported once and left out of the rest."""
    if out["errors"] == 0 or out["total_requests"] > out["errors"]:
        return False
    trace = [ln for ln in proc.log_tail(400).splitlines() if "Error" in ln or "assert" in ln]
    why = f"{out['error_samples'][:1]}; worker log: {trace[-1].strip() if trace else '-'}"
    res.info.setdefault("broken", {})[kind.name] = why
    log(f"  {kind.name} is broken, skipped: {why}")
    return True


def foreign_cores(out: dict[str, Any]) -> float:
    """CPU (in cores) that processes outside the benchmark used during a window."""
    cpu: dict[str, float] = out["cpu"]
    ours = sum(v for k, v in cpu.items() if k != "machine" and not math.isnan(v))
    return max(0.0, cpu["machine"] - ours) / float(out["elapsed"])


def measured(call: Callable[[], dict[str, Any]], what: str, attempts: int) -> dict[str, Any]:
    """Run ``call``; with ``attempts`` 2, run it once more if other processes took more
    than NOISE_CORES of the 2 cores, and keep the quieter window."""
    best: dict[str, Any] | None = None
    for attempt in range(attempts):
        out = call()
        out["foreign"] = foreign_cores(out)
        if best is None or out["foreign"] < best["foreign"]:
            best = out
        if out["foreign"] <= NOISE_CORES or attempt + 1 == attempts:
            break
        log(f"  {what}: other processes used {out['foreign']:.2f} cores, "
            f"{'repeating' if attempt < 1 else 'keeping the quieter window'}")  # fmt: skip
        time.sleep(1.0)
    assert best is not None
    return best


def _note_machine(res: Results, out: dict[str, Any]) -> None:
    res.foreign.append(out["foreign"])
    if "loadgen" in out["cpu"]:
        res.loadgen_cores.append(out["cpu"]["loadgen"] / out["elapsed"])


# --- P1, P2, P3: one session with every worker up, each driven in turn ----------------------


def steady(s: Settings, res: Results) -> None:
    kinds = s.kinds + s.variants
    with session(s, kinds, "steady", delay=0.0) as (fe, workers, kv):
        assert fe is not None
        lg = start_loadgen(s)
        res.info["loadgen"] = lg.ready
        directs = {}
        if "P2" in s.items:
            directs = {c: start_direct(s, c, kv) for c in ("stock", "lite")}
        pids = _pids(workers, fe)

        def closed(kind: Kind, c: int, n: int, duration: float, warmup: float) -> dict[str, Any]:
            out = measured(
                lambda: lg.call(
                    op="closed",
                    host=LOOPBACK,
                    port=fe.port,
                    model=str(model_dir(s, kind)),
                    concurrency=c,
                    tokens=n,
                    warmup=warmup,
                    duration=duration,
                    pids=pids,
                ),
                f"{kind.name} c={c} n={n}",
                s.attempts,
            )
            if out["errors"]:
                log(f"  {kind.name} c={c} n={n}: {out['errors']} errors {out['error_samples']}")
            _note_machine(res, out)
            return out

        for kind in list(kinds):  # warm the frontend's per-model pipeline and the workers
            out = closed(kind, 8, 16, 1.0, 0.3)
            if _broken(res, kind, out, workers[kind.name]):
                kinds.remove(kind)
        for rnd in range(s.rounds):
            log(f"steady round {rnd + 1}/{s.rounds}")
            if "P1" in s.items:
                for c in s.concurrencies:
                    for n in s.token_counts:
                        base = [k for k in kinds if k in s.kinds]
                        for kind in alternate(kinds if c == 32 else base, rnd):
                            out = closed(kind, c, n, s.duration, s.warmup)
                            tok = out["tokens_in_window"]
                            res.add(f"p1:{c}:{n}:tok_s", kind.name, out["tokens_per_s"])
                            res.add(f"p1:{c}:{n}:errors", kind.name, out["errors"])
                            cpu = out["cpu"]
                            res.add(
                                f"p1:{c}:{n}:worker_us",
                                kind.name,
                                cpu[kind.name] / tok * 1e6 if tok else math.nan,
                            )
                            res.add(
                                f"p1:{c}:{n}:frontend_us",
                                kind.name,
                                cpu["frontend"] / tok * 1e6 if tok else math.nan,
                            )
            if "P3" in s.items:
                for kind in alternate(kinds, rnd):
                    out = closed(kind, 1, 1, s.p3_duration, 0.5)
                    res.add("p3:p50", kind.name, out["latency_p50"])
                    res.add("p3:p99", kind.name, out["latency_p99"])
            if "P2" in s.items:
                for client, helper in directs.items():
                    for kind in alternate(kinds, rnd):
                        out = measured(
                            lambda helper=helper, kind=kind: helper.call(  # type: ignore[misc]
                                op="closed",
                                component=kind.component,
                                concurrency=s.p2_concurrency,
                                tokens=s.p2_tokens,
                                warmup=s.warmup,
                                duration=s.duration,
                                pids=pids,
                            ),
                            f"P2 {client}→{kind.name}",
                            s.attempts,
                        )
                        _note_machine(res, out)
                        tok = out["tokens_in_window"]
                        if out["errors"]:
                            log(
                                f"  P2 {client}→{kind.name}: {out['errors']} errors "
                                f"{out['error_samples']}"
                            )
                        res.add(
                            f"p2:{client}:worker_us",
                            kind.name,
                            out["cpu"][kind.name] / tok * 1e6 if tok else math.nan,
                        )
                        res.add(f"p2:{client}:tok_s", kind.name, out["tokens_per_s"])
                        res.add(
                            f"p2:{client}:client_us",
                            kind.name,
                            out["cpu"]["client"] / tok * 1e6 if tok else math.nan,
                        )
        for helper in (lg, *directs.values()):
            helper.stop()


# --- P4, P5: start → listed, SIGTERM → exit ------------------------------------------------


def start_stop(s: Settings, res: Results) -> None:
    kv = Path(tempfile.mkdtemp(prefix="kv-startstop-", dir=s.workdir))
    fe = Frontend(s, kv, "startstop")
    try:
        for trial in range(s.p45_trials):
            log(f"start/stop trial {trial + 1}/{s.p45_trials}")
            for kind in alternate(s.kinds, trial):
                name = str(model_dir(s, kind))
                proc = start_worker(s, kind, kv, "startstop", delay=0.0)
                try:
                    listed = fe.wait_model(name, interval=0.005, alive=proc)
                    res.add("p4:listed", kind.name, listed - proc.started_at)
                    time.sleep(0.5)  # idle, as after any start
                    t0 = time.monotonic()
                    proc.signal(signal.SIGTERM)
                    try:
                        code = proc.popen.wait(30)
                        res.add("p5:exit", kind.name, time.monotonic() - t0)
                        res.add("p5:code", kind.name, code)
                    except subprocess.TimeoutExpired:
                        res.add("p5:exit", kind.name, math.nan)
                finally:
                    proc.stop()
                # The next start must be seen as new: wait for the record to go.
                with contextlib.suppress(TimeoutError):
                    fe.wait_model(name, present=False, timeout=20)
    finally:
        fe.stop()


# --- P6: RSS idle and with open streams ---------------------------------------------------


def memory(s: Settings, res: Results) -> None:
    for rnd in range(s.p6_rounds):
        log(f"memory round {rnd + 1}/{s.p6_rounds}")
        for kind in alternate(s.kinds, rnd):
            # A long engine delay keeps 1,000 streams open without flooding the client.
            with session(s, [kind], "memory", delay=0.25, frontend=False) as (_, workers, kv):
                proc = workers[kind.name]
                client = start_direct(s, "lite", kv)
                try:
                    client.call(op="connect", component=kind.component)
                    time.sleep(1.0)
                    res.add("p6:idle", kind.name, proc.rss())
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


# --- P7: concurrent 5 s streams -----------------------------------------------------------


def capacity(s: Settings, res: Results) -> None:
    kinds = s.kinds + s.variants
    with session(s, kinds, "capacity", delay=0.05, max_tokens=100) as (fe, workers, _):
        assert fe is not None
        lg = start_loadgen(s)
        res.info["loadgen"] = lg.ready
        pids = _pids(workers, fe)
        for kind in list(kinds):
            out = lg.call(op="closed", host=LOOPBACK, port=fe.port,
                          model=str(model_dir(s, kind)), concurrency=4, tokens=2, warmup=0.0,
                          duration=0.3)  # fmt: skip
            if _broken(res, kind, out, workers[kind.name]):
                kinds.remove(kind)
        passed: dict[str, int] = {k.name: 0 for k in kinds}
        failed: dict[str, int] = {}

        def trial(kind: Kind, level: int) -> bool:
            out = lg.call(
                timeout=300,
                op="burst",
                host=LOOPBACK,
                port=fe.port,
                model=str(model_dir(s, kind)),
                concurrency=level,
                tokens=100,
                ramp=1.0,
                stream_timeout=3 * P7_IDEAL,
                pids=pids,
            )
            ok = bool(out["errors"] == 0 and out["median"] <= P7_BOUND * P7_IDEAL)
            cores = {k: round(v / out["elapsed"], 2) for k, v in out["cpu"].items()}
            log(
                f"  P7 {kind.name} {level} streams: {'pass' if ok else 'FAIL'} "
                f"median {out['median']:.2f}s p99 {out['p99']:.2f}s errors {out['errors']} "
                f"cores {cores}"
            )
            res.info.setdefault("p7_trials", []).append(
                {
                    "kind": kind.name,
                    "level": level,
                    **{k: out[k] for k in ("ok", "errors", "median", "p99", "max")},
                    "cores": cores,
                }
            )
            if ok:
                passed[kind.name] = max(passed[kind.name], level)
                res.add(f"p7:median@{level}", kind.name, out["median"])
            else:
                failed[kind.name] = min(failed.get(kind.name, level), level)
            time.sleep(1.0)  # let the sockets of the last burst close
            return ok

        for i, level in enumerate(s.p7_levels):
            live = [k for k in alternate(kinds, i) if k.name not in failed]
            if not live:
                break
            log(f"P7 level {level}")
            for kind in live:
                trial(kind, level)
        if s.p7_refine:
            for i, kind in enumerate(alternate(kinds, 1)):
                lo, hi = passed[kind.name], failed.get(kind.name)
                if hi is not None and hi - lo > 100:
                    mid = (lo + hi) // 2 // 50 * 50
                    log(f"P7 refine {kind.name} at {mid} ({i})")
                    trial(kind, mid)
        for kind in kinds:
            res.add("p7:max", kind.name, passed[kind.name])
        lg.stop()


# --- P8: card checksums of a large tokenizer.json ------------------------------------------------


def big_model(s: Settings) -> Path:
    """The tiny model with a tokenizer.json of ≥ ``p8_mib`` MiB (a big BPE vocabulary)."""
    root = s.workdir / "models" / "big"
    shutil.copytree(s.workdir / "models" / "lite", root, dirs_exist_ok=True)
    base = (root / "tokenizer.json").read_text()
    target = s.p8_mib << 20
    count = target // 64
    while True:
        tok = json.loads(base)
        vocab: dict[str, int] = tok["model"]["vocab"]
        for i in range(count):
            vocab[f"Ġtok{i:07d}xyz"] = len(vocab)
            tok["model"]["merges"].append([f"Ġtok{i:07d}", "xyz"])
        text = json.dumps(tok, indent=1, ensure_ascii=False)
        if len(text.encode()) >= target:
            break
        count = count * 11 // 10
    (root / "tokenizer.json").write_text(text)
    _age(root)
    return root


def _age(root: Path) -> None:
    """Backdate the files: models are not written right before a worker starts, and the
    checksum cache skips files modified in the last two seconds."""
    old = time.time() - 3600
    for f in root.iterdir():
        os.utime(f, (old, old))


def checksums(s: Settings, res: Results) -> None:
    root = big_model(s)
    res.info["p8_tokenizer_bytes"] = (root / "tokenizer.json").stat().st_size
    base = loopback_env(s.workdir / "home-p8", PYTHONPATH=str(REPO))
    (s.workdir / "home-p8").mkdir(exist_ok=True)

    def probe(env: dict[str, str], repeat: int = 1) -> dict[str, Any]:
        out = subprocess.run(
            [str(s.lite_python), str(BENCH / "checksum_probe.py"), str(root), "--repeat",
             str(repeat)], env={**base, **env}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"checksum probe failed:\n{out.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    cache = s.workdir / "p8-cache"
    warm_env = {"XDG_CACHE_HOME": str(cache), "DYN_LITE_PURE_BLAKE3": "1"}
    probe(warm_env)  # fills the disk cache
    for rnd in range(s.p8_rounds):
        log(f"checksum round {rnd + 1}/{s.p8_rounds}")
        pure = probe({"DYN_LITE_PURE_BLAKE3": "1", "DYN_LITE_CHECKSUM_CACHE": "0"})
        assert pure["implementation"] == "pure-python"
        res.add("p8:pure", "lite", pure["seconds"][0])
        native = probe({"DYN_LITE_CHECKSUM_CACHE": "0"})
        if native["implementation"] == "blake3":
            res.add("p8:native", "lite", native["seconds"][0])
            if native["tokenizer"] != pure["tokenizer"]:
                raise RuntimeError("pure-Python and blake3 checksums differ")
        warm = probe(warm_env, repeat=2)
        res.add("p8:warm_disk", "lite", warm["seconds"][0])
        res.add("p8:warm_memory", "lite", warm["seconds"][1])


# --- the table -----------------------------------------------------------------------------


def rows(s: Settings, res: Results) -> list[Row]:
    out: list[Row] = []
    st, lt = "stock", "lite"

    def row(
        item: str,
        metric: str,
        key: str,
        unit: str,
        target: str = "",
        check: Callable[[float, float], bool] | None = None,
        lite_kind: str = lt,
        note: str = "",
        per_request: int = 0,
    ) -> None:
        stock_vals, lite_vals = res.get(key, st), res.get(key, lite_kind)
        if not lite_vals and lite_kind != lt:
            return  # a variant that was not measured (see the notes)
        if not stock_vals and not lite_vals:
            return
        out.append(Row(item, metric, unit, stock_vals, lite_vals, target, check, note, per_request))

    ratio_at_least = {1.2: lambda a, b: b >= 1.2 * a, 1.5: lambda a, b: b >= 1.5 * a}
    for c in s.concurrencies:
        for n in s.token_counts:
            tgt = "≥ 1.2x stock" if c == 32 else ""
            row(
                "P1",
                f"stream c={c}, {n} tok",
                f"p1:{c}:{n}:tok_s",
                "k",
                tgt,
                ratio_at_least[1.2] if c == 32 else None,
                per_request=n,
            )
    for n in s.token_counts:
        row("P1", f"worker CPU/token c=32, {n} tok", f"p1:32:{n}:worker_us", "us")
    for v in s.variants:
        for n in s.token_counts:
            row(
                "P1",
                f"stream c=32, {n} tok",
                f"p1:32:{n}:tok_s",
                "k",
                "≥ 1.2x stock",
                ratio_at_least[1.2],
                lite_kind=v.name,
                note=v.name,
                per_request=n,
            )
    for client in ("stock", "lite"):
        kinds = [lt] + [v.name for v in s.variants]
        for k in kinds:
            row(
                "P2",
                f"worker CPU/token, {client} client",
                f"p2:{client}:worker_us",
                "us",
                "≤ 0.8x stock",
                lambda a, b: b <= 0.8 * a,
                lite_kind=k,
                note=k if k != lt else "",
            )
    for k in [lt] + [v.name for v in s.variants]:
        note = k if k != lt else ""
        row(
            "P3",
            "latency p50, max_tokens=1, c=1",
            "p3:p50",
            "ms",
            "≤ stock",
            lambda a, b: b <= a,
            lite_kind=k,
            note=note,
        )
        row(
            "P3",
            "latency p99, max_tokens=1, c=1",
            "p3:p99",
            "ms",
            "≤ stock",
            lambda a, b: b <= a,
            lite_kind=k,
            note=note,
        )
    row(
        "P4",
        "process start → listed in /v1/models",
        "p4:listed",
        "s",
        "≤ 0.25 s",
        lambda a, b: b <= 0.25,
    )
    row("P5", "SIGTERM → exit, grace 0", "p5:exit", "s", "≤ 0.15 s", lambda a, b: b <= 0.15)
    row("P6", "RSS idle", "p6:idle", "MiB", "≤ 0.5x stock", lambda a, b: b <= 0.5 * a)
    row(
        "P6",
        f"RSS with {s.p6_streams} open streams",
        "p6:streams",
        "MiB",
        "≤ 0.5x stock",
        lambda a, b: b <= 0.5 * a,
    )
    for k in [lt] + [v.name for v in s.variants]:
        row(
            "P7",
            "concurrent 5 s streams held",
            "p7:max",
            "int",
            "≥ 1.5x stock",
            ratio_at_least[1.5],
            lite_kind=k,
            note=k if k != lt else "",
        )
    mib = res.info.get("p8_tokenizer_bytes", 0) / (1 << 20)
    row(
        "P8",
        f"checksum {mib:.0f} MiB tokenizer, pure Python, cold",
        "p8:pure",
        "s",
        "≤ 2 s",
        lambda a, b: b <= 2.0,
    )
    row("P8", "checksum, blake3 package, cold", "p8:native", "ms")
    row(
        "P8",
        "checksum, warm disk cache (new process)",
        "p8:warm_disk",
        "ms",
        "≤ 10 ms",
        lambda a, b: b <= 0.010,
    )
    row(
        "P8",
        "checksum, warm memory cache",
        "p8:warm_memory",
        "ms",
        "≤ 10 ms",
        lambda a, b: b <= 0.010,
    )
    return out


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
        f"- dynamo_lite engine: {s.lite_engine.relative_to(REPO)}",
        f"- load generator: bench/loadgen.py, Python {lg.get('python', '?')}, loop "
        f"{lg.get('loop', '?')}",
        f"- rounds: {s.rounds} (P1-P3), {s.p45_trials} (P4/P5), {s.p6_rounds} (P6), "
        f"{s.p8_rounds} (P8); window {s.duration:g} s after {s.warmup:g} s warm-up"
        + (" — quick mode" if s.quick else ""),
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


def notes(s: Settings, res: Results) -> str:
    out: list[str] = []
    for kind, why in res.info.get("broken", {}).items():
        out.append(f"- {kind}: every request failed, so it was not measured: {why}")
    for kind in ["stock", "lite"] + [v.name for v in s.variants]:
        errs = sum(sum(v.get(kind, [])) for k, v in res.values.items() if k.endswith(":errors"))
        if errs:
            out.append(f"- P1 {kind}: {int(errs)} failed requests")
    for kind in ("stock", "lite"):
        codes = res.get("p5:code", kind)
        if codes and any(c != 0 for c in codes):
            out.append(f"- P5 {kind}: exit codes {sorted({int(c) for c in codes})}")
        opened = res.get("p6:open", kind)
        if opened and min(opened) < s.p6_streams:
            out.append(f"- P6 {kind}: only {int(min(opened))} streams open")
    for kind in ["stock", "lite"] + [v.name for v in s.variants]:
        best = res.get("p7:max", kind)
        if best and not best[0]:
            out.append(f"- P7 {kind}: failed at the lowest level, {s.p7_levels[0]} streams")
        if best and best[0]:
            med = res.get(f"p7:median@{int(best[0])}", kind)
            if med:
                out.append(
                    f"- P7 {kind}: {int(best[0])} streams, median stream "
                    f"{median(med):.2f} s (bound {P7_BOUND * P7_IDEAL:.1f} s)"
                )
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------------


def settings(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~3 minutes: fewer rounds, short windows")
    p.add_argument("--only", default=",".join(ITEMS), help="items to run, e.g. P1,P3")
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
        help="extra dynamo_lite flavours for P1 (c=32), P2, P3, P7: 'pure' (no C "
        "msgpack, no uvloop), 'uvloop' (uvloop borrowed from the stock venv), 'kv' (KV "
        "events published for every request), or 'none'",
    )
    p.add_argument(
        "--baseline",
        help="also run dynamo_lite as of this git revision (flavour 'lite-base', same "
        "engine script), so that before/after figures come from one alternating run",
    )
    p.add_argument("--workdir", help="keep models, logs and discovery files here")
    p.add_argument("--json", help="write the raw results here (default bench/results/)")
    a = p.parse_args(argv)
    stock_venv = _find_stock_venv(a.stock_venv)
    quick = a.quick
    items = {x.strip().upper() for x in a.only.split(",") if x.strip()}
    unknown = items - set(ITEMS)
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
        p45_trials=2 if quick else 5,
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


def make_models(s: Settings) -> None:
    """One tiny model directory per worker flavour: each is served under its own name."""
    for kind in s.kinds + s.variants:
        root = model_dir(s, kind)
        if not (root / "tokenizer.json").exists():
            subprocess.run(
                [str(s.lite_python), "-m", "dynamo_lite", "tiny-model", str(root)],
                check=True,
                capture_output=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        _age(root)


def main(argv: list[str] | None = None) -> int:
    s = settings(argv)
    install_cleanup()
    raise_fd_limit()
    res = Results()
    started = time.monotonic()
    log(
        f"workdir {s.workdir}; items {sorted(s.items)}; kinds "
        f"{[k.name for k in s.kinds + s.variants]}"
    )
    try:
        make_models(s)
        if s.items & {"P1", "P2", "P3"}:
            steady(s, res)
        if s.items & {"P4", "P5"}:
            start_stop(s, res)
        if "P6" in s.items:
            memory(s, res)
        if "P7" in s.items:
            capacity(s, res)
        if "P8" in s.items:
            checksums(s, res)
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    report = "\n\n".join(
        part for part in (
            table(rows(s, res)),
            environment(s, res) + f"\n- run time: {elapsed / 60:.1f} min",
            notes(s, res),
        ) if part
    )  # fmt: skip
    print(report)
    path = s.json_path or BENCH / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"values": res.values, "info": res.info, "report": report}, indent=1, default=str
        )
    )
    if s.remove_workdir:
        shutil.rmtree(s.workdir, ignore_errors=True)
        log(f"raw results: {path}")
    else:
        log(f"raw results: {path}; logs: {s.workdir / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
