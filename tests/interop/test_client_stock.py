"""The pure-Python client calls the *stock* 1.6.1 worker: no Rust wheel on the caller's side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dynamo_lite.client import Client
from dynamo_lite.discovery import EtcdOptions, EtcdStore, FileStore

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

FAST_EXIT = {"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "0"}


@pytest.mark.parametrize("backend", ["file", "etcd"])
async def test_client_streams_and_cancels_against_the_stock_worker(
    backend: str,
    tiny_model: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    stock_sample_worker: Any,
) -> None:
    if backend == "etcd":
        etcd = request.getfixturevalue("etcd")
        stock_sample_worker(
            tiny_model, discovery="etcd", etcd_endpoint=etcd.endpoint, env=FAST_EXIT
        )
        store: Any = EtcdStore(EtcdOptions((etcd.endpoint,)))
    else:
        kv = tmp_path / "kv"
        stock_sample_worker(tiny_model, discovery="file", file_kv=kv, env=FAST_EXIT)
        store = FileStore(kv)
    async with Client("dynamo", "sample", "generate", store=store) as client:
        (inst,) = await client.wait_for_instances(30)
        assert inst.codec == "msgpack"
        stream = await client.generate(
            {
                "model": str(tiny_model),
                "token_ids": [1, 2, 3],
                "stop_conditions": {"max_tokens": 5},
                "sampling_options": {},
                "output_options": {},
                "eos_token_ids": [0],
                "annotations": [],
                "routing": {},
            }
        )
        outs = await stream.collect()
        assert [o["token_ids"] for o in outs] == [[1], [2], [3], [4], [5]]
        assert outs[-1]["finish_reason"] == "length"
        assert outs[-1]["completion_usage"]["completion_tokens"] == 5
        assert stream.complete and stream.sentinel

        stream = await client.generate(
            {
                "model": str(tiny_model),
                "token_ids": [1],
                "stop_conditions": {"max_tokens": 5000},
                "sampling_options": {},
                "output_options": {},
            }
        )
        n = 0
        async for _ in stream:
            n += 1
            if n == 3:
                await stream.cancel()
                break
        # A fresh request still works afterwards.
        again = await client.generate(
            {
                "model": str(tiny_model),
                "token_ids": [1],
                "stop_conditions": {"max_tokens": 2},
                "sampling_options": {},
                "output_options": {},
            }
        )
        assert (await again.collect())[-1]["finish_reason"] == "length"
