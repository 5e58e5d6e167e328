"""The sample diffusion engine: a raw-media (``/v1/images``) engine with no model.

Behaves like Dynamo's stock ``SampleDiffusionEngine``: ``generate()`` takes the
OpenAI image request and, after one simulated denoising step of ``--delay``
seconds (skipped for canary probes), yields one ``{"created", "data"}``
response with ``n`` (1 to 10) copies of a one-pixel PNG, as ``b64_json`` or as a
self-contained ``data:`` URL. Registered as ``ModelInput.Text`` with no KV
routing: the frontend forwards the request verbatim.

    python examples/sample_diffusion_engine.py --model-name sample-diffusion-model \\
        --discovery-backend file
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import struct
import time
import zlib
from collections.abc import AsyncGenerator
from typing import Any

from dynamo_lite import Context, DiffusionEngine, EngineConfig, ModelInput, WorkerConfig, run
from dynamo_lite.health_check import build_raw_health_check_payload, is_probe


def _png_1x1() -> bytes:
    """A valid one-pixel greyscale PNG, built rather than stored."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")  # filter byte 0, one mid-grey pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG_B64 = base64.b64encode(_png_1x1()).decode("ascii")
MAX_IMAGES = 10


class SampleDiffusionEngine(DiffusionEngine):
    def __init__(self, model_name: str = "sample-diffusion-model", delay: float = 0.05) -> None:
        self.model_name = model_name
        self.delay = delay

    @classmethod
    async def from_args(
        cls, argv: list[str] | None = None
    ) -> tuple[SampleDiffusionEngine, WorkerConfig]:
        p = argparse.ArgumentParser(description="dynamo_lite sample diffusion engine")
        p.add_argument("--model-name", default="sample-diffusion-model")
        p.add_argument("--namespace", default="dynamo")
        p.add_argument("--component", default="sample")
        p.add_argument("--endpoint", default="generate")
        p.add_argument("--delay", type=float, default=0.05)
        p.add_argument("--endpoint-types", default="images")
        p.add_argument("--discovery-backend", default="etcd")
        p.add_argument("--request-plane", default="tcp")
        p.add_argument(
            "--response-plane",
            choices=["tcp", "quic"],
            default=os.environ.get("DYN_RESPONSE_PLANE", "tcp"),
        )
        p.add_argument("--event-plane", default=None)
        args = p.parse_args(argv)
        engine = cls(model_name=args.model_name, delay=args.delay)
        config = WorkerConfig(
            namespace=args.namespace,
            component=args.component,
            endpoint=args.endpoint,
            model_name=args.model_name,
            served_model_name=args.model_name,
            model_input=ModelInput.Text,  # no tokenizer stage
            endpoint_types=args.endpoint_types,
            discovery_backend=args.discovery_backend,
            request_plane=args.request_plane,
            response_plane=args.response_plane,
            event_plane=args.event_plane,
            enable_kv_routing=False,  # no KV cache to route on
        )
        return engine, config

    async def start(self, worker_id: int) -> EngineConfig:
        del worker_id
        return EngineConfig(model=self.model_name, served_model_name=self.model_name)

    async def health_check_payload(self) -> dict[str, Any]:
        return build_raw_health_check_payload(
            {"prompt": "ping", "n": 1, "response_format": "b64_json"}
        )

    async def generate(
        self, request: dict[str, Any], context: Context
    ) -> AsyncGenerator[dict[str, Any], None]:
        del context  # one short step: nothing to cancel
        try:
            n = int(request.get("n", 1))
        except (TypeError, ValueError) as exc:
            raise ValueError("`n` must be an integer") from exc
        if not 1 <= n <= MAX_IMAGES:
            raise ValueError(f"`n` must be between 1 and {MAX_IMAGES}")
        as_b64 = (request.get("response_format") or "url") == "b64_json"
        if not is_probe(request):
            await asyncio.sleep(self.delay)
        image = {"b64_json": PNG_B64} if as_b64 else {"url": f"data:image/png;base64,{PNG_B64}"}
        yield {"created": int(time.time()), "data": [dict(image) for _ in range(n)]}

    async def cleanup(self) -> None:
        pass


def main() -> None:
    run(SampleDiffusionEngine)


if __name__ == "__main__":
    main()
