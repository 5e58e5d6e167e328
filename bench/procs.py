"""Process plumbing for the benchmark: children, /proc readings, ports, env.

Standard library only, so the orchestrator runs under any Python ≥ 3.11.
Every child gets its own session (process group); :func:`stop_all` (also run
at exit and on SIGINT/SIGTERM) takes each group down, so an interrupted run
leaves nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import select
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

_LIVE: list[Proc] = []


def compile_tree(python: str | Path, root: Path) -> None:
    """Byte-compile the dynamo_lite tree at ``root`` (its package and examples) with
    ``python``, as installing a wheel does: with ``PYTHONDONTWRITEBYTECODE`` set, an
    editable checkout would otherwise be compiled again at every worker start."""
    dirs = [str(d) for d in (root / "dynamo_lite", root / "examples") if d.is_dir()]
    subprocess.run([str(python), "-m", "compileall", "-q", *dirs], check=True, capture_output=True)


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE → hard limit; children inherit it (P6/P7 hold thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def loopback_env(base_home: Path, **extra: str | None) -> dict[str, str]:
    """Our environment minus inherited Dynamo settings, every listener on 127.0.0.1."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DYN_", "ETCD_", "NATS_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        DYN_TCP_RPC_HOST=LOOPBACK,
        DYN_TCP_RESPONSE_STREAM_HOST=LOOPBACK,
        DYN_EVENT_PLANE_HOST=LOOPBACK,
        DYN_SYSTEM_HOST=LOOPBACK,
        DYN_HTTP_HOST=LOOPBACK,
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        HOME=str(base_home),
    )
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# --- /proc readings -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of all threads of ``pid`` (children not included)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name may contain spaces or parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts[:8]]
    idle = vals[3] + vals[4]  # idle + iowait
    total = sum(vals)
    return (total - idle) / CLK_TCK, total / CLK_TCK


def cpu_snapshot(pids: Mapping[str, int], own: str) -> dict[str, float]:
    """CPU seconds so far of each named process (NaN once gone), of this process
    (as ``own``) and of the whole machine (``machine``)."""
    snap: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            snap[name] = cpu_seconds(pid)
        except OSError:
            snap[name] = float("nan")
    snap[own] = time.process_time()
    snap["machine"] = machine_busy_seconds()[0]
    return snap


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


# --- children ---------------------------------------------------------------------


class Proc:
    """A child in its own session with stdout+stderr appended to ``log``."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        *,
        name: str,
        cwd: Path | None = None,
        pipes: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh: IO[bytes] = open(log, "ab")  # noqa: SIM115 - lives as long as the child
        self._log_fh.write(f"=== {time.strftime('%H:%M:%S')} {self.argv}\n".encode())
        self._log_fh.flush()
        self.started_at = time.monotonic()
        self.popen: subprocess.Popen[bytes] = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log_fh,
            stderr=self._log_fh,
            start_new_session=True,
        )
        _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_kib(self.pid)

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, wait, then SIGKILL it; returns the exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Reap anything the child left in its group, even after a clean exit.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._close()
        return self.popen.returncode

    def _close(self) -> None:
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(OSError):
            self._log_fh.close()
        if self in _LIVE:
            _LIVE.remove(self)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Helper(Proc):
    """A child speaking JSON lines: one command on stdin, one reply on stdout."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], log: Path, *, name: str
    ) -> None:
        super().__init__(argv, env, log, name=name, pipes=True)
        self._buf = b""
        self.ready = self.read(60.0)

    def read(self, timeout: float) -> dict[str, Any]:
        out = self.popen.stdout
        assert out is not None
        fd = out.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no reply within {timeout:.0f}s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                self._buf += chunk
            elif self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def call(self, timeout: float = 120.0, **command: Any) -> dict[str, Any]:
        stdin = self.popen.stdin
        assert stdin is not None
        stdin.write(json.dumps(command).encode() + b"\n")
        stdin.flush()
        return self.read(timeout)


def stop_all() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout=5.0)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
