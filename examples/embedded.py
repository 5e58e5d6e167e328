"""A dynamo_lite worker hosted inside another asyncio program.

The program runs its own small service (a line-based status port that
answers with the worker's lifecycle state) and, beside it, a worker serving
the sample engine. Both live in one task group; ``dynamo_lite.serve()``
yields once the worker is serving and shuts it down in order when the block
ends: on SIGTERM or Ctrl-C (the worker drains, then the program's own
handling takes over), or when the program decides to stop.

    python examples/embedded.py --model-name ./tiny-model      # until Ctrl-C
    python examples/embedded.py --self-test                    # one round, then exit

Discovery is the file backend (``DYN_FILE_KV``, default ``/tmp/dynamo_store_kv``),
so the stock frontend finds the worker as it finds any other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

import anyio
import anyio.abc
from sample_engine import SampleEngine

import dynamo_lite
from dynamo_lite import Worker, WorkerConfig
from dynamo_lite.client import Client
from dynamo_lite.discovery import FileStore
from dynamo_lite.tiny_model import write_tiny_model


async def status_service(
    worker: Worker, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """The host program's own service: one line in, the worker's state out."""

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(f"{worker.lifecycle.state.value}\n".encode())

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    task_status.started(int(listener.extra(anyio.abc.SocketAttribute.local_port)))
    await listener.serve(answer)


async def ask_status(port: int) -> str:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"state?\n")
        return (await stream.receive()).decode().strip()


async def main(args: argparse.Namespace) -> None:
    model = args.model_name
    if model is None:
        model = str(write_tiny_model(Path(tempfile.mkdtemp(prefix="embedded-")) / "tiny"))
    engine = SampleEngine(model, max_tokens=8, delay=0.001)
    config = WorkerConfig(
        namespace="dynamo", component="embedded", model_name=model, discovery_backend="file"
    )
    async with (
        dynamo_lite.serve(engine, config) as worker,
        anyio.create_task_group() as tg,
    ):
        port = await tg.start(status_service, worker)
        print(f"worker serving; status service on 127.0.0.1:{port}", flush=True)
        if args.self_test:
            await self_test(worker, port)
            tg.cancel_scope.cancel()
        else:
            # Until a signal stops the worker; then the status service goes too.
            await worker.wait_stopped()
            tg.cancel_scope.cancel()
    print(f"worker {worker.lifecycle.state.value}", flush=True)


async def self_test(worker: Worker, port: int) -> None:
    assert await ask_status(port) == "serving"
    store = worker.store
    root = store.root if isinstance(store, FileStore) else None
    async with Client("dynamo", "embedded", "generate", store=FileStore(root or "")) as client:
        await client.wait_for_instances(10)
        items = await (await client.generate({"token_ids": [1, 2, 3]})).collect()
    assert items[-1]["finish_reason"] == "length", items
    print(f"self-test: {len(items)} tokens streamed; status says serving", flush=True)
    print("self-test passed", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-name", help="local model directory (default: a tiny generated one)")
    p.add_argument("--self-test", action="store_true", help="one request, then exit")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(p.parse_args()))
