"""Capture what the stock 1.6.1 worker publishes for known inputs (see README.md).

    DYN_LITE_STOCK_VENV=... .venv/bin/python tests/vectors/kv/capture_relay.py [--push]

Runs ``relay_engine.py`` on the stock SDK (file discovery), subscribes to the
worker's ``kv-events`` channel with dynamo_lite's ZMTP codec, sends one
request (the engine then publishes ``relay_inputs.json``) and writes every
relayed envelope to ``relay_outputs.json``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from dynamo_lite.client import Client  # noqa: E402
from dynamo_lite.config import RuntimeSettings  # noqa: E402
from dynamo_lite.discovery import keys as dkeys  # noqa: E402
from dynamo_lite.protocol import kv_events as kve  # noqa: E402
from dynamo_lite.protocol import zmtp  # noqa: E402
from tests.support.services import ManagedProcess  # noqa: E402
from tests.support.stock import loopback_env, stock_python  # noqa: E402
from tests.support.tiny_model import build_tiny_model  # noqa: E402


def records(root: Path) -> dict[str, Any]:
    out = {}
    for p in (root / "v1").rglob("*"):
        if p.is_file():
            try:
                out[f"{p.parent.name}/{dkeys.decode_file_name(p.name)}"] = json.loads(p.read_text())
            except ValueError:
                pass
    return out


async def collect(port: int, file_kv: Path, n_expected: int) -> list[Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = zmtp.ZmtpConnection(b"SUB")
    writer.write(conn.start())
    while not conn.ready:
        conn.feed(await reader.read(4096))
        writer.write(conn.data_to_send())
    writer.write(conn.send_subscribe(b"kv-events"))
    await writer.drain()
    await asyncio.sleep(0.5)
    settings = RuntimeSettings.from_env({"DYN_FILE_KV": str(file_kv)})
    async with Client("dynamo", "relay", "generate", discovery_backend="file", settings=settings) as c:
        stream = await c.generate({"token_ids": [1, 2, 3], "stop_conditions": {"max_tokens": 1}})
        _ = [i async for i in stream]
    out: list[Any] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(reader.read(65536), 1)
        except TimeoutError:
            continue
        for ev in conn.feed(data):
            if isinstance(ev, zmtp.Message):
                env = kve.decode_zmq_message(ev.parts)
                out.append({"sequence": env.sequence, "payload": env.value()})
    writer.close()
    return out


def main() -> None:
    push = "--push" in sys.argv
    prefix = "push" if push else "relay"
    work = Path(tempfile.mkdtemp(prefix="kvrelay-"))
    try:
        model = build_tiny_model(work / "tiny-model")
        file_kv = work / "kv"
        file_kv.mkdir()
        env = loopback_env(DYN_FILE_KV=str(file_kv))
        proc = ManagedProcess(
            [str(stock_python()), str(HERE / "relay_engine.py"), "--model-name", str(model)]
            + (["--push"] if push else []),
            env=env, log_path=work / "worker.log", name="relay",
        )  # fmt: skip
        proc.start()
        try:
            deadline = time.monotonic() + 60
            while True:
                recs = records(file_kv)
                chans = [v for v in recs.values() if v.get("topic") == "kv-events" and "transport" in v]
                if chans and any(k.startswith("instances/dynamo/relay/generate/") for k in recs):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(proc.log_text()[-3000:])
                time.sleep(0.2)
            port = int(chans[0]["transport"]["config"]["endpoint"].rsplit(":", 1)[1])
            out = asyncio.run(collect(port, file_kv, 7))
        finally:
            proc.stop()
            shutil.copy(work / "worker.log", HERE / f"{prefix}_worker.log")
        for item in out:
            for rev in item["payload"]:
                rev["worker_id"] = "<worker_id>"
        (HERE / f"{prefix}_outputs.json").write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out)[:3000])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
