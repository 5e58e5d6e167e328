"""The stock sample engine with the model-card fields set from the environment,
written against the *stock* SDK, so both runtimes' cards can be compared.

``CARD_WORKER`` is a JSON object of ``WorkerConfig`` fields to override
(``custom_jinja_template``, ``structural_tag``, ``default_thinking_mode`` …);
``CARD_LLM`` one of ``LlmRegistration`` fields (``max_gpu_lora_count`` …).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from dynamo.common.backend.run import run
from dynamo.common.backend.sample_engine import SampleLLMEngine


class CardEngine(SampleLLMEngine):  # type: ignore[misc]
    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> Any:
        engine, config = await super().from_args(argv)
        for key, value in json.loads(os.environ.get("CARD_WORKER") or "{}").items():
            setattr(config, key, value)
        return engine, config

    async def start(self, worker_id: int) -> Any:
        config = await super().start(worker_id)
        overrides = json.loads(os.environ.get("CARD_LLM") or "{}")
        config.llm = dataclasses.replace(config.llm, **overrides)
        return config


if __name__ == "__main__":
    run(CardEngine)
