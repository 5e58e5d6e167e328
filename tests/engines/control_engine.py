"""The stock sample engine with engine controls and updates, written against the *stock* SDK.

Runs on the stock worker (stock venv) and, unmodified, on dynamo_lite through
``python -m dynamo_lite.compat``, so the two runtimes' ``/engine/*`` answers
can be compared. The request body steers the answer: ``{"ret": X}`` returns
X, ``{"exc": "TypeError"}`` raises that builtin, ``{"fail": true}`` answers
with an error; ``wake_up`` reports ``is_sleeping`` from ``stay_asleep``. Every
call is appended to ``$CTL_EVENTS`` (JSON lines). With ``$CTL_START_GATE``,
``start()`` waits until that file exists. ``ep_off`` / ``ep_on`` call the
endpoint object ``on_endpoint_ready`` received.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
from typing import Any

from dynamo.common.backend.run import run
from dynamo.common.backend.sample_engine import SampleLLMEngine

CONTROLS = {"pause_generation", "resume_generation", "sleep", "wake_up", "echo", "ep_off", "ep_on"}
UPDATES = {"lora"}


def record(**fields: Any) -> None:
    path = os.environ.get("CTL_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(fields) + "\n")


class ControlEngine(SampleLLMEngine):  # type: ignore[misc]
    async def start(self, worker_id: int) -> Any:
        gate = os.environ.get("CTL_START_GATE")
        while gate and not os.path.exists(gate):
            await asyncio.sleep(0.02)
        return await super().start(worker_id)

    async def on_endpoint_ready(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        record(kind="endpoint", id_is_int=isinstance(endpoint.connection_id(), int))

    def supported_controls(self) -> set[str]:
        return set(CONTROLS)

    async def engine_control(self, control: str, body: dict[str, Any]) -> Any:
        record(kind="control", name=control, body=body)
        if control in ("ep_off", "ep_on"):
            try:
                if control == "ep_off":
                    await self.endpoint.unregister_endpoint_instance()
                else:
                    await self.endpoint.register_endpoint_instance()
            except Exception as exc:
                return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
        return self._answer(control, body)

    def supported_updates(self) -> set[str]:
        return set(UPDATES)

    async def engine_update(self, update: str, body: dict[str, Any]) -> Any:
        record(kind="update", name=update, body=body)
        return self._answer(update, body)

    @staticmethod
    def _answer(name: str, body: dict[str, Any]) -> Any:
        if "ret" in body:
            return body["ret"]
        if "exc" in body:
            raise getattr(builtins, body["exc"])(f"boom {name}")
        if body.get("fail"):
            return {"status": "error", "message": f"{name} failed on purpose"}
        if name == "wake_up":
            return {"status": "ok", "is_sleeping": bool(body.get("stay_asleep"))}
        return {"status": "ok", "name": name, "body": body}


if __name__ == "__main__":
    run(ControlEngine)
