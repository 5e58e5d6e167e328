"""``dynamo-lite`` (also ``python -m dynamo_lite``).

Commands:

* ``demo`` — the whole lifecycle on one machine with no services: a tiny
  model, the sample engine on the file backend, a few streamed requests
  through the pure-Python client (one cancelled), then SIGTERM.
* ``sample [flags]`` — run ``examples/sample_engine.py`` (stock sample flags).
* ``run MODULE:CLASS [flags]`` — run any engine class as a worker.
* ``request`` — send one request to a running worker and print its stream.
* ``tiny-model DIR`` — write the demo's tiny model directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

from .tiny_model import TinyDetokenizer, write_tiny_model

_PKG_DIR = Path(__file__).resolve().parent


def sample_engine_path() -> Path:
    """examples/sample_engine.py: packaged in the wheel, or beside the package in a checkout."""
    for candidate in (
        _PKG_DIR / "examples" / "sample_engine.py",
        _PKG_DIR.parent / "examples" / "sample_engine.py",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("examples/sample_engine.py is not installed")


def _load_file_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _cmd_sample(argv: list[str]) -> int:
    module = _load_file_module(sample_engine_path(), "dynamo_lite_sample_engine")
    from .run import run

    run(module.SampleEngine, argv)
    return 0


def _cmd_run(target: str, argv: list[str]) -> int:
    module_name, _, cls_name = target.partition(":")
    if module_name.endswith(".py") or "/" in module_name:
        module = _load_file_module(Path(module_name), "dynamo_lite_user_engine")
    else:
        module = importlib.import_module(module_name)
    engine_cls = getattr(module, cls_name)
    from .run import run

    run(engine_cls, argv)
    return 0


# --- request -------------------------------------------------------------------


async def _request(args: argparse.Namespace) -> int:
    from .client import Client

    request: dict[str, Any] = {
        "token_ids": [int(t) for t in args.tokens.split(",") if t],
        "stop_conditions": {"max_tokens": args.max_tokens},
        "sampling_options": {},
        "output_options": {},
    }
    async with Client(
        args.namespace, args.component, args.endpoint, discovery_backend=args.discovery_backend
    ) as client:
        await client.wait_for_instances(args.timeout)
        stream = await client.generate(request)
        async for out in stream:
            print(json.dumps(out))
    return 0


# --- demo ----------------------------------------------------------------------


class _Printer:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def say(self, who: str, text: str) -> None:
        with self.lock:
            print(f"{time.monotonic() - self.t0:7.3f}s  {who:<7} {text}", flush=True)


def _pump_worker_log(proc: subprocess.Popen[str], printer: _Printer, lines: list[str]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.rstrip()
        lines.append(line)
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            printer.say("worker", line)
            continue
        # The worker logs JSON lines with the stock keys (time, level, target, message).
        level = str(event.get("level", "")).lower()
        message = event.get("message", event.get("event", ""))
        if "from_state" in event:
            printer.say(
                "worker",
                f"lifecycle {event['from_state']} → {event['to_state']}"
                f"  ({event['reason']}, +{event['elapsed']:.3f}s)",
            )
        elif level in ("info", "warn", "warning", "error") or (
            level == "debug" and event.get("target") in ("dynamo_lite.endpoint", "__main__")
        ):
            printer.say("worker", f"[{level}] {message}")


async def _demo_requests(model_dir: Path, kv: Path, printer: _Printer, served: str) -> None:
    from .client import Client
    from .discovery import FileStore

    detok = TinyDetokenizer(model_dir / "tokenizer.json")
    prompt = detok.encode_words("hello world")
    # Everything in the demo stays on loopback, the call-home server too.
    async with Client(
        "dynamo", "sample", "generate", store=FileStore(kv), response_host="127.0.0.1"
    ) as client:
        found = await client.wait_for_instances(30)
        inst = found[0]
        printer.say(
            "client",
            f"discovered instance {inst.instance_id:x} at "
            f"{inst.host}:{inst.port} (codec {inst.codec}), model {served!r}",
        )
        for n, max_tokens in enumerate((4, 8), start=1):
            printer.say(
                "client",
                f"request {n}: prompt {prompt} ({detok.decode(prompt)!r}), max_tokens={max_tokens}",
            )
            stream = await client.generate(
                {
                    "model": served,
                    "token_ids": prompt,
                    "stop_conditions": {"max_tokens": max_tokens},
                }
            )
            ids: list[int] = []
            async for out in stream:
                ids += out["token_ids"]
                printer.say(
                    "client",
                    f"  item token_ids={out['token_ids']}"
                    + (
                        f" finish_reason={out['finish_reason']} usage={out.get('completion_usage')}"
                        if out.get("finish_reason")
                        else ""
                    ),
                )
            printer.say(
                "client", f"request {n} done: {len(ids)} tokens, text {detok.decode(ids)!r}"
            )
        printer.say("client", "request 3: max_tokens=1000, cancelled after 3 items")
        stream = await client.generate(
            {"model": served, "token_ids": prompt, "stop_conditions": {"max_tokens": 1000}}
        )
        seen = 0
        async for _out in stream:
            seen += 1
            if seen == 3:
                await stream.cancel()
                break
        printer.say("client", "sent 'kill': the worker stops the engine and calls abort()")
        await asyncio.sleep(0.3)


def _cmd_demo(args: argparse.Namespace) -> int:
    printer = _Printer()
    with tempfile.TemporaryDirectory(prefix="dynamo-lite-demo-") as tmp:
        root = Path(tmp)
        model_dir = write_tiny_model(root / "tiny-model")
        kv = root / "kv"
        printer.say("demo", f"tiny model written to {model_dir}")
        printer.say("demo", f"file discovery store at {kv} (no etcd, no NATS, no frontend)")
        env = dict(os.environ)
        env.update(
            {
                "DYN_FILE_KV": str(kv),
                "DYN_TCP_RPC_HOST": "127.0.0.1",
                "DYN_LOGGING_JSONL": "1",
                "DYN_LOG": "info,dynamo_lite.endpoint=debug,__main__=debug",
                "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": str(args.grace),
                "PYTHONUNBUFFERED": "1",
            }
        )
        cmd = [
            sys.executable,
            str(sample_engine_path()),
            "--model-name",
            str(model_dir),
            "--namespace",
            "dynamo",
            "--discovery-backend",
            "file",
            "--delay",
            str(args.delay),
        ]
        printer.say("demo", "starting: " + " ".join(Path(c).name if "/" in c else c for c in cmd))
        proc = subprocess.Popen(
            cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=_pump_worker_log, args=(proc, printer, lines), daemon=True)
        reader.start()
        code: int | None = None
        try:
            requests = _demo_requests(model_dir, kv, printer, str(model_dir))
            asyncio.run(asyncio.wait_for(requests, 60))
            for path in sorted(kv.glob("v1/*/*")):
                printer.say("demo", f"record {path.parent.name}/{unquote(path.name)}")
            printer.say("demo", "sending SIGTERM to the worker")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=args.grace + 35)
            reader.join(timeout=5)
            left = sorted(p.name for p in kv.glob("v1/*/*"))
            printer.say(
                "demo", f"worker exited with status {code}; records left in the store: {len(left)}"
            )
        except Exception as exc:
            printer.say("demo", f"FAILED: {type(exc).__name__}: {exc}")
            for line in lines[-20:]:
                print("    " + line, file=sys.stderr)
            return 1
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return 0 if code == 0 else 1


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="dynamo-lite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the whole lifecycle locally, no services needed")
    demo.add_argument("--grace", type=float, default=1.0, help="grace period in seconds")
    demo.add_argument("--delay", type=float, default=0.02, help="engine delay per token")
    sub.add_parser("sample", help="run the sample engine (stock sample flags)", add_help=False)
    runp = sub.add_parser("run", help="run MODULE:CLASS as a worker", add_help=False)
    runp.add_argument("target")
    req = sub.add_parser("request", help="send one request and print the stream")
    req.add_argument("--namespace", default="dynamo")
    req.add_argument("--component", default="sample")
    req.add_argument("--endpoint", default="generate")
    req.add_argument("--discovery-backend", default="etcd")
    req.add_argument("--tokens", default="1,2,3")
    req.add_argument("--max-tokens", type=int, default=8)
    req.add_argument("--timeout", type=float, default=30)
    tiny = sub.add_parser("tiny-model", help="write the tiny demo model directory")
    tiny.add_argument("directory")

    if argv and argv[0] == "sample":
        sys.exit(_cmd_sample(argv[1:]))
    if argv and argv[0] == "run" and len(argv) > 1:
        sys.exit(_cmd_run(argv[1], argv[2:]))
    args = parser.parse_args(argv)
    if args.command == "demo":
        sys.exit(_cmd_demo(args))
    if args.command == "request":
        sys.exit(asyncio.run(_request(args)))
    if args.command == "tiny-model":
        print(write_tiny_model(args.directory))
        sys.exit(0)
    parser.print_help()
    sys.exit(2)
