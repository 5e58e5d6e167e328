"""The seed guide's MyBackend runs unchanged (but for imports) behind the stock frontend."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.lite import REPO, worker_env

pytestmark = pytest.mark.interop


def test_seed_guide_backend_serves_chat(
    tiny_model: Path, file_kv: Path, spawn: Any, stock_frontend: Any
) -> None:
    fe = stock_frontend(discovery="file", file_kv=file_kv)
    argv = [
        sys.executable, str(REPO / "examples" / "my_backend.py"),
        "--model-name", str(tiny_model), "--discovery-backend", "file",
    ]  # fmt: skip
    spawn(argv, env=worker_env(file_kv=file_kv), name="my-backend")
    fe.wait_model(str(tiny_model), timeout=30)
    r = httpx.post(
        fe.url("/v1/chat/completions"),
        timeout=30,
        json={
            "model": str(tiny_model),
            "messages": [{"role": "user", "content": "hello world"}],
            "max_tokens": 3,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
