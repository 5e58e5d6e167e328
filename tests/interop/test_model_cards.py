"""LoRA model cards an engine publishes through the endpoint ``on_endpoint_ready``
gave it (``dynamo.llm.register_model`` / ``unregister_model``): the same
engine on the stock worker and on dynamo_lite writes the same record, the
stock frontend lists the adapter, and it is withdrawn on request and at exit."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.interop.test_engine_routes_interop import free_system_port
from tests.support.lite import REPO, worker_env
from tests.support.services import ManagedProcess

pytestmark = pytest.mark.interop

ENGINE = REPO / "tests" / "engines" / "lora_engine.py"


class Lora:
    """A worker running a stock-SDK engine with a system port, on either runtime."""

    def __init__(
        self, head: list[str], tmp_path: Path, name: str, model: Path, engine: Path = ENGINE
    ) -> None:
        self.kv = tmp_path / f"kv-{name}"
        self.kv.mkdir()
        self.port = free_system_port()
        argv = [*head, str(engine), "--model-name", str(model), "--discovery-backend", "file",
                "--disable-kv-routing"]  # fmt: skip
        env = worker_env(file_kv=self.kv, DYN_SYSTEM_PORT=self.port)
        self.proc = ManagedProcess(argv, env=env, name=name, log_path=tmp_path / f"{name}.log")
        self.proc.start()
        self.wait(lambda: self._health() == 200, "ready")

    def _health(self) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    def wait(self, check: Any, what: str) -> Any:
        deadline = time.monotonic() + 60  # a generous bound only catches a hang
        while not (value := check()):
            assert self.proc.running, self.proc.describe_log()
            assert time.monotonic() < deadline, f"{what}\n{self.proc.describe_log()}"
            time.sleep(0.05)
        return value

    def control(self, name: str, body: dict[str, Any]) -> Any:
        url = f"http://127.0.0.1:{self.port}/engine/control/{name}"
        return httpx.post(url, json=body, timeout=30).json()

    def lora_records(self) -> dict[str, Any]:
        return {
            p.name: json.loads(p.read_text())
            for p in self.kv.rglob("*")
            if p.is_file() and p.parent.name == "mdc" and p.name.endswith("%2Dlora")
        }

    def normalised(self) -> Any:
        [record] = self.lora_records().values()
        text = json.dumps(record)
        text = re.sub(r"http://[^/]+/v1/metadata/", "URL/v1/metadata/", text)
        record = json.loads(text)
        record.pop("instance_id")
        record["card_json"]["runtime_config"].pop("enable_local_indexer")  # see docs/parity.md
        return record


def test_a_lora_card_as_stock_publishes_it(
    tmp_path: Path, tiny_model: Path, stock_python_path: Path, stock_frontend: Any
) -> None:
    stock = Lora([str(stock_python_path)], tmp_path, "stock", tiny_model)
    try:
        lite = Lora([sys.executable, "-m", "dynamo_lite.compat"], tmp_path, "lite", tiny_model)
    except BaseException:
        stock.proc.close()
        raise
    try:
        body = {"name": "my-lora", "path": str(tiny_model)}
        for rt in (stock, lite):
            assert rt.control("load_lora", body) == {"status": "ok"}
            rt.wait(rt.lora_records, "LoRA card")
        assert json.dumps(lite.normalised()) == json.dumps(stock.normalised())
        for rt in (stock, lite):  # what the engine registered on endpoint.metrics
            text = httpx.get(f"http://127.0.0.1:{rt.port}/metrics", timeout=5).text
            assert "\nlora_engine_adapters 1" in text
        # Self-hosted like the base model's files.
        url = lite.normalised()["card_json"]["model_info"]["hf_config_json"]["path"]
        got = httpx.get(url.replace("URL", f"http://127.0.0.1:{lite.port}"), timeout=5)
        assert got.status_code == 200 and got.content == (tiny_model / "config.json").read_bytes()
        # The stock frontend serves the adapter next to the base model.
        fe = stock_frontend(discovery="file", file_kv=lite.kv)
        fe.wait_model("my-lora", timeout=30)
        assert lite.control("unload_lora", body) == {"status": "ok"}
        lite.wait(lambda: not lite.lora_records(), "LoRA card withdrawn")
        fe.wait_model("my-lora", present=False, timeout=30)
        assert lite.control("unload_lora", body)["status"] == "error"
        assert lite.control("load_lora", body) == {"status": "ok"}
    finally:
        stock.proc.close()
        lite.proc.close()
    assert not lite.lora_records()  # withdrawn at shutdown


CLIENT_ENGINE = REPO / "tests" / "engines" / "client_engine.py"


def test_endpoint_client_as_stock(
    tmp_path: Path, tiny_model: Path, stock_python_path: Path
) -> None:
    """``await endpoint.client()`` from inside the engine: same ids, items and item surface."""
    stock = Lora([str(stock_python_path)], tmp_path, "stock", tiny_model, CLIENT_ENGINE)
    try:
        lite = Lora([sys.executable, "-m", "dynamo_lite.compat"], tmp_path, "lite", tiny_model,
                    CLIENT_ENGINE)  # fmt: skip
    except BaseException:
        stock.proc.close()
        raise
    try:
        for body in ({}, {"annotated": False}, {"method": "round_robin"}, {"method": "random"},
                     {"method": "direct"}):  # fmt: skip
            ours, theirs = lite.control("ask_self", body), stock.control("ask_self", body)
            assert ours == theirs and ours["own_id"] is True, (body, ours, theirs)
    finally:
        stock.proc.close()
        lite.proc.close()
