"""``dynamo.common.backend.sample_diffusion_main``: run the sample diffusion engine."""

from __future__ import annotations

import importlib

from ..run import run


def main() -> None:
    engine = importlib.import_module("dynamo.common.backend.sample_diffusion_engine")
    run(engine.SampleDiffusionEngine)


if __name__ == "__main__":
    main()
