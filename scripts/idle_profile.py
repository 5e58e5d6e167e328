"""Startup time and idle RSS of the sample worker, dynamo_lite beside stock.

Starts each worker on the file backend (a temporary ``DYN_FILE_KV``, every
listener on loopback, ``--disable-kv-routing``) and reports, per start:

* ``start``: spawn → the worker's model record file exists in the store;
* ``rss``: VmRSS one second after that.

Workers alternate (A B, then B A) for ``--rounds`` rounds; the summary is the
median of each. Startup on a shared machine is indicative only.

    python scripts/idle_profile.py --rounds 5 [--stock-venv .stock-venv] [--lite-only]
    python scripts/idle_profile.py --modules > modules.txt  # what a started worker imported

``--modules`` starts the dynamo_lite worker once under
``tests/engines/modules_probe.py``, which writes ``sorted(sys.modules)`` a
second after the model record appears, and prints the list.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from procs import LOOPBACK, Proc, loopback_env, rss_kib, stop_all  # noqa: E402

#: Extra environment for the dynamo_lite worker (``--env NAME=VALUE``).
LITE_ENV: dict[str, str | None] = {}


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
        "--model-name", str(model), "--namespace", "dynamo", "--component", kind,
        "--discovery-backend", "file", "--disable-kv-routing",
    ]  # fmt: skip
    if kind == "stock":
        argv = [python, "-m", "dynamo.common.backend.sample_main", *flags]
        env_extra: dict[str, str | None] = {}
    else:
        argv = [python, *(wrap or []), str(REPO / "examples" / "sample_engine.py"), *flags]
        env_extra = {"PYTHONPATH": str(REPO), **LITE_ENV}
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
    a = ap.parse_args()
    LITE_ENV.update(item.split("=", 1) for item in a.env)
    kinds = {"lite": a.lite_python}
    stock_python = str(Path(a.stock_venv) / "bin" / "python")
    if not a.lite_only and not a.modules:
        kinds = {"stock": stock_python, **kinds}
    try:
        with tempfile.TemporaryDirectory(prefix="idle-profile-") as tmp:
            work = Path(tmp)
            for kind in kinds:
                make_model(a.lite_python, work / "models" / kind)
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
