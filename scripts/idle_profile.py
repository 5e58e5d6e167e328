"""Startup time and idle RSS of the sample worker, dynamo_lite beside stock.

Starts each worker on the file backend (a temporary ``DYN_FILE_KV``, every
listener on loopback, ``--disable-kv-routing``) and reports, per start:

* ``start``: spawn → the worker's model record file exists in the store;
* ``rss``: VmRSS one second after that.

Workers alternate (A B, then B A) for ``--rounds`` rounds; the summary is the
median of each. Startup on a shared machine is indicative only. The
dynamo_lite sources are byte-compiled first, as a wheel install leaves them
(``bench/run.py`` does the same).

    python scripts/idle_profile.py --rounds 5 [--stock-venv .stock-venv] [--lite-only]
    python scripts/idle_profile.py --modules > modules.txt  # what a started worker imported
    python scripts/idle_profile.py --floor [--rounds 5] [--lite-only]

``--modules`` starts the dynamo_lite worker once under
``tests/engines/modules_probe.py``, which writes ``sorted(sys.modules)`` a
second after the model record appears, and prints the list.

``--floor`` prints the floor ladder: where the idle RSS of any Python worker
of this shape starts. Each rung (:data:`RUNGS`) is a small program run with
the dynamo_lite worker's interpreter and environment; it reaches its state,
prints a ready line and idles, and its VmRSS is read one second later, as for
the workers. The rungs are cumulative: (a) the bare interpreter, (b) ``import
asyncio``, (c) an anyio task group on asyncio's loop serving one TCP listener
on 127.0.0.1 (what any anyio-based worker has), (d) the same on uvloop, (e) d
plus what the sample engine imports before the runtime runs (``argparse``
with a parser that has one argument, which loads ``shutil``, ``bz2``,
``lzma``, ``gettext``; ``pathlib``; ``json``), (f) e on asyncio's loop. Then
the workers: dynamo_lite on uvloop (its step is over e), dynamo_lite with
``DYN_LITE_UVLOOP=0`` (over f) and stock. All alternate round by round; the
table gives medians in MiB, each as a fraction of stock's median, and the
budget line, 0.4 x stock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from procs import (  # noqa: E402
    LOOPBACK,
    Helper,
    Proc,
    compile_tree,
    loopback_env,
    rss_kib,
    stop_all,
)

#: Extra environment for the dynamo_lite worker (``--env NAME=VALUE``).
LITE_ENV: dict[str, str | None] = {}

#: The dynamo_lite flavours besides ``lite`` (``--floor``), by their extra environment.
LITE_VARIANTS: dict[str, dict[str, str | None]] = {"lite-asyncio": {"DYN_LITE_UVLOOP": "0"}}

#: The budget: dynamo_lite's idle RSS at most this fraction of stock's.
BUDGET = 0.4

# The floor ladder's programs. Each prints a line (the ready signal, which
# needs no import) once it is in its state and then idles: blocked on its
# stdin, or awaiting forever in the running event loop.
_READY = "print('{\"ready\": 1}', flush=True)"
_BLOCK = f"import sys\n\n{_READY}\nsys.stdin.read()\n"
_ENGINE = """import argparse
import json
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--model-name")
parser.parse_args(["--model-name", "m"])
"""
_SERVE = """import anyio


async def handle(stream):
    await stream.aclose()


async def main():
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        await anyio.sleep(0)
        READY
        await anyio.sleep_forever()


anyio.run(main, backend="asyncio", backend_options={"use_uvloop": UVLOOP})
""".replace("READY", _READY)


def _serve(uvloop: bool, engine: bool = False) -> str:
    return (_ENGINE + "\n" if engine else "") + _SERVE.replace("UVLOOP", str(uvloop))


@dataclass(frozen=True)
class Rung:
    """One step of the floor ladder: a program, or one of the workers (``program`` None)."""

    label: str
    #: The rung whose state this one extends (its step is measured over that one).
    over: str | None
    program: str | None = None


RUNGS: dict[str, Rung] = {
    "a": Rung("bare interpreter (pass)", None, "pass\n" + _BLOCK),
    "b": Rung("+ import asyncio", "a", "import asyncio\n" + _BLOCK),
    "c": Rung("+ anyio task group, TCP listener, asyncio loop", "b", _serve(False)),
    "d": Rung("c on uvloop", "c", _serve(True)),
    "e": Rung("d + the engine's argparse, pathlib, json", "d", _serve(True, engine=True)),
    "f": Rung("e on asyncio's loop", "c", _serve(False, engine=True)),
    "lite": Rung("dynamo_lite sample worker, uvloop", "e"),
    "lite-asyncio": Rung("dynamo_lite sample worker, DYN_LITE_UVLOOP=0", "f"),
    "stock": Rung("stock Dynamo 1.6.1 sample worker", None),
}


def make_model(python: str, root: Path) -> None:
    if not (root / "tokenizer.json").exists():
        subprocess.run(
            [python, "-m", "dynamo_lite", "tiny-model", str(root)],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    # Backdated as bench/run.py does: the checksum cache skips files modified
    # in the last two seconds, and models are not written right before a start.
    old = time.time() - 3600
    for f in root.iterdir():
        os.utime(f, (old, old))


def start(
    kind: str, python: str, work: Path, tag: str, wrap: list[str] | None = None
) -> tuple[Proc, Path]:
    kv = Path(tempfile.mkdtemp(prefix=f"kv-{tag}-", dir=work))
    model = work / "models" / kind
    flags = [
        "--model-name", str(model), "--namespace", "dynamo", "--component",
        kind.replace("-", ""),
        "--discovery-backend", "file", "--disable-kv-routing",
    ]  # fmt: skip
    if kind == "stock":
        argv = [python, "-m", "dynamo.common.backend.sample_main", *flags]
        env_extra: dict[str, str | None] = {}
    else:
        argv = [python, *(wrap or []), str(REPO / "examples" / "sample_engine.py"), *flags]
        env_extra = {"PYTHONPATH": str(REPO), **LITE_ENV, **LITE_VARIANTS.get(kind, {})}
    home = work / f"home-{kind}"
    home.mkdir(exist_ok=True)
    env = loopback_env(home, DYN_FILE_KV=str(kv), **env_extra)
    assert env["DYN_TCP_RPC_HOST"] == LOOPBACK
    return Proc(argv, env, work / "logs" / f"{tag}.log", name=kind), kv


def wait_record(proc: Proc, kv: Path, timeout: float = 60.0) -> float:
    mdc = kv / "v1" / "mdc"
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        try:
            if any(not p.name.startswith(".") for p in mdc.iterdir()):
                return now
        except FileNotFoundError:
            pass
        if not proc.running:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        if now > deadline:
            raise TimeoutError(f"{proc.name}: no model record:\n{proc.log_tail()}")
        time.sleep(0.002)


def measure(kind: str, python: str, work: Path, tag: str) -> tuple[float, float]:
    proc, _kv = start(kind, python, work, tag)
    try:
        seen = wait_record(proc, _kv)
        startup = seen - proc.started_at
        time.sleep(1.0)
        rss = rss_kib(proc.pid) / 1024
    finally:
        proc.stop()
    return startup, rss


def measure_program(name: str, python: str, work: Path, tag: str) -> float:
    """VmRSS (MiB) of a floor-ladder program one second after it said it is ready."""
    script = work / "floor" / f"{name}.py"
    if not script.exists():
        script.parent.mkdir(exist_ok=True)
        program = RUNGS[name].program
        assert program is not None
        script.write_text(program)
    home = work / "home-floor"
    home.mkdir(exist_ok=True)
    # The worker's environment (its PYTHONPATH too), without its discovery store.
    env = loopback_env(home, PYTHONPATH=str(REPO), **LITE_ENV)
    proc = Helper([python, str(script)], env, work / "logs" / f"{tag}.log", name=name)
    try:
        time.sleep(1.0)
        return float(rss_kib(proc.pid)) / 1024
    finally:
        proc.stop()


def floor(kinds: dict[str, str], rounds: int, work: Path) -> None:
    """The floor ladder: every rung and worker, alternating, then the table of medians."""
    names = [n for n in RUNGS if RUNGS[n].program is not None or n in kinds]
    res: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            tag = f"{name}-{rnd}"
            if RUNGS[name].program is None:
                rss = measure(name, kinds[name], work, tag)[1]
            else:
                rss = measure_program(name, kinds["lite"], work, tag)
            res[name].append(rss)
            print(f"round {rnd + 1} {name:12s} rss {rss:.1f} MiB", flush=True)
    med = {n: statistics.median(v) for n, v in res.items()}
    stock = med.get("stock")
    print(f"\nfloor ladder: median VmRSS of {rounds} round(s), 1 s idle; step: over the rung named")
    print(f"{'':13s}{'':47s}{'MiB':>6s} {'over':>5s} {'step':>6s} {'x stock':>8s}")

    def line(name: str, label: str, mib: float, over: str = "", step: str = "") -> None:
        frac = f"{mib / stock:.2f}" if stock else "-"
        print(f"{name:13s}{label:47s}{mib:6.1f} {over:>5s} {step:>6s} {frac:>8s}")

    for name in names:
        rung = RUNGS[name]
        if rung.over is None:
            line(name, rung.label, med[name])
        else:
            line(name, rung.label, med[name], rung.over, f"{med[name] - med[rung.over]:+.1f}")
    if stock:
        line("budget", f"{BUDGET} x stock", BUDGET * stock)


def modules(python: str, work: Path) -> list[str]:
    out = work / "modules.txt"
    out.unlink(missing_ok=True)
    probe = str(REPO / "tests" / "engines" / "modules_probe.py")
    proc, kv = start("lite", python, work, "modules", [probe, str(out)])
    try:
        wait_record(proc, kv)
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.stop()
    if not out.exists():
        raise RuntimeError(f"no module list:\n{proc.log_tail()}")
    return out.read_text().split()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--stock-venv",
        default=os.environ.get("DYN_LITE_STOCK_VENV", str(REPO / ".stock-venv")),
    )
    ap.add_argument("--lite-python", default=sys.executable)
    ap.add_argument("--lite-only", action="store_true")
    ap.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the dynamo_lite worker"
    )
    ap.add_argument("--modules", action="store_true", help="list what a started worker imported")
    ap.add_argument(
        "--floor", action="store_true", help="the floor ladder: RSS of minimal programs, workers"
    )
    a = ap.parse_args()
    LITE_ENV.update(item.split("=", 1) for item in a.env)
    kinds = {"lite": a.lite_python}
    if a.floor:
        kinds.update(dict.fromkeys(LITE_VARIANTS, a.lite_python))
    stock_python = str(Path(a.stock_venv) / "bin" / "python")
    if not a.lite_only and not a.modules:
        kinds = {"stock": stock_python, **kinds}
    try:
        compile_tree(a.lite_python, REPO)
        with tempfile.TemporaryDirectory(prefix="idle-profile-") as tmp:
            work = Path(tmp)
            for kind in kinds:
                make_model(a.lite_python, work / "models" / kind)
            if a.floor:
                floor(kinds, a.rounds, work)
                return 0
            if a.modules:
                mods = modules(a.lite_python, work)
                print("\n".join(mods))
                return 0
            res: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
            names = list(kinds)
            for rnd in range(a.rounds):
                order = names if rnd % 2 == 0 else names[::-1]
                for kind in order:
                    startup, rss = measure(kind, kinds[kind], work, f"{kind}-{rnd}")
                    res[kind].append((startup, rss))
                    print(
                        f"round {rnd + 1} {kind:5s} start {startup:.3f} s  rss {rss:.1f} MiB",
                        flush=True,
                    )
            print()
            med: dict[str, tuple[float, float]] = {}
            for kind, vals in res.items():
                s = statistics.median(v[0] for v in vals)
                r = statistics.median(v[1] for v in vals)
                med[kind] = (s, r)
                print(f"{kind:5s} median start {s:.3f} s  rss {r:.1f} MiB")
            if "stock" in med:
                print(
                    f"lite/stock: start {med['lite'][0] / med['stock'][0]:.2f}x  "
                    f"rss {med['lite'][1] / med['stock'][1]:.2f}x"
                )
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
