"""Capture the stock 1.6.1 worker's response stream under the JSON request-plane codec.

Writes ``tests/vectors/tcp/stock_respstream_json_codec.bin``: the raw bytes the
stock sample worker (``DYN_REQUEST_PLANE_CODEC=json``) sends on the call-home
connection for one request with ``max_tokens`` 3, as received by the
pure-Python client. Run by hand with the stock venv installed::

    python tests/engines/capture_stock_json_stream.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from dynamo_lite import client as client_mod
from dynamo_lite.client import Client
from dynamo_lite.discovery import FileStore
from dynamo_lite.tiny_model import write_tiny_model
from tests.support.services import ManagedProcess
from tests.support.stock import loopback_env, stock_venv_dir

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "vectors" / "tcp" / "stock_respstream_json_codec.bin"


async def _capture(kv: Path, model: str) -> bytes:
    raw = bytearray()
    original = client_mod._CallHome.data_received

    def recording(self: client_mod._CallHome, data: bytes) -> None:
        raw.extend(data)
        original(self, data)

    client_mod._CallHome.data_received = recording  # type: ignore[method-assign]
    try:
        async with Client("dynamo", "sample", "generate", store=FileStore(kv)) as client:
            (inst,) = await client.wait_for_instances(60)
            assert inst.codec == "json", inst.codec
            stream = await client.generate(
                {
                    "model": model,
                    "token_ids": [1, 2, 3],
                    "stop_conditions": {"max_tokens": 3},
                    "sampling_options": {},
                    "output_options": {},
                    "eos_token_ids": [0],
                    "annotations": [],
                    "routing": {},
                }
            )
            outs = await stream.collect()
            assert [o["token_ids"] for o in outs] == [[1], [2], [3]], outs
            assert stream.complete and stream.sentinel
    finally:
        client_mod._CallHome.data_received = original  # type: ignore[method-assign]
    return bytes(raw)


def main() -> None:
    python = stock_venv_dir() / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = write_tiny_model(root / "tiny-model")
        kv = root / "kv"
        kv.mkdir()
        argv = [
            python, "-m", "dynamo.common.backend.sample_main",
            "--model-name", model, "--namespace", "dynamo", "--component", "sample",
            "--discovery-backend", "file", "--disable-kv-routing",
        ]  # fmt: skip
        env = loopback_env(
            DYN_FILE_KV=kv,
            DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS="0",
            DYN_REQUEST_PLANE_CODEC="json",
        )
        worker = ManagedProcess(argv, env=env, log_path=root / "worker.log").start()
        try:
            data = asyncio.run(_capture(kv, str(model)))
        finally:
            worker.stop()
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
