"""Starting things: the stock frontend, the workers, the helper processes, the models.

Every process gets a loopback-only environment (``procs.loopback_env``), the
file discovery backend in a directory of its phase, and a log under
``<workdir>/logs``. :func:`session` brings up one frontend and one worker per
flavour and waits until each model is listed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.measure import log
from bench.procs import LOOPBACK, Helper, Proc, compile_tree, free_port, loopback_env
from bench.results import Results
from bench.settings import BENCH, REPO, Kind, Settings


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


def pids(workers: dict[str, Proc], fe: Frontend | None) -> dict[str, int]:
    """The processes whose CPU a window reports, by name."""
    out = {name: p.pid for name, p in workers.items()}
    if fe is not None:
        out["frontend"] = fe.proc.pid
    return out


def broken(res: Results, kind: Kind, out: dict[str, Any], proc: Proc) -> bool:
    """A flavour whose every request fails is reported once and left out of the rest."""
    if out["errors"] == 0 or out["total_requests"] > out["errors"]:
        return False
    trace = [ln for ln in proc.log_tail(400).splitlines() if "Error" in ln or "assert" in ln]
    why = f"{out['error_samples'][:1]}; worker log: {trace[-1].strip() if trace else '-'}"
    res.info.setdefault("broken", {})[kind.name] = why
    log(f"  {kind.name} is broken, skipped: {why}")
    return True


def age(root: Path) -> None:
    """Backdate the files: models are not written right before a worker starts, and the
    checksum cache skips files modified in the last two seconds."""
    old = time.time() - 3600
    for f in root.iterdir():
        os.utime(f, (old, old))


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
        age(root)


def compile_sources(s: Settings) -> None:
    """Byte-compile the dynamo_lite trees the workers run (this one and any baseline's),
    as the stock packages were compiled by pip (P4)."""
    roots = {REPO}
    for kind in s.kinds + s.variants:
        for name, value in kind.env:
            if name == "PYTHONPATH":
                roots.add(Path(value))
    for root in sorted(roots):
        compile_tree(s.lite_python, root)
