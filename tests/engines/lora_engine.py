"""The stock sample engine publishing LoRA model cards on request, written
against the *stock* SDK: ``/engine/control/load_lora`` with ``{"name", "path"}``
calls ``dynamo.llm.register_model`` on the endpoint ``on_endpoint_ready``
gave it, ``unload_lora`` calls ``unregister_model``; a metric registered on
``endpoint.metrics`` appears on ``/metrics``."""

from __future__ import annotations

from typing import Any

from dynamo._core import WorkerType
from dynamo.common.backend.run import run
from dynamo.common.backend.sample_engine import SampleLLMEngine
from dynamo.llm import ModelInput, ModelType, register_model, unregister_model


class LoraEngine(SampleLLMEngine):  # type: ignore[misc]
    async def on_endpoint_ready(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        # Engine metrics through the endpoint's RuntimeMetrics helper.
        endpoint.metrics.register_prometheus_expfmt_callback(
            lambda: "# TYPE lora_engine_adapters gauge\nlora_engine_adapters 1\n"
        )

    def supported_controls(self) -> set[str]:
        return {"load_lora", "unload_lora"}

    async def engine_control(self, control: str, body: dict[str, Any]) -> Any:
        try:
            if control == "load_lora":
                await register_model(
                    ModelInput.Tokens,
                    ModelType.Chat | ModelType.Completions,
                    self.endpoint,
                    body["path"],
                    lora_name=body["name"],
                    base_model_path=body["path"],
                    worker_type=WorkerType.Aggregated,
                )
            else:
                await unregister_model(self.endpoint, lora_name=body["name"])
        except Exception as exc:
            return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
        return {"status": "ok"}


if __name__ == "__main__":
    run(LoraEngine)
