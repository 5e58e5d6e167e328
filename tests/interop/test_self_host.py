"""Self-hosted model files: a frontend that cannot read the model directory still serves it."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.lite import wait_until, worker_argv, worker_env
from tests.support.ports import free_port

pytestmark = pytest.mark.interop


def test_frontend_fetches_the_model_files_from_the_worker(
    tiny_model: Path, file_kv: Path, tmp_path: Path, spawn: Any, stock_frontend: Any
) -> None:
    model = tmp_path / "private-model"
    shutil.copytree(tiny_model, model)
    port = free_port()
    proc = spawn(
        worker_argv(model),
        env=worker_env(file_kv=file_kv, DYN_SYSTEM_PORT=port),
        name="lite-selfhost",
    )
    mdc_dir = file_kv / "v1" / "mdc"
    wait_until(lambda: mdc_dir.exists() and any(mdc_dir.iterdir()), timeout=20, what="card")
    card = json.loads(next(mdc_dir.iterdir()).read_text())["card_json"]
    url = card["tokenizer"]["hf_tokenizer_json"]["path"]
    assert url.startswith(f"http://127.0.0.1:{port}/v1/metadata/dynamo/sample/generate/")
    assert url.endswith("/_base/tokenizer.json")
    r = httpx.get(url, timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == (tiny_model / "tokenizer.json").read_bytes()
    assert httpx.get(url.replace("tokenizer.json", "nope.json"), timeout=5).status_code == 404
    # The frontend can no longer read the directory: only the URLs remain.
    shutil.rmtree(model)
    fe = stock_frontend(discovery="file", file_kv=file_kv)
    fe.wait_model(str(model), timeout=30)
    r = httpx.post(
        fe.url("/v1/chat/completions"),
        timeout=30,
        json={
            "model": str(model),
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 3,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_self_hosting_can_be_turned_off(tiny_model: Path, file_kv: Path, spawn: Any) -> None:
    proc = spawn(
        worker_argv(tiny_model),
        env=worker_env(file_kv=file_kv, DYN_SYSTEM_PORT=free_port(), DYN_SELF_HOST_METADATA="0"),
    )
    mdc_dir = file_kv / "v1" / "mdc"
    wait_until(lambda: mdc_dir.exists() and any(mdc_dir.iterdir()), timeout=20, what="card")
    card = json.loads(next(mdc_dir.iterdir()).read_text())["card_json"]
    assert card["tokenizer"]["hf_tokenizer_json"]["path"] == str(
        (tiny_model / "tokenizer.json").resolve()
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
