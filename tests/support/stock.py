"""Driving the stock Dynamo 1.6.1 frontend and sample worker from tests.

The stock packages live in their own virtualenv (``scripts/install_stock.sh``):
``$DYN_LITE_STOCK_VENV`` or ``<repo>/.stock-venv``. Without it, interop tests are
skipped locally but fail under CI (``CI`` set) or with ``DYN_LITE_REQUIRE_INTEROP=1``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx
import pytest

from tests.support.ports import LOOPBACK, free_port
from tests.support.services import ManagedProcess, strip_ansi

__all__ = [
    "REPO_ROOT",
    "STOCK_VERSION",
    "Discovery",
    "ManagedProcess",
    "StockFrontend",
    "StockSampleWorker",
    "interop_required",
    "loopback_env",
    "stock_python",
    "stock_venv_dir",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
STOCK_VERSION = "1.6.1"
Discovery = Literal["file", "etcd"]

# `import dynamo.frontend` alone only loads a version string; importing the entry
# modules proves the compiled runtime and its dependencies load too.
_PROBE = (
    "import dynamo.frontend, dynamo.frontend.main, dynamo.common.backend.sample_main; "
    "print(dynamo.frontend.__version__)"
)

# Inherited variables that would silently point children at some other cluster.
_DROP_ENV = ("NATS_SERVER", "ETCD_ENDPOINTS")
# DYN_* settings from the caller's shell would make runs unreproducible; keep
# only logging verbosity and this project's own knobs.
_KEEP_DYN = ("DYN_LOG", "DYN_LITE_")

_TEMP_DIRS: list[Path] = []


@atexit.register
def _remove_temp_dirs() -> None:
    for path in _TEMP_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def _temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _TEMP_DIRS.append(path)
    return path


def interop_required() -> bool:
    """True when a missing stock install must fail the run instead of skipping."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("DYN_LITE_REQUIRE_INTEROP") == "1"


def stock_venv_dir() -> Path:
    return Path(os.environ.get("DYN_LITE_STOCK_VENV") or REPO_ROOT / ".stock-venv")


@functools.cache
def _probe(python: Path) -> str | None:
    """Return why the stock install at ``python`` is unusable, or None if it is fine."""
    if not python.exists():
        return f"{python} does not exist"
    try:
        res = subprocess.run(
            [str(python), "-c", _PROBE], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} could not run: {exc}"
    if res.returncode != 0:
        return f"importing dynamo.frontend failed:\n{res.stderr.strip()[-2000:]}"
    version = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "?"
    if version != STOCK_VERSION:
        return f"found ai-dynamo {version}, need {STOCK_VERSION}"
    return None


def stock_python() -> Path:
    """The stock venv's python; skips (or fails under CI) the test if unusable."""
    venv = stock_venv_dir()
    python = venv / "bin" / "python"
    problem = _probe(python)
    if problem is None:
        return python
    msg = (
        f"stock Dynamo {STOCK_VERSION} is not usable in {venv}: {problem}\n"
        f"Install it with: bash scripts/install_stock.sh "
        f"(or point DYN_LITE_STOCK_VENV at an existing install)"
    )
    if interop_required():
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def loopback_env(**extra: str | os.PathLike[str] | int | None) -> dict[str, str]:
    """Environment for Dynamo processes confined to loopback.

    A copy of ``os.environ`` without inherited discovery / NATS settings and
    ``DYN_*`` overrides, with every Dynamo listener pinned to 127.0.0.1 and a
    private ``HOME`` (fresh temp dir) so model caches start empty. ``extra`` is
    applied last; a ``None`` value removes the variable.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DROP_ENV and (not k.startswith("DYN_") or k.startswith(_KEEP_DYN))
    }
    env.update(
        DYN_TCP_RPC_HOST=LOOPBACK,
        DYN_TCP_RESPONSE_STREAM_HOST=LOOPBACK,
        DYN_EVENT_PLANE_HOST=LOOPBACK,
        DYN_SYSTEM_HOST=LOOPBACK,
        DYN_HTTP_HOST=LOOPBACK,
        # There is no network: a model name that is not a local path must fail
        # fast instead of retrying a hub download.
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    if "HOME" not in extra:
        env["HOME"] = str(_temp_dir("dynlite-home-"))
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return env


def _discovery_env(
    discovery: Discovery, file_kv: Path | None, etcd_endpoint: str | None
) -> dict[str, str]:
    if discovery == "file":
        if file_kv is None:
            raise ValueError("discovery='file' needs file_kv")
        file_kv.mkdir(parents=True, exist_ok=True)
        return {"DYN_FILE_KV": str(file_kv)}
    if discovery == "etcd":
        if not etcd_endpoint:
            raise ValueError("discovery='etcd' needs etcd_endpoint")
        return {"ETCD_ENDPOINTS": etcd_endpoint}
    raise ValueError(f"unknown discovery backend {discovery!r}")


class _StockProcess:
    """Common plumbing: workdir, log file, env assembly and a ManagedProcess.

    ``env`` holds extra variables applied on top of :func:`loopback_env` (``None``
    removes one), e.g. ``{"NATS_SERVER": nats.url}``.
    """

    kind = "stock"

    def __init__(
        self,
        *,
        discovery: Discovery,
        file_kv: Path | None,
        etcd_endpoint: str | None,
        env: Mapping[str, str | None] | None,
        workdir: Path | None,
        python: Path | None,
        stop_timeout: float,
    ) -> None:
        self.discovery: Discovery = discovery
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix=f"dynlite-{self.kind}-")) if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if discovery == "file" and file_kv is None:
            file_kv = self.workdir / "file-kv"
        self.file_kv = file_kv
        self.etcd_endpoint = etcd_endpoint
        self.python = python
        self.log_path = self.workdir / f"{self.kind}.log"
        self.stop_timeout = stop_timeout
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        overrides: dict[str, str | None] = {
            "HOME": str(home),
            **_discovery_env(discovery, file_kv, etcd_endpoint),
            **(env or {}),
        }
        self._env = loopback_env(**overrides)
        self.proc: ManagedProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        return dict(self._env)

    def _argv(self, python: Path) -> list[str]:
        raise NotImplementedError

    def _launch(self) -> ManagedProcess:
        if self.proc is not None and self.proc.running:
            raise RuntimeError(f"{self.kind} already running")
        python = self.python or stock_python()
        self.proc = ManagedProcess(
            self._argv(python),
            env=self._env,
            log_path=self.log_path,
            cwd=self.workdir,
            name=self.kind,
            stop_timeout=self.stop_timeout,
        )
        return self.proc.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.kind} was never started")
        return self.proc.pid

    def send_signal(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.kind} was never started")
        return self.proc.wait(timeout)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait (default ``stop_timeout``), then SIGKILL the process group."""
        return None if self.proc is None else self.proc.stop(timeout)

    def kill(self) -> int | None:
        return None if self.proc is None else self.proc.kill()

    def close(self) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return strip_ansi(self.log_path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _fail(self, what: str) -> RuntimeError:
        rc = None if self.proc is None else self.proc.returncode
        return RuntimeError(
            f"{self.kind} {what} (rc={rc})\n--- last lines of {self.log_path} ---\n"
            f"{self.log_tail()}"
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StockFrontend(_StockProcess):
    """``python -m dynamo.frontend`` from the stock venv, HTTP on a free loopback port."""

    kind = "frontend"

    def __init__(
        self,
        discovery: Discovery = "file",
        file_kv: Path | None = None,
        etcd_endpoint: str | None = None,
        namespace: str | None = None,
        extra_args: Iterable[str] = (),
        env: Mapping[str, str | None] | None = None,
        *,
        workdir: Path | None = None,
        http_port: int | None = None,
        python: Path | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            discovery=discovery,
            file_kv=file_kv,
            etcd_endpoint=etcd_endpoint,
            env=env,
            workdir=workdir,
            python=python,
            stop_timeout=stop_timeout,
        )
        self.namespace = namespace
        self.extra_args = list(extra_args)
        self._fixed_port = http_port is not None
        self.http_port = http_port if http_port is not None else free_port()
        self.startup_timeout = startup_timeout

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def _argv(self, python: Path) -> list[str]:
        argv = [
            str(python), "-m", "dynamo.frontend",
            "--http-host", LOOPBACK,
            "--http-port", str(self.http_port),
            "--discovery-backend", self.discovery,
        ]  # fmt: skip
        if self.namespace:
            argv += ["--namespace", self.namespace]
        return argv + self.extra_args

    def start(self, timeout: float | None = None) -> Self:
        """Launch and wait until ``GET /v1/models`` answers 200."""
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self._launch()
            try:
                self._wait_http(self.startup_timeout if timeout is None else timeout)
                return self
            except RuntimeError:
                run_log = self.proc.log_text(this_run=True) if self.proc is not None else ""
                in_use = "address already in use" in run_log.lower()
                if not (in_use and attempt + 1 < attempts):
                    self.kill()
                    raise
                # Someone grabbed the port between picking and binding.
                self.kill()
                self.http_port = free_port()
        raise AssertionError("unreachable")

    def _wait_http(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if not self.running:
                    raise self._fail("exited during startup")
                try:
                    resp = client.get(self.url("/v1/models"))
                    if resp.status_code == 200:
                        return
                    last = resp.status_code
                except httpx.HTTPError as exc:
                    last = exc
                if time.monotonic() >= deadline:
                    self.kill()
                    raise self._fail(
                        f"GET /v1/models not 200 within {timeout:.0f}s (last: {last!r})"
                    )
                time.sleep(0.1)

    def models_payload(self) -> dict[str, Any]:
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            resp = client.get(self.url("/v1/models"))
            resp.raise_for_status()
            data: dict[str, Any] = resp.json()
            return data

    def models(self) -> list[str]:
        return [str(m["id"]) for m in self.models_payload().get("data", [])]

    def wait_model(self, name: str, present: bool = True, timeout: float = 30.0) -> list[str]:
        """Poll ``/v1/models`` until ``name`` is (or is no longer) listed; return the list."""
        deadline = time.monotonic() + timeout
        models: list[str] = []
        while True:
            if not self.running:
                raise self._fail(f"exited while waiting for model {name!r}")
            with contextlib.suppress(httpx.HTTPError):
                models = self.models()
                if (name in models) == present:
                    return models
            if time.monotonic() >= deadline:
                state = "listed" if present else "gone"
                raise TimeoutError(
                    f"model {name!r} not {state} after {timeout:.0f}s; /v1/models: {models}\n"
                    f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __repr__(self) -> str:
        return f"<StockFrontend {self.base_url} discovery={self.discovery} running={self.running}>"


class StockSampleWorker(_StockProcess):
    """``python -m dynamo.common.backend.sample_main`` from the stock venv.

    ``model`` is normally the tiny model directory; the stock worker serves it
    under that exact string, so that is also the name ``/v1/models`` lists.
    """

    kind = "sample-worker"

    def __init__(
        self,
        model: Path | str,
        discovery: Discovery = "file",
        file_kv: Path | None = None,
        etcd_endpoint: str | None = None,
        namespace: str = "dynamo",
        disable_kv_routing: bool = True,
        extra_args: Iterable[str] = (),
        env: Mapping[str, str | None] | None = None,
        *,
        workdir: Path | None = None,
        python: Path | None = None,
        stop_timeout: float = 20.0,
    ) -> None:
        super().__init__(
            discovery=discovery,
            file_kv=file_kv,
            etcd_endpoint=etcd_endpoint,
            env=env,
            workdir=workdir,
            python=python,
            stop_timeout=stop_timeout,
        )
        self.model = str(model)
        self.namespace = namespace
        self.disable_kv_routing = disable_kv_routing
        self.extra_args = list(extra_args)

    @property
    def model_name(self) -> str:
        return self.model

    def _argv(self, python: Path) -> list[str]:
        argv = [
            str(python), "-m", "dynamo.common.backend.sample_main",
            "--model-name", self.model,
            "--namespace", self.namespace,
            "--discovery-backend", self.discovery,
        ]  # fmt: skip
        if self.disable_kv_routing:
            argv.append("--disable-kv-routing")
        return argv + self.extra_args

    def start(self, frontend: StockFrontend | None = None, timeout: float = 60.0) -> Self:
        """Launch; then wait until ``frontend`` lists the model, or without a
        frontend until the worker logs that it is serving its endpoint."""
        proc = self._launch()
        try:
            if frontend is not None:
                frontend.wait_model(self.model_name, timeout=timeout)
            else:
                proc.wait_for_log(r"Serving .* on ", timeout=timeout)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise self._fail(f"did not become ready: {exc}") from exc
        return self

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __repr__(self) -> str:
        return f"<StockSampleWorker {self.model} discovery={self.discovery} running={self.running}>"
