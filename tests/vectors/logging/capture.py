"""Capture the stock 1.6.1 worker's span-event log records (see README.md in this folder).

Run from the repository root with the project's venv:

    DYN_LITE_STOCK_VENV=/work/main/.stock-venv .venv/bin/python tests/vectors/logging/capture.py OUT

The stock sample worker runs with ``DYN_LOGGING_JSONL=1 DYN_LOGGING_SPAN_EVENTS=1
DYN_LOG=info`` on the file backend. A first stock frontend (readable logs, so it
sends no ``traceparent``) serves one chat request; a second one with JSONL logging
(which sends ``traceparent``) serves one with an ``x-request-id`` header and one
streamed request that the client drops after a few chunks.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from dynamo_lite.tiny_model import write_tiny_model  # noqa: E402
from tests.support.stock import StockFrontend, StockSampleWorker  # noqa: E402

WORKER_ENV = {"DYN_LOGGING_JSONL": "1", "DYN_LOGGING_SPAN_EVENTS": "1", "DYN_LOG": "info"}


def chat(fe: StockFrontend, model: str, **extra: object) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 3}
    headers = {"x-request-id": "span-events-capture-1"}
    r = httpx.post(fe.url("/v1/chat/completions"), json=body, headers=headers, timeout=30)
    r.raise_for_status()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="span-capture-"))
    model = str(write_tiny_model(work / "tiny-model"))
    kv = work / "kv"
    worker = StockSampleWorker(
        model, discovery="file", file_kv=kv, env=WORKER_ENV, workdir=work / "w"
    )
    try:
        plain = StockFrontend(discovery="file", file_kv=kv, workdir=work / "fe1")
        with plain:
            worker.start(frontend=plain)
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
            }
            httpx.post(plain.url("/v1/chat/completions"), json=body, timeout=30).raise_for_status()
            time.sleep(0.5)
        traced = StockFrontend(
            discovery="file", file_kv=kv, workdir=work / "fe2", env={"DYN_LOGGING_JSONL": "1"}
        )
        with traced:
            traced.wait_model(model)
            chat(traced, model)
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "long"}],
                "max_tokens": 2000,
                "stream": True,
            }
            with httpx.stream(
                "POST", traced.url("/v1/chat/completions"), json=body, timeout=30
            ) as s:
                for i, _ in enumerate(s.iter_lines()):
                    if i > 3:
                        break
            time.sleep(2.0)
    finally:
        worker.stop()
        log = worker.log_text()
        (out / "stock_worker.log").write_text(log)
        spans = [line for line in log.splitlines() if '"target":"request_span"' in line]
        (out / "stock_span_events.jsonl").write_text("\n".join(spans) + "\n")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
