"""compose.yaml cannot run here (no Docker engine), so check it against the code."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any

import yaml

from dynamo_lite.config import ENV_VARS
from tests.engines.examples_loader import load_example

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def env_of(service: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in SERVICES[service].get("environment", []))


def shell_of(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    assert cmd[:2] == ["sh", "-c"]
    return shlex.split(cmd[2])


def test_services_and_images() -> None:
    assert set(SERVICES) == {"nats-server", "etcd-server", "model-init", "frontend", "worker"}
    # Same images Dynamo's own compose file pins.
    assert SERVICES["nats-server"]["image"] == "nats:2.11.4"
    assert SERVICES["etcd-server"]["image"] == "bitnamilegacy/etcd:3.6.1"
    assert "-js" in SERVICES["nats-server"]["command"]
    assert "4222:4222" in SERVICES["nats-server"]["ports"]
    assert "2379:2379" in SERVICES["etcd-server"]["ports"]


def test_frontend_is_the_stock_one() -> None:
    words = shell_of("frontend")
    text = " ".join(words)
    assert "ai-dynamo-runtime==1.6.1" in text and "ai-dynamo==1.6.1" in text
    assert "--no-deps" in text
    i = words.index("dynamo.frontend")
    args = words[i + 1 :]
    assert args[args.index("--discovery-backend") + 1] == "etcd"
    port = args[args.index("--http-port") + 1]
    assert f"{port}:{port}" in SERVICES["frontend"]["ports"]


def test_worker_command_is_accepted_by_the_sample_engine() -> None:
    words = shell_of("worker")
    i = words.index("/src/examples/sample_engine.py")
    argv = words[i + 1 :]
    module = load_example("sample_engine.py")
    _engine, config = asyncio.run(module.SampleEngine.from_args(argv))
    assert config.discovery_backend == "etcd"
    assert config.namespace == "dynamo"
    assert config.model_name.startswith("/models/")
    init = " ".join(shell_of("model-init"))
    assert f"dynamo-lite tiny-model {config.model_name}" in init


def test_environment_names_are_ones_the_code_reads() -> None:
    stock_frontend_vars = {"ETCD_ENDPOINTS", "NATS_SERVER"}
    assert set(env_of("frontend")) <= stock_frontend_vars
    worker_env = env_of("worker")
    assert set(worker_env) <= ENV_VARS, set(worker_env) - ENV_VARS
    # Both sides point at the etcd service on its published port.
    etcd_url = "http://etcd-server:2379"
    assert env_of("frontend")["ETCD_ENDPOINTS"] == worker_env["ETCD_ENDPOINTS"] == etcd_url
    assert env_of("etcd-server")["ETCD_ADVERTISE_CLIENT_URLS"] == etcd_url
    # Addresses are detected as stock does (stock refuses host names there).
    for name in SERVICES:
        assert not {k for k in env_of(name) if k.startswith("DYN_") and k.endswith("_HOST")}
    port = worker_env["DYN_SYSTEM_PORT"]
    assert f"{port}:{port}" in SERVICES["worker"]["ports"]


def test_model_volume_is_shared_at_the_same_path() -> None:
    # The card carries local file paths; the frontend must see the same files.
    for name in ("frontend", "worker", "model-init"):
        assert any(v.startswith("models:/models") for v in SERVICES[name]["volumes"])
