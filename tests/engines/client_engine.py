"""The stock sample engine calling its own endpoint through ``endpoint.client()``,
written against the *stock* SDK: ``/engine/control/ask_self`` with
``{"method": "generate"|"round_robin"|"random"|"direct", "annotated": bool}``
answers what the client saw (instance ids, items, the item type's surface)."""

from __future__ import annotations

from typing import Any

from dynamo.common.backend.run import run
from dynamo.common.backend.sample_engine import SampleLLMEngine

REQUEST = {"token_ids": [1, 2], "stop_conditions": {"max_tokens": 2}, "sampling_options": {},
           "output_options": {}, "eos_token_ids": [0], "annotations": [], "routing": {},
           "model": "m"}  # fmt: skip


def _surface(item: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(item).__name__}
    for name in ("event", "id", "comments", "is_error"):
        attr = getattr(item, name, None)
        out[name] = attr() if callable(attr) else attr
    return out


class ClientEngine(SampleLLMEngine):  # type: ignore[misc]
    async def on_endpoint_ready(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def supported_controls(self) -> set[str]:
        return {"ask_self"}

    async def engine_control(self, control: str, body: dict[str, Any]) -> Any:
        try:
            client = await self.endpoint.client()
            ids = await client.wait_for_instances()
            method, annotated = body.get("method", "generate"), body.get("annotated", True)
            if method == "direct":
                stream = await client.direct(REQUEST, ids[0], annotated=annotated)
            else:
                stream = await getattr(client, method)(REQUEST, annotated=annotated)
            items = [item async for item in stream]
        except Exception as exc:
            return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
        data = [i.data() if hasattr(i, "data") else i for i in items]
        return {
            "own_id": ids == [self.endpoint.connection_id()] == client.instance_ids(),
            "tokens": [(d["token_ids"], d.get("finish_reason")) for d in data],
            "surface": _surface(items[-1]),
            "methods": [
                n
                for n in ("data", "event", "id", "comments", "is_error")
                if callable(getattr(type(items[-1]), n, None))
            ],
        }


if __name__ == "__main__":
    run(ClientEngine)
