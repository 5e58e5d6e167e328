"""The engine admin routes (``dynamo_lite/engine_routes.py``), in process and over real HTTP.

The answers were recorded from the stock 1.6.1 worker running the same engine;
``tests/interop/test_engine_routes_interop.py`` compares the two runtimes live.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from dynamo_lite import EngineConfig, LLMEngine, WorkerConfig
from dynamo_lite.discovery import EndpointId
from dynamo_lite.discovery import keys as dkeys
from dynamo_lite.discovery.memory import MemoryStore
from dynamo_lite.engine_routes import EngineRoutes, InstanceSwitch, ServingEndpoint, before_routes
from dynamo_lite.registration import Registration
from dynamo_lite.system_server import HealthStatus, SystemServer

pytestmark = pytest.mark.anyio

ENDPOINT = EndpointId("dynamo", "sample", "generate")
NOT_OBJECT = {"status": "error", "message": "engine control request body must be a JSON object"}
SHUTTING_DOWN = {
    "status": "error",
    "message": "engine administrative routes are unavailable while the worker is shutting down",
}


class ControlEngine(LLMEngine):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> Any:
        raise NotImplementedError

    async def start(self, worker_id: int) -> EngineConfig:
        return EngineConfig(model="m")

    async def generate(self, request: Any, context: Any) -> Any:
        yield {"token_ids": [], "index": 0, "finish_reason": "stop"}

    async def cleanup(self) -> None:
        pass

    def supported_controls(self) -> set[str]:
        return {"pause_generation", "resume_generation", "sleep", "wake_up", "echo"}

    async def engine_control(self, control: str, body: Any) -> Any:
        self.calls.append(("control", control, body))
        if "exc" in body:
            raise {"ValueError": ValueError, "TimeoutError": TimeoutError}.get(
                body["exc"], RuntimeError
            )("boom")
        if "ret" in body:
            return body["ret"]
        return {"status": "ok", "control": control, "body": body}

    def supported_updates(self) -> set[str]:
        return {"lora"}

    async def engine_update(self, update: str, body: Any) -> Any:
        self.calls.append(("update", update, body))
        return {"status": "ok", "update": update}


@dataclass
class FakeWorker:
    """The slice of :class:`dynamo_lite.worker.Worker` the routes read."""

    store: MemoryStore
    health: HealthStatus = field(default_factory=lambda: HealthStatus({}))
    config: WorkerConfig = field(default_factory=lambda: WorkerConfig(namespace="dynamo"))
    endpoint_id: EndpointId = ENDPOINT
    instance_id: int | None = 7
    registration: Registration | None = None

    @property
    def _instance_key(self) -> str:
        return ENDPOINT.instance_key(7)

    @property
    def _mdc_key(self) -> str:
        return ENDPOINT.mdc_key(7)


@pytest.fixture
async def worker(request: pytest.FixtureRequest) -> FakeWorker:
    store = MemoryStore(f"routes-{request.node.name}", instance_id=7)
    w = FakeWorker(store)
    w.registration = Registration(store, ENDPOINT, 7)
    await w.registration.publish_card({"runtime_config": {"a": 1}})
    await w.registration.publish_instance({"tcp": "127.0.0.1:1/x"}, "msgpack")
    w.health.set_endpoint("generate", True)
    w.health.serving = True
    return w


async def call(routes: EngineRoutes, path: str, body: bytes = b"{}") -> tuple[int, Any]:
    r = await routes.handle("POST", path, body)
    assert r.content_type == "text/plain; charset=utf-8"
    return r.status, json.loads(r.body)


async def registered(w: FakeWorker) -> bool:
    return w._instance_key in await w.store.list(w._instance_key)


async def test_dispatch_and_refusals(worker: FakeWorker) -> None:
    engine = ControlEngine()
    routes = EngineRoutes(worker, engine)
    assert await call(routes, "/engine/control/echo", b"") == (
        200,
        {"status": "ok", "control": "echo", "body": {}},
    )
    assert await call(routes, "/engine/update/lora", b'{"x":1}') == (
        200,
        {"status": "ok", "update": "lora"},
    )
    for path in ("/engine/control/nope", "/engine/control/", "/engine/control/echo/x",
                 "/engine/update/echo", "/engine/control/lora"):  # fmt: skip
        assert await call(routes, path) == (
            404,
            {"error": "Route not found", "message": f"Route {path} not found"},
        )
    status, body = await call(routes, "/engine/control/echo", b"{}x")
    assert status == 400 and body["error"] == "Invalid JSON"
    assert body["message"] == "trailing characters at line 1 column 3"  # stock's wording
    for raw in (b"[1]", b"null", b"5", b'"s"'):
        assert await call(routes, "/engine/control/echo", raw) == (200, NOT_OBJECT)
    status, body = await call(routes, "/engine/update/lora", b"[]")
    assert body["message"] == "engine update request body must be a JSON object"
    assert await call(routes, "/engine/control/echo", b'{"ret":[1,"a"]}') == (200, [1, "a"])
    assert await call(routes, "/engine/control/echo", b'{"ret":null}') == (200, None)
    assert len(engine.calls) == 4  # refusals never reach the engine


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        ("RuntimeError", "Internal: RuntimeError: boom"),
        ("ValueError", "InvalidRequest: ValueError: boom"),
        ("TimeoutError", "DeadlineExceeded: TimeoutError: boom"),
    ],
)
async def test_engine_exceptions_are_handler_errors(
    worker: FakeWorker, exc: str, message: str
) -> None:
    routes = EngineRoutes(worker, ControlEngine())
    body = json.dumps({"exc": exc}).encode()
    assert await call(routes, "/engine/control/echo", body) == (
        500,
        {"error": "Handler error", "message": message},
    )


async def test_starting_and_shutting_down(worker: FakeWorker) -> None:
    engine = ControlEngine()
    routes = EngineRoutes(worker, engine)
    worker.health.serving = False
    _, body = await call(routes, "/engine/control/echo")
    assert body["message"].endswith("unavailable while the worker is starting")
    worker.health.serving = True
    worker.health.shutting_down = True
    assert await call(routes, "/engine/control/pause_generation") == (200, SHUTTING_DOWN)
    assert await call(routes, "/engine/control/echo", b"[]") == (200, NOT_OBJECT)
    assert engine.calls == [] and await registered(worker)


async def test_out_of_service_controls(worker: FakeWorker) -> None:
    engine = ControlEngine()
    routes = EngineRoutes(worker, engine)
    assert (await call(routes, "/engine/control/pause_generation"))[0] == 200
    assert not await registered(worker) and not worker.health.ready
    # Already out of service: refused before the engine is called.
    _, body = await call(routes, "/engine/control/sleep")
    assert body == {
        "status": "error",
        "message": "failed to unregister endpoint before /engine/control/sleep: Unable to "
        "unregister endpoint instance from discovery. Check discovery service status",
    }
    assert [c[1] for c in engine.calls] == ["pause_generation"]
    # An error answer, a raise, or "still sleeping" keep it out; anything else brings it back.
    for stays_out in (b'{"ret":{"status":"error"}}', b'{"exc":"x"}',
                      b'{"ret":{"status":"ok","is_sleeping":true}}'):  # fmt: skip
        await call(routes, "/engine/control/wake_up", stays_out)
        assert not await registered(worker) and not worker.health.ready
    await call(routes, "/engine/control/resume_generation", b'{"ret":{"status":"weird"}}')
    assert await registered(worker) and worker.health.ready
    # A pause whose engine call fails stays out of service, as stock.
    await call(routes, "/engine/control/pause_generation", b'{"ret":{"status":"error"}}')
    assert not await registered(worker)
    await call(routes, "/engine/control/resume_generation", b'{"ret":[1]}')
    assert await registered(worker)


async def test_model_taints(worker: FakeWorker) -> None:
    routes = EngineRoutes(worker, ControlEngine())

    async def card_taints() -> Any:
        raw = (await worker.store.list(worker._mdc_key))[worker._mdc_key]
        return json.loads(raw)["card_json"]["runtime_config"].get("taints")

    assert await call(routes, "/engine/update/model_taints", b'{"taints":["b","a","b"]}') == (
        200,
        {"status": "ok", "taints": ["a", "b"]},
    )
    assert await card_taints() == ["a", "b"]
    for raw, message in [
        (b"{}", "'taints' must be a JSON array of strings"),
        (b'{"taints":[1]}', "'taints' must be a JSON array of strings"),
        (b"[1]", "request body must be a JSON object"),
        (b'{"taints":["dynamo.topology/x"]}',
         "taint 'dynamo.topology/x' uses reserved prefix 'dynamo.topology/'"),
    ]:  # fmt: skip
        assert await call(routes, "/engine/update/model_taints", raw) == (
            500,
            {"error": "Handler error", "message": message},
        )
    await call(routes, "/engine/update/model_taints", b'{"taints":[]}')
    assert await card_taints() is None
    record = json.loads((await worker.store.list(ENDPOINT.mdc_key(7)))[ENDPOINT.mdc_key(7)])
    assert worker.registration is not None
    card = worker.registration.card or {}
    assert record == json.loads(dkeys.dumps(dkeys.mdc_record(ENDPOINT, 7, card)))


async def test_an_engine_update_named_model_taints_is_refused(worker: FakeWorker) -> None:
    class Clash(ControlEngine):
        def supported_updates(self) -> set[str]:
            return {"model_taints"}

    with pytest.raises(ValueError, match="reserved"):
        EngineRoutes(worker, Clash())


async def test_system_server_hands_the_body_to_the_routes(worker: FakeWorker) -> None:
    routes = EngineRoutes(worker, ControlEngine())
    server = SystemServer("127.0.0.1", 0, worker.health, env={})
    server.route_body("/engine/", routes.handle)
    port = await server.start()
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for method in ("GET", "POST", "PUT", "DELETE"):
                r = await client.request(method, "/engine/control/echo?x=1", content=b'{"k":"v"}')
                assert r.status_code == 200
                assert r.json() == {"status": "ok", "control": "echo", "body": {"k": "v"}}
            r = await client.post("/engine/control/echo", content=b"x" * (3 * 1024 * 1024))
            assert r.status_code == 413
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/health")).status_code == 200
        tg.cancel_scope.cancel()


async def test_before_the_engine_routes_exist() -> None:
    r = await before_routes("POST", "/engine/control/echo", b"{}")
    assert (r.status, json.loads(r.body)["error"]) == (404, "Route not found")
    r = await before_routes("GET", "/engine/update/model_taints", b"")
    assert r.status == 404
    r = await before_routes("POST", "/engine/control/echo", b"nope")
    assert (r.status, json.loads(r.body)["error"]) == (400, "Invalid JSON")


async def test_the_endpoint_object_takes_the_instance_out_and_back(worker: FakeWorker) -> None:
    switch = InstanceSwitch(worker)
    endpoint = ServingEndpoint("dynamo", "sample", "generate", 7, switch)
    assert endpoint.connection_id() == 7 and endpoint.path == "dynamo.sample.generate"
    await endpoint.unregister_endpoint_instance()
    assert not await registered(worker) and worker.health.ready  # readiness is the routes' job
    with pytest.raises(Exception, match="Unable to unregister endpoint instance"):
        await endpoint.unregister_endpoint_instance()
    await endpoint.register_endpoint_instance()
    await endpoint.register_endpoint_instance()  # idempotent
    assert await registered(worker)
    # The routes share the switch: a pause after a manual unregister fails, untouched engine.
    engine = ControlEngine()
    routes = EngineRoutes(worker, engine, switch)
    await endpoint.unregister_endpoint_instance()
    _, body = await call(routes, "/engine/control/pause_generation")
    assert body["status"] == "error" and engine.calls == []
