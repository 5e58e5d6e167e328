"""``dynamo.common.backend.sample_main``: run the sample engine."""

from __future__ import annotations

import importlib

from ..run import run


def main() -> None:
    engine = importlib.import_module("dynamo.common.backend.sample_engine")
    run(engine.SampleLLMEngine)


if __name__ == "__main__":
    main()
