"""Capture the stock 1.6.1 KV-routing wire traffic (see README.md in this folder).

Run from the repository root with the project's venv:

    DYN_LITE_STOCK_VENV=/work/main/.stock-venv .venv/bin/python tests/vectors/kv/capture.py OUT

``file`` mode: stock sample worker (KV routing on, file discovery, ZMQ event
plane). Before the stock frontend starts, every loopback address in the
worker's discovery records is pointed at a recording TCP proxy, so the
frontend's ZMQ subscriptions and its request-plane calls (including the
``worker_kv_query_source_*`` recovery query) pass through the proxy and are
logged byte for byte in both directions.

``nats`` mode: etcd + nats-server, worker and frontend with ``--event-plane
nats``; a nats-py subscriber on ``>`` records every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.support.ports import free_port  # noqa: E402
from tests.support.services import EtcdServer, NatsServer  # noqa: E402
from tests.support.stock import StockFrontend, StockSampleWorker  # noqa: E402
from tests.support.tiny_model import build_tiny_model  # noqa: E402

PROMPTS = [
    "alpha " * 40,
    "alpha " * 40,
    "bravo charlie " * 30,
]


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def add(self, **row: Any) -> None:
        with self.lock:
            row["t"] = round(time.monotonic() - self.t0, 6)
            self.rows.append(row)


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    rec: Recorder,
    conn: int,
    target: str,
    direction: str,
) -> None:
    try:
        while data := await reader.read(65536):
            rec.add(conn=conn, target=target, dir=direction, hex=data.hex())
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def start_proxies(targets: dict[int, str], rec: Recorder) -> tuple[dict[int, int], Any]:
    """One recording proxy per target port; returns {target_port: proxy_port}."""
    loop = asyncio.new_event_loop()
    mapping: dict[int, int] = {}
    counter = iter(range(1, 10_000))

    async def setup() -> None:
        for tport, label in targets.items():
            pport = free_port()

            async def handle(
                r: asyncio.StreamReader,
                w: asyncio.StreamWriter,
                tport: int = tport,
                label: str = label,
            ) -> None:
                conn = next(counter)
                rec.add(conn=conn, target=label, dir="open")
                ur, uw = await asyncio.open_connection("127.0.0.1", tport)
                await asyncio.gather(
                    _pipe(r, uw, rec, conn, label, "frontend->worker"),
                    _pipe(ur, w, rec, conn, label, "worker->frontend"),
                )
                rec.add(conn=conn, target=label, dir="close")

            await asyncio.start_server(handle, "127.0.0.1", pport)
            mapping[tport] = pport

    loop.run_until_complete(setup())
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    return mapping, loop


def dump_tree(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = json.loads(p.read_text())
    return out


def chat(base: str, model: str, prompt: str) -> dict[str, Any]:
    r = httpx.post(
        base + "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 40,
        },
        timeout=30,
    )
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def capture_file(out: Path, work: Path, model: Path) -> None:
    file_kv = work / "file-kv"
    worker = StockSampleWorker(
        model, discovery="file", file_kv=file_kv, disable_kv_routing=False, workdir=work / "w"
    )
    worker.start()
    rec = Recorder()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tree = dump_tree(file_kv)
            if any("event_sources" in k for k in tree) and len(tree) >= 6:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        tree = dump_tree(file_kv)
        (out / "file_discovery_records.json").write_text(json.dumps(tree, indent=2) + "\n")
        text = json.dumps(tree)
        ports: dict[int, str] = {}
        for key, val in tree.items():
            for m in re.finditer(r"127\.0\.0\.1:(\d+)", json.dumps(val)):
                topic = re.search(r"topic%2F([^%]+(?:%2D[^%]+)?)", key)
                label = topic.group(1).replace("%2D", "-").replace("%5F", "_") if topic else "rpc"
                if "instances" in key or "event_sources" in key or "mdc" in key:
                    label = "rpc" if "mdc" not in key else "system"
                ports.setdefault(int(m.group(1)), label)
        ports = {p: l for p, l in ports.items() if l != "system"}
        mapping, loop = start_proxies(ports, rec)
        (out / "file_proxy_ports.json").write_text(
            json.dumps({ports[t]: [t, p] for t, p in mapping.items()}, indent=2) + "\n"
        )
        # Point every record at the proxies before the frontend reads them.
        for p in sorted(file_kv.rglob("*")):
            if p.is_file():
                raw = p.read_text()
                new = raw
                for tport, pport in mapping.items():
                    new = new.replace(f"127.0.0.1:{tport}", f"127.0.0.1:{pport}")
                if new != raw:
                    tmp = p.with_name(p.name + ".tmp")
                    tmp.write_text(new)
                    os.replace(tmp, p)
        del text
        fe = StockFrontend(
            discovery="file",
            file_kv=file_kv,
            extra_args=["--router-mode", "kv"],
            workdir=work / "fe",
        )
        fe.start()
        try:
            fe.wait_model(str(model), timeout=30)
            time.sleep(1.0)
            results = []
            for prompt in PROMPTS:
                results.append(chat(fe.base_url, str(model), prompt))
                time.sleep(0.5)
            time.sleep(2.0)
            (out / "file_chat_responses.json").write_text(json.dumps(results, indent=2) + "\n")
        finally:
            fe.stop()
            shutil.copy(fe.log_path, out / "file_frontend.log")
        # A second frontend start: the recovery query happens again.
        fe2 = StockFrontend(
            discovery="file",
            file_kv=file_kv,
            extra_args=["--router-mode", "kv"],
            workdir=work / "fe2",
        )
        rec.add(dir="marker", note="second frontend starts")
        fe2.start()
        try:
            fe2.wait_model(str(model), timeout=30)
            time.sleep(2.0)
        finally:
            fe2.stop()
        query_source(out / "file_query_source.json", file_kv, tree)
        loop.call_soon_threadsafe(loop.stop)
    finally:
        worker.stop()
        shutil.copy(worker.log_path, out / "file_worker.log")
    with (out / "file_tcp_capture.jsonl").open("w") as f:
        for row in rec.rows:
            f.write(json.dumps(row) + "\n")


def query_source(path: Path, file_kv: Path, tree: dict[str, Any]) -> None:
    """Ask the stock worker's ``worker_kv_query_source_*`` endpoint directly
    (the frontend's answer travels on its own response stream, which the
    proxies do not see), recording the raw response-stream bytes too."""
    from dynamo_lite import client as client_mod
    from dynamo_lite.config import RuntimeSettings

    inst = next(v for v in tree.values() if str(v.get("endpoint", "")).startswith("worker_kv_query"))
    raw: list[str] = []
    orig = client_mod._CallHome.data_received

    def spy(self: Any, data: bytes) -> None:
        raw.append(data.hex())
        orig(self, data)

    client_mod._CallHome.data_received = spy  # type: ignore[method-assign]
    results: list[dict[str, Any]] = []

    async def run() -> None:
        settings = RuntimeSettings.from_env({"DYN_FILE_KV": str(file_kv)})
        async with client_mod.Client(
            inst["namespace"], inst["component"], inst["endpoint"],
            discovery_backend="file", settings=settings,
        ) as c:  # fmt: skip
            for body in (
                {"worker_id": inst["instance_id"], "dp_rank": 0, "start_event_id": None,
                 "end_event_id": None, "supports_tree_dump_failed": True, "kind": "recovery"},
                {"worker_id": inst["instance_id"], "dp_rank": 0, "start_event_id": 2,
                 "end_event_id": 4, "supports_tree_dump_failed": True, "kind": "recovery"},
            ):  # fmt: skip
                raw.clear()
                stream = await c.generate(body)
                items: list[Any] = []
                try:
                    async for i in stream:
                        items.append(i)
                except client_mod.ClientError as exc:
                    items.append({"client_error": str(exc)})
                await asyncio.sleep(0.5)
                results.append({"request": body, "items": items, "raw_hex": list(raw)})

    asyncio.run(run())
    client_mod._CallHome.data_received = orig  # type: ignore[method-assign]
    path.write_text(json.dumps(results, indent=2) + "\n")


def capture_nats(out: Path, work: Path, model: Path) -> None:
    import nats

    etcd = EtcdServer(work / "etcd").start()
    natss = NatsServer(work / "nats").start()
    rows: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    t0 = time.monotonic()

    async def sub() -> Any:
        nc = await nats.connect(natss.url)

        async def cb(msg: Any) -> None:
            rows.append(
                {
                    "t": round(time.monotonic() - t0, 6),
                    "subject": msg.subject,
                    "reply": msg.reply,
                    "headers": msg.headers,
                    "hex": msg.data.hex(),
                }
            )

        await nc.subscribe(">", cb=cb)
        await nc.flush()
        return nc

    nc = loop.run_until_complete(sub())
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    env = {"NATS_SERVER": natss.url, "DYN_EVENT_PLANE": "nats"}
    worker = StockSampleWorker(
        model,
        discovery="etcd",
        etcd_endpoint=etcd.endpoint,
        disable_kv_routing=False,
        extra_args=["--event-plane", "nats"],
        env=env,
        workdir=work / "nw",
    )
    worker.start()
    try:
        time.sleep(1.0)
        fe = StockFrontend(
            discovery="etcd",
            etcd_endpoint=etcd.endpoint,
            extra_args=["--router-mode", "kv", "--event-plane", "nats"],
            env=env,
            workdir=work / "nfe",
        )
        fe.start()
        try:
            fe.wait_model(str(model), timeout=30)
            time.sleep(1.0)
            for prompt in PROMPTS:
                chat(fe.base_url, str(model), prompt)
                time.sleep(0.5)
            time.sleep(2.0)
            res = subprocess.run(
                [str(Path(sys.executable).parent / "etcdctl"),
                 "--endpoints", etcd.endpoint, "get", "--prefix", ""],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            (out / "nats_etcd_keys.txt").write_text(res.stdout)
        finally:
            fe.stop()
            shutil.copy(fe.log_path, out / "nats_frontend.log")
    finally:
        worker.stop()
        shutil.copy(worker.log_path, out / "nats_worker.log")
        loop.call_soon_threadsafe(loop.stop)
        time.sleep(0.3)
        natss.stop()
        etcd.stop()
    del nc
    with (out / "nats_capture.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "tests/vectors/kv/raw")
    modes = sys.argv[2:] or ["file", "nats"]
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kvcap-"))
    try:
        model = build_tiny_model(work / "tiny-model")
        if "file" in modes:
            capture_file(out, work, model)
        if "nats" in modes:
            capture_nats(out, work, model)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
