"""compose.yaml, run for real without a container engine.

Each service becomes a namespace host named after it (so the other services
resolve it through that host's ``/etc/hosts``), with the command and
environment taken from the file. Only the images are replaced by what is
installed here:

* ``nats:*`` → the local nats-server binary, with the service's command;
* ``bitnamilegacy/etcd:*`` → the local etcd binary, configured by the
  service's ``ETCD_*`` environment as the image does (plus the image's own
  default of listening on all addresses);
* ``python:*`` → the service's ``sh -c`` command with its ``pip install``
  steps dropped: the venv that already holds what they would install comes
  first on ``PATH`` (the stock venv for ``ai-dynamo``, this project's for
  ``/src``, with ``PYTHONPATH=/src``).

Volumes are bind mounts in each service's private mount namespace (``.`` is
this repository; a named volume is a directory of the test). ``depends_on``
is honoured (``service_completed_successfully`` waits for the exit). Then the
curl from the file's header comment runs on the frontend host (where
``ports: 8000:8000`` publishes it as ``localhost:8000``) and must answer.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import unpinned
from tests.support.lite import wait_until
from tests.support.netns import Bind, Host, Lab
from tests.support.services import ManagedProcess, etcd_binary, nats_server_binary
from tests.support.stock import loopback_env, stock_python, stock_venv_dir

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (REPO / "compose.yaml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
LITE_VENV_BIN = Path(sys.executable).parent


def _curl_from_comment() -> str:
    """The curl command in the header comment, joined across its continuation lines."""
    lines = [ln[1:].strip() for ln in COMPOSE_TEXT.splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("curl "))
    parts = []
    for ln in lines[start:]:
        parts.append(ln.rstrip("\\").strip())
        if not ln.endswith("\\"):
            break
    return " ".join(parts)


def _order() -> list[str]:
    done: list[str] = []
    while len(done) < len(SERVICES):
        for name, svc in SERVICES.items():
            deps = svc.get("depends_on") or {}
            if name not in done and all(d in done for d in deps):
                done.append(name)
    return done


class ComposeRun:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        seg = lab.segment("server", "10.201.0.0/24")  # networks: [server]
        self.hosts: dict[str, Host] = {name: lab.host(name, seg) for name in SERVICES}
        self.procs: dict[str, ManagedProcess] = {}

    def _volumes(self, svc: dict[str, Any]) -> list[Bind]:
        binds: list[Bind] = []
        for spec in svc.get("volumes", []):
            source, target, *mode = spec.split(":")
            if source in (".", "./"):
                src = REPO
            else:
                src = self.workdir / "volumes" / source
                src.mkdir(parents=True, exist_ok=True)
            # The container's mount point must exist on this root file system.
            Path(target).mkdir(parents=True, exist_ok=True)
            binds.append((src, Path(target), "ro" in mode))
        return binds

    def _command(self, name: str, svc: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        image: str = svc["image"]
        env = dict(item.split("=", 1) for item in svc.get("environment", []))
        home = self.workdir / f"{name}-home"
        home.mkdir(parents=True, exist_ok=True)
        base = unpinned(loopback_env(HOME=str(home), TMPDIR=str(home)))
        for key in ("ETCD_ENDPOINTS", "NATS_SERVER"):
            base.pop(key, None)
        if image.startswith("nats:"):
            return [str(nats_server_binary()), *svc["command"]], {**base, **env}
        if image.startswith("bitnamilegacy/etcd:"):
            image_defaults = {
                "ETCD_LISTEN_CLIENT_URLS": "http://0.0.0.0:2379",
                "ETCD_DATA_DIR": str(home / "data"),
                "ETCD_UNSAFE_NO_FSYNC": "true",
            }
            # ALLOW_NONE_AUTHENTICATION is the image entrypoint's switch, not etcd's.
            env.pop("ALLOW_NONE_AUTHENTICATION", None)
            return [str(etcd_binary())], {**base, **image_defaults, **env}
        assert image.startswith("python:"), image
        assert svc["command"][:2] == ["sh", "-c"]
        steps = [s.strip() for s in svc["command"][2].split("&&")]
        installs = " ".join(s for s in steps if s.startswith("pip install"))
        script = " && ".join(s for s in steps if not s.startswith("pip install"))
        venv_bin = stock_venv_dir() / "bin" if "ai-dynamo" in installs else LITE_VENV_BIN
        path = f"{venv_bin}{os.pathsep}{base.get('PATH', '')}"
        extra = {"PATH": path, "PYTHONUNBUFFERED": "1"}
        if "/src" in installs:
            extra["PYTHONPATH"] = "/src"
        return ["sh", "-c", script], {**base, **extra, **env}

    def start(self, name: str) -> ManagedProcess:
        svc = SERVICES[name]
        for dep, cond in (svc.get("depends_on") or {}).items():
            proc = self.procs[dep]
            if cond.get("condition") == "service_completed_successfully":
                assert proc.wait(120) == 0, proc.describe_log()
        argv, env = self._command(name, svc)
        proc = self.hosts[name].spawn(
            argv, env=env, name=name, cwd=self.workdir, binds=self._volumes(svc)
        )
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.procs[name].stop(30)  # SIGTERM first, as compose does


def test_compose_topology_runs_and_its_curl_answers(lab: Lab, tmp_path: Path) -> None:
    stock_python()  # the frontend's "image": skips without it, or fails under CI
    run = ComposeRun(lab, tmp_path)
    try:
        for name in _order():
            run.start(name)
        fe = run.hosts["frontend"]
        curl = _curl_from_comment()
        assert curl.startswith("curl localhost:8000/v1/chat/completions")
        model = json.loads(re.search(r"-d '(.*)'", curl).group(1))["model"]  # type: ignore[union-attr]

        def models() -> bool:
            res = fe.run(["curl", "-s", "localhost:8000/v1/models"])
            return model in res.stdout

        for name in ("frontend", "worker"):
            assert run.procs[name].running, run.procs[name].describe_log()
        wait_until(models, timeout=120, what=f"{model} listed by the frontend")
        res = fe.run(["sh", "-c", f"{curl} --silent --show-error --fail"])
        assert res.returncode == 0, res.stderr + run.procs["frontend"].log_tail()
        answer = json.loads(res.stdout)
        assert answer["choices"][0]["message"]["content"]
        assert answer["choices"][0]["finish_reason"] == "length"
        # The worker advertised its own address, detected as stock does.
        etcd = run.hosts["etcd-server"]
        keys = etcd.run(
            [
                "curl", "-s", "localhost:2379/v3/kv/range", "-d",
                json.dumps({"key": "djEv", "range_end": "djIv"}),  # v1/ .. v2/
            ]
        )  # fmt: skip
        assert f'"tcp":"{run.hosts["worker"].addr}:' in _decoded_values(keys.stdout)
        # The worker exits cleanly on the compose stop signal.
        worker = run.procs["worker"]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.describe_log()
    finally:
        run.stop()


def _decoded_values(reply: str) -> str:
    import base64

    data = json.loads(reply)
    return " ".join(base64.b64decode(kv["value"]).decode() for kv in data.get("kvs", []))


def test_the_curl_is_parsed_from_the_comment() -> None:
    curl = _curl_from_comment()
    words = shlex.split(curl)
    assert words[0] == "curl" and "-d" in words
